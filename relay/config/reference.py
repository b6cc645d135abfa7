"""Markdown reference of the config file format, generated from ``relay.config.schema``.

``python -m relay.config.reference`` prints it; README.md embeds it between
``<!-- config-reference:start -->`` and ``<!-- config-reference:end -->`` (a unit test keeps the
two in sync).
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from relay.config.loader import ENV_PREFIX, OVERRIDABLE_SECTIONS, RESERVED_ENV_VARS
from relay.config.schema import PATTERN_DESCRIPTIONS, RelayConfig

__all__ = ["render_reference"]


def _section_model(info: FieldInfo) -> tuple[type[BaseModel], bool]:
    """The model of a top-level field, and whether it is an array of tables."""
    annotation = info.annotation
    is_array = typing.get_origin(annotation) is tuple
    if is_array:
        annotation = typing.get_args(annotation)[0]
    assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return annotation, is_array


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _bounds(info: FieldInfo) -> str:
    low = high = ""
    for meta in info.metadata:
        if hasattr(meta, "ge"):
            low = f">= {meta.ge}"
        if hasattr(meta, "gt"):
            low = f"> {meta.gt}"
        if hasattr(meta, "le"):
            high = f"<= {meta.le}"
        if hasattr(meta, "lt"):
            high = f"< {meta.lt}"
    if low.startswith(">=") and high.startswith("<="):
        return f"{low[3:]} to {high[3:]}"
    return ", ".join(part for part in (low, high) if part)


def _type(info: FieldInfo) -> str:
    annotation: Any = info.annotation
    if typing.get_origin(annotation) is typing.Literal:
        return " or ".join(f'`"{value}"`' for value in typing.get_args(annotation))
    optional = type(None) in typing.get_args(annotation)
    if optional:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    name = _type_name(annotation)
    bounds = _bounds(info)
    if bounds:
        name += f" ({bounds})"
    if optional:
        name += ", optional"
    return name


_SCALARS: dict[Any, str] = {int: "integer", float: "float", str: "string", bool: "boolean"}


def _type_name(annotation: Any) -> str:
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = args[0]
        if item in _SCALARS:
            return f"array of {_SCALARS[item]}s"
        if typing.get_origin(item) is tuple and len(typing.get_args(item)) == 2:
            # (key, value) pairs: how the schema keeps a TOML table in a frozen model
            return f"table of {_type_name(typing.get_args(item)[1])}"
    return str(annotation)


def _is_table(value: tuple[object, ...]) -> bool:
    return bool(value) and all(
        isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str) for pair in value
    )


def _toml(value: object) -> str:
    if isinstance(value, tuple):
        if _is_table(value):
            pairs = ", ".join(f"{_toml(k)} = {_toml(v)}" for k, v in value)
            return "{ " + pairs + " }"
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _default(info: FieldInfo) -> str:
    if info.default is PydanticUndefined and info.default_factory is None:
        return "required"
    if info.default is None:
        return "unset"
    return f"`{_toml(info.default)}`"


def _description(info: FieldInfo) -> str:
    text = info.description or ""
    for meta in info.metadata:
        pattern = getattr(meta, "pattern", None)
        if pattern in PATTERN_DESCRIPTIONS:
            text += f" Must be {PATTERN_DESCRIPTIONS[pattern]}."
    return text


def _section(name: str, info: FieldInfo) -> list[str]:
    model, is_array = _section_model(info)
    heading = f"[[{name}]]" if is_array else f"[{name}]"
    required = info.is_required()
    intro = info.description or ""
    if is_array:
        intro += " Optional; repeat the table once per entry. Not overridable from the environment."
    else:
        intro += " Required." if required and not intro.endswith("Required.") else ""
        if not required:
            intro += " Optional; every field has a default."
        if name in OVERRIDABLE_SECTIONS:
            intro += f" Environment override: `{ENV_PREFIX}{name.upper()}_<FIELD>`."
    lines = [
        f"### `{heading}`",
        "",
        intro.strip(),
        "",
        "| field | type | default | description |",
        "| --- | --- | --- | --- |",
    ]
    for field_name, field_info in model.model_fields.items():
        cells = (
            f"`{field_name}`",
            _type(field_info),
            _default(field_info),
            _description(field_info),
        )
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return lines


def render_reference() -> str:
    """The Markdown config reference: one table per section, in file order."""
    reserved = ", ".join(f"`{var}`" for var in sorted(RESERVED_ENV_VARS))
    lines = [
        "Generated from `relay/config/schema.py` by `python -m relay.config.reference`; "
        "do not edit by hand.",
        "",
        "A config file is TOML. Unknown keys are errors, and values must have the listed type "
        '(`port = "8701"` is rejected). A scalar field of a table section can be overridden '
        "with an environment variable `RELAYNET_<SECTION>_<FIELD>`, e.g. "
        "`RELAYNET_RELAY_PORT=8702`; its value is read as a TOML value when it parses as one "
        f"(string fields always take it verbatim). Other `{ENV_PREFIX}*` variables are errors, "
        f"except {reserved}.",
    ]
    for name, info in RelayConfig.model_fields.items():
        lines.append("")
        lines.extend(_section(name, info))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_reference(), end="")
