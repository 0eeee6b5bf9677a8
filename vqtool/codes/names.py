"""The names images carry in code files: made safe to store, checked before decoding."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

# Longest part of a stored name, in bytes: room for "-NNN.png" within a 255-byte file name.
MAX_NAME_PART_BYTES = 200


MAX_NAME_CHARS = 1024


def clean_name(name: str) -> str:
    """A name safe to store and to decode into a folder: no empty, '.' or '..' parts, no
    backslashes, control characters or undecodable bytes; parts cut to MAX_NAME_PART_BYTES."""
    parts = []
    for part in name.split("/"):
        part = "".join("_" if _bad_char(c) else c for c in part)
        if part in ("", ".", ".."):
            part = "_"
        while len(part.encode()) > MAX_NAME_PART_BYTES:
            part = part[:-1]
        parts.append(part)
    return "/".join(parts)[:MAX_NAME_CHARS]


def _bad_char(c: str) -> bool:
    # Cc: control characters (NUL included); Cs: lone surrogates from undecodable file names.
    return c == "\\" or unicodedata.category(c) in ("Cc", "Cs")


def name_problem(name: str) -> str | None:
    """Why a stored name is unsafe to decode into a folder, or None when it is fine."""
    if not name:
        return "an empty name"
    if len(name) > MAX_NAME_CHARS:
        return f"a name longer than {MAX_NAME_CHARS} characters"
    if name.startswith("/"):
        return f"an absolute name {name[:60]!r}"
    # Printable ASCII without a backslash is fine as it is: the common case, checked fast.
    plain = name.isascii() and name.isprintable() and "\\" not in name
    if not plain and any(_bad_char(c) for c in name):
        return f"a name with a backslash or control character {name[:60]!r}"
    for part in name.split("/"):
        if part in ("", ".", ".."):
            return f"a name with an empty, '.' or '..' part {name[:60]!r}"
        if len(part.encode()) > MAX_NAME_PART_BYTES:
            return f"a name part longer than {MAX_NAME_PART_BYTES} bytes"
    return None


def unique_names(names: Sequence[str]) -> list[str]:
    """Repeated names get -2, -3, ... in order of appearance."""
    seen: set[str] = set()
    out = []
    for name in names:
        candidate, k = name, 1
        while candidate in seen:
            k += 1
            candidate = f"{name}-{k}"
        seen.add(candidate)
        out.append(candidate)
    return out
