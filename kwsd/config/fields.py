"""The one walk over the settings models that everything else in kwsd.config uses.

Making file paths relative to config.toml, masking secrets, following an error location
or a `--set` key, checking `KWSD_*` names, listing every key for the docs: each of them
asks which fields a model has and which of them open a table of their own. The answer
lives here once, so a new kind of field (say, a second secret) is taught in one place.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

Key = str | int  # a table key, or the index of an entry in an array of tables


@dataclass(frozen=True, slots=True)
class SettingField:
    """One field of a settings model, where it sits, and what it holds."""

    path: tuple[str, ...]
    info: FieldInfo
    section: type[BaseModel] | None  # `X` or `X | None`: a table of its own
    item_section: type[BaseModel] | None  # `list[X]`: an array of tables

    @property
    def name(self) -> str:
        return self.path[-1]

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def description(self) -> str | None:
        return self.info.description

    @property
    def is_path(self) -> bool:
        return _mentions(self.info.annotation, Path)

    @property
    def is_secret(self) -> bool:
        return _mentions(self.info.annotation, SecretStr)

    @property
    def holds_text(self) -> bool:
        """Takes a plain string as such (str, Path, SecretStr, or a union with one)."""
        return _holds_text(self.info.annotation)


@dataclass(frozen=True, slots=True)
class Trail:
    """How far a key path reaches into the settings: see `follow`."""

    keys: tuple[Key, ...]  # the leading keys that name settings (entry indexes included)
    field: SettingField | None  # the setting the last of those keys names
    model: type[BaseModel] | None  # where a further key would be looked up; None below a leaf


def fields_of(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[SettingField]:
    """The direct fields of `model`, with `prefix` as the path of the table it describes."""
    for name, info in model.model_fields.items():
        yield _setting_field(prefix, name, info)


def walk(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[SettingField]:
    """Every field below `model`, depth first, tables included (not the entries of arrays)."""
    for field in fields_of(model, prefix):
        yield field
        if field.section is not None:
            yield from walk(field.section, field.path)


def follow(model: type[BaseModel], keys: Iterable[Key]) -> Trail:
    """Follow `keys` (e.g. an error location) from `model` as far as they name settings.

    An index steps into an entry of an array of tables (`keywords.entries[0]`); the first
    string that names no field ends the trail, so `trail.keys` is the part that exists.
    """
    kept: list[Key] = []
    field: SettingField | None = None
    current: type[BaseModel] | None = model
    for key in keys:
        if isinstance(key, int):
            kept.append(key)
            current = field.item_section if field is not None else None
            continue
        if current is None or key not in current.model_fields:
            break
        prefix = field.path if field is not None else ()
        field = _setting_field(prefix, key, current.model_fields[key])
        kept.append(key)
        current = field.section
    return Trail(tuple(kept), field, current)


def table_at(data: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any] | None:
    """The nested table of plain data (parsed TOML, a dump) at `keys`, if there is one."""
    node: Any = data
    for key in keys:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, dict) else None


def _setting_field(prefix: tuple[str, ...], name: str, info: FieldInfo) -> SettingField:
    annotation = info.annotation
    item = get_args(annotation)[0] if get_origin(annotation) is list else None
    return SettingField(
        path=(*prefix, name),
        info=info,
        section=_model_in(annotation),
        item_section=_model_in(item) if item is not None else None,
    )


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class in an annotation such as `X` or `X | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        for arg in get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _mentions(annotation: Any, kind: type) -> bool:
    if annotation is kind:
        return True
    return any(_mentions(arg, kind) for arg in get_args(annotation))


def _holds_text(annotation: Any) -> bool:
    if annotation in (str, Path, SecretStr):
        return True
    if get_origin(annotation) in (Union, types.UnionType):
        return any(_holds_text(arg) for arg in get_args(annotation))
    if get_origin(annotation) is Annotated:
        return _holds_text(get_args(annotation)[0])
    return False
