"""Configuration mistakes as one line: `<key>=<value>: <what is wrong>; expected <what>; <how to fix>`.

Hydra and OmegaConf already detect wrong types, unknown keys and unknown options; this module rewrites what they
raise into that line (keeping the key, the value and the choices they report), so the user never sees a traceback
for a mistake of theirs.
"""

from __future__ import annotations

import re

from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from rifle_bench.config import ConfigError, suggestion

HIDDEN_OPTIONS = re.compile(r"_schema$")  # schemas share their group's folder in the ConfigStore
HELP = "see `rifle-bench --help` for the groups and keys"


class ConfigRefused(BaseException):
    """Carries a ConfigError past Hydra's callback runner, which turns an Exception into a mere warning."""


class InvalidCells(Exception):
    """Cells of a sweep whose configuration cannot work: nothing was launched."""

    def __init__(self, problems: list[tuple[str, ConfigError]]):
        self.problems = problems
        super().__init__("\n".join(f"{cell}: {error}" for cell, error in problems))


def user_error_lines(error: BaseException, argv: list[str]) -> list[str] | None:
    """The one-line message(s) for a configuration mistake, or None for an error that is not the user's."""
    if isinstance(error, InvalidCells):
        return [f"cell {cell}: {problem}" for cell, problem in error.problems] + [
            f"{len(error.problems)} cell(s) of this sweep are invalid; nothing was launched or written: fix the "
            f"values above and run the command again"]
    if isinstance(error, ConfigError):
        return [str(error)]
    if isinstance(error, MissingConfigException):
        return [_missing_option(error, argv)]
    if isinstance(error, OverrideParseException):
        return [f"{_first_line(error)}; expected key=value overrides (a,b,c or range(n) to sweep with -m); "
                f"quote values with spaces or special characters"]
    cause = error if isinstance(error, OmegaConfBaseException) else error.__cause__
    if isinstance(cause, OmegaConfBaseException):
        return [_omegaconf_line(cause, argv)]
    if isinstance(error, (ConfigCompositionException, HydraException)):
        return [f"{_first_line(error)}; {HELP}"]
    return None


def _missing_option(error: MissingConfigException, argv: list[str]) -> str:
    match = re.search(r"Could not find '([^']+)/([^'/]+)'", str(error))
    options = [o for o in (error.options or []) if not HIDDEN_OPTIONS.search(o)]
    if not match or not options:
        return f"{_first_line(error)}; {HELP}"
    group, option = match.groups()
    return (f"{group}={option}: no such {group} config; expected one of {', '.join(options)}; "
            f"{suggestion(option, options)}")


def _omegaconf_line(cause: OmegaConfBaseException, argv: list[str]) -> str:
    key = cause.full_key or ""
    value = _typed_value(key, argv, cause)
    message = _first_line(cause)
    if isinstance(cause, ConfigKeyError) or "not in struct" in message or re.match(r"Key '.*' not in", message):
        known = _known_keys(cause)
        last = key.rsplit(".", 1)[-1]
        fix = suggestion(last, known) if known else HELP
        where = key.rsplit(".", 1)[0] if "." in key else "the top level"
        return (f"{key}={value}: unknown key; expected one of the keys of {where}"
                f"{': ' + ', '.join(known) if known else ''}; {fix} (add a new key with +{key}=...)")
    if isinstance(cause, MissingMandatoryValue):
        return f"{key}=???: no value given; expected a value for {key}; set {key}=... on the command line"
    if isinstance(cause, ValidationError):
        choices = re.search(r"expected one of \[(.*)\]", message)
        if choices:
            return f"{key}={value}: not a valid choice; expected one of {choices.group(1)}; {HELP}"
        kind = re.search(r"could not be converted to (\w+)|is not a valid (\w+)", message)
        if kind:
            expected = {"Float": "a number", "Integer": "an integer", "Boolean": "true or false",
                        "bool": "true or false"}.get(kind.group(1) or kind.group(2), kind.group(1) or kind.group(2))
            return f"{key}={value}: wrong type; expected {expected}; fix the value on the command line"
        if "is not Optional" in message or "None" in message:
            return f"{key}=null: this key cannot be null; expected a value; set {key} to a value"
    return f"{key}={value}: {message}; expected a valid value; {HELP}"


def _typed_value(key: str, argv: list[str], cause: OmegaConfBaseException) -> str:
    """The value as the user typed it on the command line, else the one OmegaConf reports."""
    for arg in reversed(argv):
        name, _, value = arg.lstrip("+~").partition("=")
        if name == key and _:
            return value
    return "" if cause.value is None else str(cause.value)


def _known_keys(cause: OmegaConfBaseException) -> list[str]:
    parent = cause.parent_node
    if parent is None or not OmegaConf.is_dict(parent):
        return []
    return sorted(str(k) for k in parent.keys() if not str(k).startswith("_"))


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0].rstrip(".") if lines else type(error).__name__
