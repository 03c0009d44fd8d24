"""Service settings: one pydantic model, filled from the environment and then from CLI flags.

A service declares a `ServiceSettings` subclass; `load_settings` builds the flags from its fields
(`snake_case` -> `--snake-case`, env `<PREFIX>SNAKE_CASE`), validates with pydantic, and on bad
input prints ONE line naming the flag or variable that was wrong, then exits 2:

    error: --port: expected an integer, got 'x'

Precedence: field default < environment < flag. Booleans are `--flag/--no-flag` (env: true/false,
1/0, yes/no, on/off). List fields take comma-separated values or a repeated flag. Subcommands are
the service's business: parse them first and hand the remaining argv here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

__all__ = ["ServiceSettings", "SettingsError", "load_settings", "parse_settings", "settings_parser"]

S = TypeVar("S", bound=BaseModel)

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class ServiceSettings(BaseModel):
    """Settings every service has."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, description="TCP port to listen on (0 = any free port)")
    log_level: LogLevel = Field("INFO", description="minimum level of the JSON log lines on stderr")
    span_log: Path | None = Field(None, description="append span records (JSON lines) to this file")
    drain_timeout: float = Field(
        10.0, ge=0, description="on SIGTERM, seconds to let in-flight requests finish before cancelling them"
    )

    # A validator rather than Field(ge=, le=): subclasses redeclare `port` with their own default
    # and would silently drop Field constraints; validators are inherited.
    @field_validator("port")
    @classmethod
    def _port_range(cls, value: int) -> int:
        if not 0 <= value <= 65535:
            raise ValueError(f"expected a port number 0-65535, got {value}")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        # Accept `--log-level debug`: levels are case-insensitive everywhere else too.
        return value.upper() if isinstance(value, str) else value


class SettingsError(Exception):
    """A setting's value is invalid; `source` names the flag or environment variable."""

    def __init__(self, source: str | None, message: str) -> None:
        self.source = source
        self.message = message
        super().__init__(f"{source}: {message}" if source else message)


class _ArgumentParser(argparse.ArgumentParser):
    # argparse prints the usage block plus the error; the project's CLIs print one line.
    def error(self, message: str) -> NoReturn:
        if message.endswith("expected one argument"):
            # argparse reads a value that starts with '-' (e.g. `--tags -x`) as another flag.
            flag = message.removeprefix("argument ").split(":", 1)[0].split("/")[-1]
            message += f" (a value that starts with '-' is written {flag}=VALUE)"
        raise SettingsError(None, message)


def _unwrap_optional(annotation: Any) -> Any:
    """`int | None` -> int; anything else unchanged."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _allows_none(info: FieldInfo) -> bool:
    ann = info.annotation
    return typing.get_origin(ann) in (typing.Union, types.UnionType) and type(None) in typing.get_args(ann)


def _kind(info: FieldInfo) -> str:
    """How a field is read from text: 'bool', 'list', 'json' (dicts, models) or 'scalar'."""
    ann = _unwrap_optional(info.annotation)
    origin = typing.get_origin(ann) or ann
    if ann is bool:
        return "bool"
    if origin in (list, tuple, set, frozenset, Sequence):
        return "list"
    if origin in (dict, Mapping) or (isinstance(origin, type) and issubclass(origin, BaseModel)):
        return "json"
    return "scalar"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env_name(prefix: str, name: str) -> str:
    return prefix + name.upper()


def _split_list(values: Sequence[str]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _describe_default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    default = info.get_default(call_default_factory=True)
    if isinstance(default, bool):
        return "default: " + ("on" if default else "off")
    if isinstance(default, (list, tuple, set, frozenset)):
        return "default: " + (",".join(map(str, default)) or "empty")
    if default is None:
        return "default: none"
    return f"default: {default}"


def settings_parser(
    cls: type[BaseModel], *, env_prefix: str = "PG_", prog: str | None = None
) -> argparse.ArgumentParser:
    """The argparse parser for `cls`'s fields (what `--help` shows)."""
    doc = (cls.__doc__ or "").strip()
    parser = _ArgumentParser(
        prog=prog,
        description=doc or None,
        epilog=f"Every flag can also be set through the environment as {env_prefix}<FIELD_NAME>; "
        "flags win over the environment.",
        argument_default=argparse.SUPPRESS,
    )
    for name, info in cls.model_fields.items():
        kind = _kind(info)
        help_text = info.description or ""
        ann = _unwrap_optional(info.annotation)
        if typing.get_origin(ann) is Literal:
            help_text += " (one of: " + ", ".join(map(str, typing.get_args(ann))) + ")"
        help_text = f"{help_text} [{_describe_default(info)}; env {_env_name(env_prefix, name)}]".strip()
        help_text = help_text.replace("%", "%%")
        flag = _flag(name)
        if kind == "bool":
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, help=help_text)
        elif kind == "list":
            parser.add_argument(
                flag,
                dest=name,
                action="append",
                metavar="A,B",
                help=help_text + " (comma-separated or repeated)",
            )
        else:
            metavar = "JSON" if kind == "json" else name.upper()
            parser.add_argument(flag, dest=name, metavar=metavar, help=help_text)
    return parser


def _from_text(kind: str, source: str, text: str) -> Any:
    if kind == "list":
        return _split_list([text])
    if kind == "json":
        try:
            return json.loads(text)
        except ValueError:
            raise SettingsError(source, f"expected a JSON object, got {text!r}") from None
    return text


def _friendly(error: Mapping[str, Any]) -> str:
    """A pydantic error as 'expected X, got Y' (attrs-style: what was expected and what came)."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    expected = {
        "int_parsing": "expected an integer",
        "int_type": "expected an integer",
        "int_from_float": "expected an integer",
        "float_parsing": "expected a number",
        "float_type": "expected a number",
        "bool_parsing": "expected a boolean (true/false, 1/0, yes/no, on/off)",
        "bool_type": "expected a boolean (true/false, 1/0, yes/no, on/off)",
        "string_type": "expected a string",
        "path_type": "expected a path",
        "list_type": "expected a list",
        "dict_type": "expected a JSON object",
    }.get(kind)
    if kind == "missing":
        return "required, but not set"
    if kind in ("literal_error", "enum"):
        expected = f"expected one of {ctx.get('expected')}"
    elif kind == "greater_than":
        expected = f"expected a value > {ctx.get('gt')}"
    elif kind == "greater_than_equal":
        expected = f"expected a value >= {ctx.get('ge')}"
    elif kind == "less_than":
        expected = f"expected a value < {ctx.get('lt')}"
    elif kind == "less_than_equal":
        expected = f"expected a value <= {ctx.get('le')}"
    elif kind == "string_too_short":
        expected = f"expected at least {ctx.get('min_length')} character(s)"
    elif kind == "string_too_long":
        expected = f"expected at most {ctx.get('max_length')} character(s)"
    elif kind == "too_short":
        expected = f"expected at least {ctx.get('min_length')} item(s)"
    elif kind == "too_long":
        expected = f"expected at most {ctx.get('max_length')} item(s)"
    elif kind == "extra_forbidden":
        return "unknown setting"
    if expected is None:
        msg = str(error.get("msg", "invalid value"))
        msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        expected = msg[:1].lower() + msg[1:]
    # a validator's own message (value_error) already says what came
    if kind not in ("value_error", "assertion_error") and isinstance(value, (str, int, float, bool)):
        return f"{expected}, got {value!r}"
    return expected


def parse_settings(
    cls: type[S],
    argv: Sequence[str] | None = None,
    *,
    env_prefix: str = "PG_",
    env: Mapping[str, str] | None = None,
    prog: str | None = None,
) -> S:
    """Build `cls` from `env` (default os.environ) and `argv` (default sys.argv[1:]).

    Raises SettingsError naming the flag or variable; `--help` raises SystemExit(0).
    """
    env = os.environ if env is None else env
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = settings_parser(cls, env_prefix=env_prefix, prog=prog)
    flags = vars(parser.parse_args(argv))

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, info in cls.model_fields.items():
        kind = _kind(info)
        var = _env_name(env_prefix, name)
        if name in flags:
            raw = flags[name]
            if kind == "list":
                values[name] = _split_list(raw)
            elif kind == "bool":
                values[name] = raw
            else:
                values[name] = _from_text(kind, _flag(name), raw)
            sources[name] = _flag(name)
        elif var in env:
            text = env[var]
            # `PG_X_LIMIT=` on an optional field means "unset", as it does in most shells' configs.
            if text == "" and _allows_none(info):
                values[name] = None
            else:
                values[name] = _from_text(kind, var, text)
            sources[name] = var
    try:
        return cls(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = error.get("loc") or ()
        if not loc:
            raise SettingsError(None, _friendly(error)) from None
        name = str(loc[0])
        source = sources.get(name, _flag(name))
        if len(loc) == 1 and isinstance(values.get(name), str):
            # show what the user typed, not what a before-validator made of it ('loud', not 'LOUD')
            error = {**error, "input": values[name]}
        message = _friendly(error)
        rest = [part for part in loc[1:] if not (isinstance(part, str) and part in _TYPE_TAGS)]
        if rest and isinstance(rest[0], int):
            # list items are numbered from 1 for people: `--seeds a,x` -> "item 2: ..."
            message = f"item {rest[0] + 1}: {message}"
        elif rest:
            message = f"{'.'.join(map(str, rest))}: {message}"
        raise SettingsError(source, message) from None


# Union members pydantic puts in an error's location (e.g. ('port', 'int')); not user-facing.
_TYPE_TAGS = frozenset(
    {"int", "float", "str", "bool", "none", "list", "dict", "function-after", "lax-or-strict"}
)


def load_settings(
    cls: type[S],
    argv: Sequence[str] | None = None,
    *,
    env_prefix: str = "PG_",
    env: Mapping[str, str] | None = None,
    prog: str | None = None,
) -> S:
    """`parse_settings`, but a bad value prints `error: <flag>: <why>` on stderr and exits 2."""
    try:
        return parse_settings(cls, argv, env_prefix=env_prefix, env=env, prog=prog)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
