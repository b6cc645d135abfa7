"""Load a region config file: TOML file + ``RELAYNET_*`` environment overrides -> RelayConfig.

Every problem (unreadable file, TOML syntax, unknown keys, bad values, bad environment
variables, cross-field rules) becomes a ``ConfigIssue``; all issues found are reported together
in one ``ConfigError``.
"""

from __future__ import annotations

import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from relay.config.schema import (
    CROSS_FIELD_ERROR_TYPE,
    FIELD_ERROR_TYPE,
    PATTERN_DESCRIPTIONS,
    RelayConfig,
)

__all__ = [
    "ENV_PREFIX",
    "MISSING",
    "OVERRIDABLE_SECTIONS",
    "RESERVED_ENV_VARS",
    "ConfigError",
    "ConfigIssue",
    "RawText",
    "env_var_name",
    "load_config",
]

ENV_PREFIX: Final = "RELAYNET_"
#: ``RELAYNET_*`` variables that are not config overrides (``RELAYNET_CONFIG``: the file path).
RESERVED_ENV_VARS: Final = frozenset(
    {"RELAYNET_CONFIG", "RELAYNET_NATS_SERVER", "RELAYNET_TEST_TIMEOUT_FACTOR"}
)
#: Table sections whose scalar fields ``RELAYNET_<SECTION>_<FIELD>`` may override.
OVERRIDABLE_SECTIONS: Final = ("region", "relay", "nats", "auth", "limits", "federation")
_ARRAY_SECTIONS: Final = ("namespaces", "peers")


class RawText(str):
    """A message shown as-is after ``got`` (``repr`` without quotes), e.g. a TOML syntax error."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "nothing"


#: ``ConfigIssue.value`` of a required field that is absent.
MISSING: Final = _Missing()


@dataclass(frozen=True)
class ConfigIssue:
    """One problem: ``field`` is a dotted path (``namespaces[1].prefix``) or ``"-"`` for the file.

    ``source`` is ``"file"`` or the name of the environment variable that supplied ``value``.
    """

    file: str
    field: str
    value: object
    expected: str
    source: str = "file"

    def __str__(self) -> str:
        line = f"{self.file}: {self.field}: expected {self.expected}, got {self.value!r}"
        if self.source != "file":
            line += f" (from environment {self.source})"
        return line


class ConfigError(Exception):
    """The config at ``path`` is unusable; ``str()`` is one line per issue."""

    def __init__(self, path: str, issues: list[ConfigIssue]) -> None:
        self.path = path
        self.issues = issues
        super().__init__(path, issues)

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


def env_var_name(section: str, field: str) -> str:
    """``env_var_name("relay", "port") == "RELAYNET_RELAY_PORT"``."""
    return f"{ENV_PREFIX}{section.upper()}_{field.upper()}"


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> RelayConfig:
    """Read the TOML file at ``path``, apply ``RELAYNET_*`` overrides from ``env`` (default
    ``os.environ``) and validate. Raises ``ConfigError`` listing every problem found."""
    file = os.fspath(path)
    data = _read_toml(file)
    sources: dict[tuple[str, str], str] = {}
    issues = _apply_env(file, data, os.environ if env is None else env, sources)
    try:
        config = RelayConfig.model_validate(data)
    except ValidationError as exc:
        issues.extend(_translate(file, exc, sources))
    if issues:
        raise ConfigError(file, issues)
    return config


# --- reading ---------------------------------------------------------------------------------


def _read_toml(file: str) -> dict[str, Any]:
    def fail(expected: str, got: str) -> ConfigError:
        return ConfigError(file, [ConfigIssue(file, "-", RawText(got), expected)])

    try:
        with open(file, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise fail("an existing config file", "no such file") from None
    except IsADirectoryError:
        raise fail("a config file", "a directory") from None
    except PermissionError:
        raise fail("a readable config file", "permission denied") from None
    except OSError as exc:
        raise fail("a readable config file", exc.strerror or type(exc).__name__) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail("UTF-8 text", f"an invalid byte at offset {exc.start}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise fail("valid TOML", str(exc)) from None


# --- environment overrides -------------------------------------------------------------------


def _apply_env(
    file: str,
    data: dict[str, Any],
    env: Mapping[str, str],
    sources: dict[tuple[str, str], str],
) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var in RESERVED_ENV_VARS:
            continue
        raw = env[var]
        section_key, _, field_key = var[len(ENV_PREFIX) :].partition("_")
        section, field = section_key.lower(), field_key.lower()
        path = f"{section}.{field}" if field else section or "-"

        def issue(expected: str, path: str = path, var: str = var, raw: str = raw) -> None:
            issues.append(ConfigIssue(file, path, raw, expected, source=var))

        if var != var.upper():
            issue(f"an upper-case variable name ({var.upper()})")
            continue
        if section in _ARRAY_SECTIONS:
            issue(f"no environment override ([[{section}]] can only be set in the config file)")
            continue
        if section not in OVERRIDABLE_SECTIONS:
            issue("no such section (overridable sections: " + ", ".join(OVERRIDABLE_SECTIONS) + ")")
            continue
        model = _section_model(section)
        if field not in model.model_fields:
            issue("no such field (known fields: " + ", ".join(model.model_fields) + ")")
            continue
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            continue  # the file has e.g. `relay = 5`; validation reports that
        table[field] = _parse_env_value(raw, model.model_fields[field])
        sources[(section, field)] = var
    return issues


def _section_model(section: str) -> type[BaseModel]:
    model = _model_of(RelayConfig.model_fields[section].annotation)
    assert model is not None
    return model


def _parse_env_value(raw: str, info: FieldInfo) -> object:
    """A TOML value if ``raw`` parses as one (``8702``, ``true``, ``1.5``), else the string.

    String fields always get the raw string, so ``RELAYNET_RELAY_ID=123`` means ``"123"``.
    """
    if _accepts_only_strings(info.annotation):
        return raw
    try:
        parsed = tomllib.loads("v = " + raw)
    except tomllib.TOMLDecodeError:
        return raw
    return parsed["v"] if parsed.keys() == {"v"} else raw


def _accepts_only_strings(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return all(_accepts_only_strings(a) for a in args)
    if origin is typing.Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    return annotation is str


# --- translating pydantic errors -------------------------------------------------------------


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model class in ``X``, ``X | None`` or ``tuple[X, ...]``, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        model = _model_of(arg)
        if model is not None:
            return model
    return None


def _resolve(loc: tuple[int | str, ...]) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model holding the last named field of ``loc``, and that field (None if unknown)."""
    model: type[BaseModel] | None = RelayConfig
    parent: type[BaseModel] | None = None
    info: FieldInfo | None = None
    for part in loc:
        if isinstance(part, int):
            continue  # index into a tuple field: ``model`` already is the item model
        if model is None:
            return None, None
        parent, info = model, model.model_fields.get(part)
        if info is None:
            return parent, None
        model = _model_of(info.annotation)
    return parent, info


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "-"


def _bounds_text(info: FieldInfo | None, noun: str) -> str | None:
    """``"an integer from 0 to 65535"`` when the field has both a lower and an upper bound."""
    if info is None:
        return None
    low = high = None
    for meta in info.metadata:
        if hasattr(meta, "ge"):
            low = f"{meta.ge}"
        elif hasattr(meta, "gt"):
            low = f"more than {meta.gt}"
        if hasattr(meta, "le"):
            high = f"{meta.le}"
    if low is None or high is None or low.startswith("more"):
        return None
    return f"{noun} from {low} to {high}"


def _expected(err: ErrorDetails, parent: type[BaseModel] | None, info: FieldInfo | None) -> str:
    kind = err["type"]
    ctx: dict[str, Any] = dict(err.get("ctx") or {})
    loc = err["loc"]
    top_level = len(loc) == 1 and isinstance(loc[0], str)
    noun = "an integer" if info is not None and info.annotation is int else "a number"
    if kind == FIELD_ERROR_TYPE:
        return err["msg"]
    if kind == "missing":
        if top_level and _model_of(info.annotation if info else None) is not None:
            return f"a [{loc[0]}] table (required field)"
        return "a value (required field)"
    if kind == "extra_forbidden":
        known = ", ".join(parent.model_fields) if parent is not None else ""
        return f"no such field (known fields: {known})"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        both = _bounds_text(info, noun)
        if both is not None:
            return both
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<"}.get(kind, "<=")
        limit = next(iter(ctx.values()), "?")
        return f"{noun} {op} {limit}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "an integer"
    if kind in ("float_type", "float_parsing"):
        return "a number"
    if kind == "finite_number":
        return "a finite number"
    if kind == "string_type":
        return "a string"
    if kind == "bool_type":
        return "true or false"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        return PATTERN_DESCRIPTIONS.get(pattern, f"a string matching {pattern}")
    if kind == "string_too_short":
        return f"a string of at least {ctx.get('min_length')} character(s)"
    if kind == "string_too_long":
        return f"a string of at most {ctx.get('max_length')} characters"
    if kind == "literal_error":
        return str(ctx.get("expected", "one of the allowed values"))
    if kind in ("tuple_type", "list_type"):
        return f"an array of tables ([[{loc[0]}]])" if top_level else "an array"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"a table ([{loc[0]}])" if top_level else "a table"
    msg = err["msg"]
    for lead in ("Input should be ", "Value error, ", "Value should be "):
        msg = msg.removeprefix(lead)
    return msg


def _translate(
    file: str, exc: ValidationError, sources: Mapping[tuple[str, str], str]
) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for err in exc.errors():
        if err["type"] == CROSS_FIELD_ERROR_TYPE:
            problems = (err.get("ctx") or {}).get("problems", ())
            for field, value, expected in problems:
                section, _, name = str(field).partition(".")
                source = sources.get((section, name), "file")
                issues.append(ConfigIssue(file, str(field), value, str(expected), source))
            continue
        loc = err["loc"]
        parent, info = _resolve(loc)
        value = MISSING if err["type"] == "missing" else err["input"]
        source = "file"
        if len(loc) == 2 and isinstance(loc[0], str) and isinstance(loc[1], str):
            source = sources.get((loc[0], loc[1]), "file")
        issues.append(ConfigIssue(file, _path(loc), value, _expected(err, parent, info), source))
    return issues
