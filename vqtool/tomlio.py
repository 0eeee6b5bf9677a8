"""TOML in and out: the standard library's reader (tomli before Python 3.11) and tomli-w."""

from __future__ import annotations

import sys
from typing import Any

import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TOMLDecodeError = tomllib.TOMLDecodeError


def loads_toml(text: str) -> dict[str, Any]:
    return tomllib.loads(text)


def dumps_toml(data: dict[str, Any]) -> str:
    return tomli_w.dumps(data)


def toml_value(value: object) -> str:
    """One value as TOML writes it: true, 3, 0.0003, "text"."""
    return tomli_w.dumps({"v": value}).removeprefix("v = ").strip()
