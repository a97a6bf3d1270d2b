"""The one walk over the settings models that everything else in kwsd.config uses.

Making file paths relative to config.toml, masking secrets, following an error location
or a `--set` key, checking `KWSD_*` names, listing every key for the docs: each of them
asks which fields a model has and which of them open a table of their own. The answer
lives here once, so a new kind of field (say, a second secret) is taught in one place.

A table is a pydantic settings model, or a plain dataclass: `[[keywords.entries]]` are
`KeywordSpec`s, which check themselves so that the library need not import pydantic.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

from pydantic import BaseModel, SecretStr

Key = str | int  # a table key, or the index of an entry in an array of tables
Table = type  # a pydantic model or a dataclass: what a TOML table is validated as


@dataclass(frozen=True, slots=True)
class SettingField:
    """One field of a settings model, where it sits, and what it holds."""

    path: tuple[str, ...]
    annotation: Any
    description: str | None
    section: Table | None  # `X` or `X | None`: a table of its own
    item_section: Table | None  # `list[X]`: an array of tables

    @property
    def name(self) -> str:
        return self.path[-1]

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def is_path(self) -> bool:
        return _mentions(self.annotation, Path)

    @property
    def is_secret(self) -> bool:
        return _mentions(self.annotation, SecretStr)

    @property
    def holds_text(self) -> bool:
        """Takes a plain string as such (str, Path, SecretStr, or a union with one)."""
        return _holds_text(self.annotation)


@dataclass(frozen=True, slots=True)
class Trail:
    """How far a key path reaches into the settings: see `follow`."""

    keys: tuple[Key, ...]  # the leading keys that name settings (entry indexes included)
    field: SettingField | None  # the setting the last of those keys names
    model: Table | None  # where a further key would be looked up; None below a leaf


def fields_of(model: Table, prefix: tuple[str, ...] = ()) -> Iterator[SettingField]:
    """The direct fields of `model`, with `prefix` as the path of the table it describes."""
    if issubclass(model, BaseModel):
        for name, info in model.model_fields.items():
            yield _setting_field(prefix, name, info.annotation, info.description)
    elif dataclasses.is_dataclass(model):
        hints = get_type_hints(model)
        for field in dataclasses.fields(model):
            yield _setting_field(prefix, field.name, hints[field.name], None)


def field_names(model: Table) -> list[str]:
    """The keys a table of `model` allows, sorted (for "did you mean" and "allowed: ...")."""
    return sorted(field.name for field in fields_of(model))


def walk(model: Table, prefix: tuple[str, ...] = ()) -> Iterator[SettingField]:
    """Every field below `model`, depth first, tables included (not the entries of arrays)."""
    for field in fields_of(model, prefix):
        yield field
        if field.section is not None:
            yield from walk(field.section, field.path)


def follow(model: Table, keys: Iterable[Key]) -> Trail:
    """Follow `keys` (e.g. an error location) from `model` as far as they name settings.

    An index steps into an entry of an array of tables (`keywords.entries[0]`); the first
    string that names no field ends the trail, so `trail.keys` is the part that exists.
    """
    kept: list[Key] = []
    field: SettingField | None = None
    current: Table | None = model
    for key in keys:
        if isinstance(key, int):
            kept.append(key)
            current = field.item_section if field is not None else None
            continue
        prefix = field.path if field is not None else ()
        named = {f.name: f for f in fields_of(current, prefix)} if current is not None else {}
        if key not in named:
            break
        field = named[key]
        kept.append(key)
        current = field.section
    return Trail(tuple(kept), field, current)


def table_at(data: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any] | None:
    """The nested table of plain data (parsed TOML, a dump) at `keys`, if there is one."""
    node: Any = data
    for key in keys:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, dict) else None


def _setting_field(
    prefix: tuple[str, ...], name: str, annotation: Any, description: str | None
) -> SettingField:
    item = get_args(annotation)[0] if get_origin(annotation) is list else None
    return SettingField(
        path=(*prefix, name),
        annotation=annotation,
        description=description,
        section=_model_in(annotation),
        item_section=_model_in(item) if item is not None else None,
    )


def _model_in(annotation: Any) -> Table | None:
    """The table class in an annotation such as `X`, `X | None` or `Annotated[X, ...]`."""
    if isinstance(annotation, type) and (
        issubclass(annotation, BaseModel) or dataclasses.is_dataclass(annotation)
    ):
        return annotation
    if get_origin(annotation) is Annotated:
        return _model_in(get_args(annotation)[0])
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
