"""Ready-trained runs shipped inside the package, named `pretrained:NAME` wherever a run folder
is read (`pretrained:NAME/prior` for the prior inside one).

Each is an ordinary run folder (checkpoint without optimizer state, profile.toml,
metrics.jsonl, eval-test.json, rd-test.json) plus `about.toml`, which says what it is and how
it was trained. They are read-only: `RunDir.read_only` tells the commands that would write
into a run to write elsewhere, or to say where to copy it.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from vqtool.errors import UsageError
from vqtool.tomlio import TOMLDecodeError, loads_toml

PREFIX = "pretrained:"
ABOUT_NAME = "about.toml"


def pretrained_dir() -> Path:
    """The folder of ready-trained runs: top-level `pretrained/` in a checkout, else the
    package's (pyproject installs that folder as package data `vqtool/_pretrained`)."""
    checkout = Path(__file__).resolve().parent.parent / "pretrained"
    if checkout.is_dir():
        return checkout
    return Path(__file__).resolve().parent / "_pretrained"


def names() -> list[str]:
    """The ready-trained runs' names, sorted."""
    folder = pretrained_dir()
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / ABOUT_NAME).is_file())


def is_name(path: str | Path) -> bool:
    """Whether a user's run argument is a `pretrained:` name rather than a path."""
    return str(path).startswith(PREFIX)


def resolve(path: str | Path) -> Path:
    """A user's run argument as a path: `pretrained:NAME[/SUB]` becomes the shipped folder
    (UsageError naming the known runs for an unknown one); any other path is returned as is."""
    if not is_name(path):
        return Path(path)
    text = str(path)
    name, _, sub = text[len(PREFIX) :].partition("/")
    known = names()
    if name not in known:
        listed = ", ".join(PREFIX + n for n in known) or "none in this installation"
        raise UsageError(
            f"unknown ready-trained run {name!r}", text, f"use one of {listed} (vqtool pretrained)"
        )
    parts = PurePosixPath(sub).parts
    if any(part in ("..", "/") for part in parts):
        raise UsageError("a ready-trained run's subfolder cannot leave it", text, "drop the ..")
    folder = pretrained_dir() / name
    for part in parts:
        folder = folder / part
    if not folder.exists():
        raise UsageError(
            f"the ready-trained run {name} has no {sub}", text, f"list it: vqtool pretrained {name}"
        )
    return folder


def is_shipped(folder: Path) -> bool:
    """Whether `folder` lies inside the shipped runs (and so must not be written to)."""
    try:
        folder.resolve().relative_to(pretrained_dir().resolve())
    except (ValueError, OSError):
        return False
    return True


def name_of(folder: Path) -> str:
    """`pretrained:NAME[/SUB]` for a folder inside the shipped runs."""
    return PREFIX + folder.resolve().relative_to(pretrained_dir().resolve()).as_posix()


def about(folder: Path) -> dict[str, Any]:
    """A shipped run's about.toml (`folder`: the run, resolved): description, how it was
    trained (`trained`), on what."""
    path = folder / ABOUT_NAME
    try:
        return loads_toml(path.read_text(encoding="utf-8"))
    except (OSError, TOMLDecodeError) as exc:
        raise UsageError(f"unreadable {ABOUT_NAME}: {exc}", path, "reinstall vqtool") from exc


def read_only_fix(folder: Path) -> str:
    """What to do instead of writing into a shipped run."""
    return (
        f"{name_of(folder)} is read-only: copy it first (cp -r {folder} my-run) and give the copy"
    )
