"""Small helpers that turn "this value at this path is wrong" into a positioned Diagnostic."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..model.diagnostics import Diagnostic, Mark, did_you_mean
from .yamlpos import Located

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int):
        return "a number"
    return "text" if isinstance(value, str) else type(value).__name__


class Checker:
    """Collects diagnostics for one YAML document; never raises, so one run reports everything."""

    def __init__(self, located: Located, diagnostics: list[Diagnostic]) -> None:
        self.located = located
        self.diagnostics = diagnostics

    def mark(self, path: tuple[str | int, ...], *, key: bool = False) -> Mark:
        return self.located.key_at(*path) if key else self.located.at(*path)

    def error(self, path: tuple[str | int, ...], message: str, fix: str = "", *, key: bool = False) -> None:
        self.diagnostics.append(Diagnostic("error", self.mark(path, key=key), message, fix))

    def warn(self, path: tuple[str | int, ...], message: str, fix: str = "", *, key: bool = False) -> None:
        self.diagnostics.append(Diagnostic("warning", self.mark(path, key=key), message, fix))

    def keys(self, path: tuple[str | int, ...], value: Mapping[Any, Any], allowed: Iterable[str],
             where: str) -> None:
        allowed = list(allowed)
        for key in value:
            if key not in allowed:
                self.error((*path, key), f"unknown key '{key}' in {where}{did_you_mean(str(key), allowed)}",
                           f"allowed keys: {', '.join(allowed)}", key=True)

    def mapping(self, path: tuple[str | int, ...], value: Any, where: str) -> bool:
        if isinstance(value, Mapping):
            return True
        self.error(path, f"{where} must be a mapping (key: value), not {type_name(value)}")
        return False

    def is_list(self, path: tuple[str | int, ...], value: Any, where: str) -> bool:
        if isinstance(value, list):
            return True
        self.error(path, f"{where} must be a list, not {type_name(value)}", "start each entry with '- '")
        return False

    def boolean(self, path: tuple[str | int, ...], value: Any, where: str) -> bool:
        if isinstance(value, bool):
            return True
        self.error(path, f"{where} must be true or false, not {value!r}")
        return False

    def text(self, path: tuple[str | int, ...], value: Any, where: str) -> bool:
        if isinstance(value, str) and value:
            return True
        fix = ("YAML reads unquoted yes/no/on/off/true/false as booleans: quote the value"
               if isinstance(value, bool) else "")
        self.error(path, f"{where} must be non-empty text, not {type_name(value)}", fix)
        return False

    def port_number(self, path: tuple[str | int, ...], value: Any, where: str) -> bool:
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
            return True
        self.error(path, f"{where} must be a port number from 1 to 65535, not {value!r}",
                   unquote_fix(path, value))
        return False

    def dns_label(self, path: tuple[str | int, ...], value: Any, where: str) -> bool:
        if not self.text(path, value, where):
            return False
        if len(value) <= 63 and DNS_LABEL.match(value):
            return True
        self.error(path, f"{where} '{value}' is not a valid Kubernetes name",
                   "use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit")
        return False

    def choice(self, path: tuple[str | int, ...], value: Any, choices: Iterable[str], what: str,
               context: str = "") -> bool:
        choices = list(choices)
        if isinstance(value, str) and value in choices:
            return True
        self.error(path, f"invalid {what} {value!r}{context}{did_you_mean(str(value), choices)}",
                   f"use one of {', '.join(choices)}")
        return False


def unquote_fix(path: tuple[str | int, ...], value: Any) -> str:
    """The fix for a number written as text (``status: "200"``): numbers are written unquoted, as in Kubernetes."""
    if not (isinstance(value, str) and value.strip().isdigit() and path and isinstance(path[-1], str)):
        return ""
    return f"write {path[-1]}: {value.strip()} (a number, without quotes)"
