"""Package names that load their module on first use.

`kwsd`, `kwsd.mqtt` and `kwsd.audio` re-export names from their submodules for
convenience; importing all of them eagerly would make every command, and `import kwsd`,
pay for numpy, ONNX Runtime, the MQTT client and the audio libraries it may never use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module

TYPE_CHECKING = False  # `typing` costs more than this module; type checkers read True
if TYPE_CHECKING:
    from typing import Any


def lazy_exports(
    package: str, names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, whose `names` map to their modules."""
    namespace = import_module(package).__dict__

    def getattr_(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        namespace[name] = value  # later lookups skip this function
        return value

    def dir_() -> list[str]:
        return sorted({*namespace, *names})

    return getattr_, dir_
