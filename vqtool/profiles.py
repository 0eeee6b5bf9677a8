"""Profiles: TOML files plus `--set` overrides, validated once into a frozen dataclass tree.

A profile file has top-level `name`, `description` and `extends` keys and the sections
`[data]`, `[model]` and `[train]`. `extends` names a shipped profile or a path relative to the
extending file; the child's keys replace the parent's one key at a time. Every error is a
`UsageError` that names the key, the file or `--set` it came from, and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast

from vqtool.errors import UsageError
from vqtool.models.config import (
    ACTIVATIONS,
    DOWNSAMPLES,
    MAX_CHANNEL_STAGES,
    ModelConfig,
    PriorConfig,
)
from vqtool.tomlio import TOMLDecodeError, dumps_toml, loads_toml, toml_value


@dataclass(frozen=True)
class DataConfig:
    """Where the training images come from and how they are batched."""

    dataset: str = "cifar10"
    shuffle: bool = True
    batch_size: int = 32  # global batch: split evenly across DDP processes
    # dataset = "folder" only (vqtool.data.folders): the image folder, absolute once loaded (a
    # relative path resolves against the working directory), the (H, W) images are trained at,
    # how each image becomes that size, and the held-out share when there is no test/ folder.
    path: str = ""
    image_size: tuple[int, int] = (32, 32)
    resize: str = "centre-crop"
    test_fraction: float = 0.1
    # resize = "native-crop" only: each photo is kept at this factor of its own size.
    scale: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop: length, optimiser, logging, precision and device."""

    steps: int = 25000
    learning_rate: float = 3e-4
    amsgrad: bool = True
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 1000
    eval_every: int = 0
    precision: str = "auto"
    device: str = "auto"
    threads: int = 0  # CPU threads; 0 = the cores no other process keeps busy
    compile: bool = False
    cuda_graphs: bool = True  # one CUDA process: each step replayed as one recorded CUDA graph
    lr_schedule: str = "constant"
    lr_hold_steps: int = 0  # cosine: steps at learning_rate before the decay starts
    warmup_steps: int = 0  # linear warm-up from 0 to learning_rate
    collapse_guard: bool = False


@dataclass(frozen=True)
class _Named:
    name: str
    description: str


@dataclass(frozen=True)
class Profile(_Named):
    """One fully resolved profile: everything a run needs besides paths."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class PriorTrainConfig:
    """How a prior over codes is trained: AdamW on batches of code grids."""

    steps: int = 2000
    batch_size: int = 128  # global batch of code grids: split evenly across DDP processes
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    eval_every: int = 0  # steps between test evaluations during training; 0 = off
    precision: str = "auto"
    device: str = "auto"
    threads: int = 0  # CPU threads; 0 = the cores no other process keeps busy
    lr_schedule: str = "cosine"
    lr_hold_steps: int = 0  # cosine: steps at learning_rate before the decay starts
    warmup_steps: int = 100


@dataclass(frozen=True)
class PriorProfile(_Named):
    """One fully resolved prior profile: the transformer's sizes and its training."""

    prior: PriorConfig = field(default_factory=PriorConfig)
    train: PriorTrainConfig = field(default_factory=PriorTrainConfig)


AnyProfile = Profile | PriorProfile


class Schema(NamedTuple):
    """One kind of profile: its sections and the dataclass they build."""

    kind: str  # "vq" or "prior"
    sections: dict[str, type]
    root: type
    command: str  # the command that trains with it


VQ = Schema(
    "vq", {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}, Profile, "train"
)
PRIOR = Schema("prior", {"prior": PriorConfig, "train": PriorTrainConfig}, PriorProfile, "prior")
TOP_LEVEL_KEYS = ("name", "description", "extends")

_TYPE_NAMES: dict[Any, str] = {
    bool: "a boolean (true or false)",
    int: "an integer",
    float: "a number",
    str: "a string",
    tuple[int, int]: "two integers [H, W],",
    tuple[int, ...]: "a list of integers,",
}
# How an image becomes data.image_size (vqtool.images.fit), also `vqtool encode --resize`.
RESIZE_MODES = ("centre-crop", "random-crop", "native-crop", "stretch")
# The longest image side a profile may ask for (vqtool reads images up to 4096 x 4096).
MAX_SIDE = 4096
CIFAR10_SIZE = (32, 32)
# The device names every --device and train.device accept (vqtool.device resolves them).
DEVICE_NAMES = re.compile(r"auto|cpu|cuda|cuda:\d+|mps")
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"


def _at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f">= {low}"


def _one_of(*choices: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), "one of " + ", ".join(choices)


# Allowed values per key; keys not listed accept any value of their type.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.dataset": _one_of("cifar10", "folder"),
    "data.batch_size": _at_least(1),
    "data.image_size": (
        lambda v: all(2 <= side <= MAX_SIDE and side % 2 == 0 for side in v),
        f"each a multiple of 2 (and of model.downsample) from 2 to {MAX_SIDE}",
    ),
    "data.resize": _one_of(*RESIZE_MODES),
    "data.test_fraction": ((lambda v: 0 <= v < 1), ">= 0 and < 1"),
    # A factor of a photo's own size: shrinking only, since enlarging adds no detail.
    "data.scale": ((lambda v: 0 < v <= 1), "> 0 and <= 1"),
    "model.num_hiddens": ((lambda v: v >= 2 and v % 2 == 0), "that is even and >= 2"),
    "model.num_residual_hiddens": _at_least(1),
    "model.num_residual_layers": _at_least(0),
    "model.channels": (
        lambda v: len(v) <= MAX_CHANNEL_STAGES and all(c >= 1 for c in v),
        f"each >= 1, at most {MAX_CHANNEL_STAGES} (one per halving of the sides)",
    ),
    "model.activation": _one_of(*ACTIVATIONS),
    "model.embedding_dim": _at_least(1),
    # Codes are stored as uint16, hence the upper bound.
    "model.num_embeddings": ((lambda v: 2 <= v <= 65536), "between 2 and 65536"),
    "model.commitment_cost": ((lambda v: v >= 0), ">= 0"),
    "model.decay": ((lambda v: 0 <= v < 1), ">= 0 and < 1 (0 = no EMA)"),
    "model.codebook_init": _one_of("seed", "encoder", "kmeans"),
    "model.dead_code_steps": _at_least(0),
    "model.quantizer": _one_of("vq", "fsq"),
    # K = the product of the levels, and codes are stored as uint16.
    "model.levels": (
        lambda v: len(v) > 0 and all(n >= 2 for n in v) and math.prod(v) <= 65536,
        "each >= 2, whose product is at most 65536",
    ),
    "model.stages": ((lambda v: 1 <= v <= 64), ">= 1 and <= 64 (what a code file holds)"),
    "model.gradient": _one_of("straight-through", "rotation"),
    "model.downsample": ((lambda v: v in DOWNSAMPLES), "one of 2, 4, 8, 16"),
    "train.steps": _at_least(1),
    "train.learning_rate": ((lambda v: v > 0), "> 0"),
    "train.seed": _at_least(0),
    "train.log_every": _at_least(1),
    "train.checkpoint_every": _at_least(1),
    "train.eval_every": _at_least(0),
    "train.precision": _one_of("auto", "fp32", "bf16"),
    "train.threads": _at_least(0),
    "train.device": (lambda v: bool(DEVICE_NAMES.fullmatch(v)), f"one of {DEVICE_CHOICES}"),
    "train.lr_schedule": _one_of("constant", "cosine"),
    "train.warmup_steps": _at_least(0),
    "train.lr_hold_steps": _at_least(0),
    "train.batch_size": _at_least(1),
    "train.weight_decay": ((lambda v: v >= 0), ">= 0"),
    "prior.layers": _at_least(1),
    "prior.width": _at_least(1),
    "prior.heads": _at_least(1),
    "prior.mlp_ratio": _at_least(1),
    "prior.dropout": ((lambda v: 0 <= v < 1), ">= 0 and < 1"),
    "prior.num_classes": _at_least(1),
    "prior.window": (
        lambda v: len(v) == 2 and (v[0] == v[1] == 0 or min(v) >= 1),
        "two sides >= 1 ([h, w] codes), or [0, 0] for the whole grid",
    ),
}


def _field_types(section: str, schema: Schema = VQ) -> dict[str, type]:
    cls = schema.sections[section]
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _display(path: Path) -> str:
    """A path as a user would type it: relative to the working folder when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def profiles_dir() -> Path:
    """The folder of shipped profiles: top-level `profiles/` in a checkout, else the package's."""
    checkout = Path(__file__).resolve().parent.parent / "profiles"
    if (checkout / "ema.toml").is_file():
        return checkout
    # pyproject installs the top-level profiles/ folder as package data `vqtool/_profiles`.
    return Path(__file__).resolve().parent / "_profiles"


def _shipped_names() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.toml"))


def list_profiles() -> list[tuple[str, str]]:
    """(name, description) of each shipped profile, sorted by name."""
    return [(name, load_any_profile(name).description) for name in _shipped_names()]


def profiles_by_command() -> list[tuple[str, list[tuple[str, str]]]]:
    """The shipped profiles grouped by the command that takes them: (how the command takes
    one, [(name, description)]), VQ profiles first, then prior profiles."""
    usage = {VQ.kind: "vqtool train --profile NAME", PRIOR.kind: "vqtool prior RUN --profile NAME"}
    groups: dict[str, list[tuple[str, str]]] = {command: [] for command in usage.values()}
    for name, description in list_profiles():
        kind = _kind_of(profiles_dir() / f"{name}.toml", [])
        groups[usage[kind.kind]].append((name, description))
    return list(groups.items())


def _looks_like_path(spec: str, base: Path) -> bool:
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return spec.endswith(".toml") or any(s in spec for s in seps) or (base / spec).is_file()


def _shipped_path(name: str, where: str, kind: Schema | None = None) -> Path:
    names = _shipped_names()
    if name not in names:
        if kind is not None:  # list the profiles the command can take
            names = [n for n in names if _kind_of(profiles_dir() / f"{n}.toml", []) is kind]
        raise UsageError(
            f"unknown profile '{name}'",
            where,
            "shipped profiles are "
            + ", ".join(names)
            + " (or give a path to a .toml file)"
            + _suggest(name, names),
        )
    return profiles_dir() / f"{name}.toml"


def _resolve_spec(
    spec: str, base: Path, where: str, kind: Schema | None = None
) -> tuple[Path, str]:
    """The file a profile spec names and its default name (shipped name or file stem)."""
    if _looks_like_path(spec, base):
        path = base / spec
        if not path.is_file():
            raise UsageError(
                f"profile file not found: {spec}", where, "check the path, or use a shipped name"
            )
        return path, path.stem
    return _shipped_path(spec, where, kind), spec


def _read_toml(path: Path) -> dict[str, Any]:
    where = _display(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"cannot read profile: {exc}", where, "give a readable UTF-8 TOML file"
        ) from None
    try:
        return loads_toml(text)
    except TOMLDecodeError as exc:
        # The TOML reader's message carries the line and column, e.g. "(at line 3, column 7)".
        raise UsageError(f"malformed TOML: {exc}", where, "fix the syntax at that line") from None


def _check_keys(raw: Mapping[str, Any], where: str, schema: Schema) -> None:
    """Reject unknown top-level keys, sections and section keys, suggesting close matches."""
    sections = schema.sections
    top_allowed = [*TOP_LEVEL_KEYS, *sections]
    for key, value in raw.items():
        if key in sections:
            if not isinstance(value, Mapping):
                raise UsageError(
                    f"'{key}' must be a table [{key}], got {value!r}",
                    where,
                    f"write its keys under a [{key}] header",
                )
            allowed = sorted(_field_types(key, schema))
            for sub in value:
                if sub not in allowed:
                    raise UsageError(
                        f"unknown key '{sub}' in [{key}]",
                        where,
                        f"allowed keys are {', '.join(allowed)}" + _suggest(sub, allowed),
                    )
        elif key not in TOP_LEVEL_KEYS:
            if isinstance(value, Mapping):
                raise UsageError(
                    f"unknown section [{key}]",
                    where,
                    f"allowed sections are {', '.join(sections)}" + _suggest(key, list(sections)),
                )
            qualified = [f"{s}.{k}" for s in sections for k in _field_types(s, schema)]
            near = difflib.get_close_matches(key, [q.split(".")[1] for q in qualified], n=1)
            hint = ""
            if near:
                full = next(q for q in qualified if q.endswith("." + near[0]))
                hint = f"; did you mean '{near[0]}' under [{full.split('.')[0]}]?"
            raise UsageError(
                f"unknown top-level key '{key}'",
                where,
                f"allowed top-level keys are {', '.join(top_allowed)}" + hint,
            )


_Sources = dict[str, str]


def _kind_of(path: Path, chain: list[Path]) -> Schema:
    """A profile file's kind: a prior profile has a [prior] section or extends one."""
    resolved = path.resolve()
    if resolved in chain:
        return VQ  # a cycle: reported by _load_raw
    raw = _read_toml(path)
    if "prior" in raw:
        return PRIOR
    parent = raw.get("extends")
    if isinstance(parent, str):
        parent_path, _ = _resolve_spec(parent, path.parent, _display(path))
        return _kind_of(parent_path, [*chain, resolved])
    return VQ


def _load_raw(path: Path, chain: list[Path], schema: Schema) -> tuple[dict[str, Any], _Sources]:
    """A file's keys merged over those of the profiles it extends, and where each came from."""
    where = _display(path)
    resolved = path.resolve()
    if resolved in chain:
        loop = " -> ".join(_display(p) for p in [*chain, resolved])
        raise UsageError(f"profiles extend each other in a cycle: {loop}", where, "break the cycle")
    raw = _read_toml(path)
    _check_keys(raw, where, schema)
    merged: dict[str, Any] = {}
    sources: _Sources = {}
    parent = raw.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise UsageError(
                f"extends must be a string, got {parent!r}",
                where,
                "give a shipped profile name or a path relative to this file",
            )
        parent_path, _ = _resolve_spec(parent, path.parent, where)
        merged, sources = _load_raw(parent_path, [*chain, resolved], schema)
        merged.pop("name", None)  # a child is named after itself, never after its parent
    for key, value in raw.items():
        if key in schema.sections:
            section = dict(merged.get(key, {}))
            for sub, subvalue in value.items():
                section[sub] = subvalue
                sources[f"{key}.{sub}"] = where
            merged[key] = section
        else:
            merged[key] = value
            sources[key] = where
    return merged, sources


def _check_value(qualified: str, value: Any, kind: type, where: str, schema: Schema = VQ) -> Any:
    """The value converted to its field's type, or a UsageError naming what is allowed."""
    if kind == tuple[int, int]:
        ok = isinstance(value, (list, tuple)) and len(value) == 2
        ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        value = tuple(value) if ok else value
    elif kind == tuple[int, ...]:
        ok = isinstance(value, (list, tuple))
        ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        value = tuple(value) if ok else value
    else:
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if kind is float and ok and not math.isfinite(value):
        ok = False
    rule = _RULES.get(qualified)
    if rule is None:
        allowed = _TYPE_NAMES[kind]
    elif kind is str:
        allowed = rule[1]  # every string rule is a list of choices
    else:
        allowed = f"{_TYPE_NAMES[kind]} {rule[1]}"
    if not ok or (rule and not rule[0](value)):
        shown = _shown(value)
        raise UsageError(
            f"{qualified} must be {allowed}, got {shown} ({_toml_type(value)})",
            where,
            f"use {allowed}" + _default_hint(qualified, schema),
        )
    return value


def _toml_type(value: Any) -> str:
    return "array" if isinstance(value, (list, tuple)) else type(value).__name__


def _shown(value: Any) -> str:
    """A value as it would be written in a profile: true, 3, "text", [64, 64]."""
    if isinstance(value, (list, tuple)) and len(value) < 10:
        return "[" + ",".join(_shown(v) for v in value) + "]"  # one shell word: --set k=[4,4]
    return toml_value(value) if isinstance(value, (bool, int, float, str)) else repr(value)


def _default_hint(qualified: str, schema: Schema) -> str:
    section, _, key = qualified.partition(".")
    if section not in schema.sections:
        return ""
    default = getattr(schema.sections[section](), key)
    # Every string default is a bare word, which --set takes without shell-unfriendly quotes.
    shown = default if isinstance(default, str) else _shown(default)
    return f", e.g. --set {qualified}={shown} (the default)"


def _build(
    raw: Mapping[str, Any], name: str, sources: Mapping[str, str], source: str, schema: Schema
) -> Any:
    if "extends" in raw:
        raise UsageError(
            "'extends' is not resolved here", source, "load the file with load_profile"
        )
    _check_keys(raw, source, schema)
    top = {}
    for key in ("name", "description"):
        value = raw.get(key, name if key == "name" else "")
        top[key] = _check_value(key, value, str, sources.get(key, source))
    sections = {}
    for section, cls in schema.sections.items():
        given = raw.get(section, {})
        values = {
            key: _check_value(
                f"{section}.{key}",
                given[key],
                kind,
                sources.get(f"{section}.{key}", source),
                schema,
            )
            for key, kind in _field_types(section, schema).items()
            if key in given
        }
        sections[section] = cls(**values)
    if "data" in sections:
        sections["data"] = _check_data(sections["data"], sources, source)
    _check_consistency(sections, source)
    return schema.root(name=top["name"], description=top["description"], **sections)


def _check_consistency(sections: Mapping[str, Any], source: str) -> None:
    """Rules that tie two keys of a section together."""
    model = sections.get("model")
    if (
        isinstance(model, ModelConfig)
        and model.quantizer == "fsq"
        and model.gradient != ("straight-through")
    ):
        raise UsageError(
            f'model.gradient = "{model.gradient}" is for quantizer = "vq"; FSQ rounds each '
            "channel, straight through",
            source,
            'leave model.gradient at "straight-through" with quantizer = "fsq"',
        )
    data = sections.get("data")
    if isinstance(model, ModelConfig) and isinstance(data, DataConfig):
        factor = model.downsample
        if any(side % factor for side in data.image_size):
            size = "x".join(map(str, data.image_size))
            raise UsageError(
                f"data.image_size {size} is not a multiple of model.downsample ({factor}) "
                "on each side",
                source,
                f"choose sides that are multiples of {factor}, e.g. "
                f"{max(factor, 32 // factor * factor)}x{max(factor, 32 // factor * factor)}",
            )
    prior = sections.get("prior")
    if isinstance(prior, PriorConfig) and prior.width % prior.heads:
        raise UsageError(
            f"prior.heads ({prior.heads}) must divide prior.width ({prior.width})",
            source,
            "choose a width that is a multiple of heads, e.g. width 192 with 4 heads",
        )


def _check_data(data: DataConfig, sources: Mapping[str, str], source: str) -> DataConfig:
    """The [data] keys that depend on each other; a folder's path made absolute."""
    if data.dataset == "folder":
        if not data.path:
            raise UsageError(
                'data.path is missing: dataset = "folder" needs the image folder',
                sources.get("data.dataset", source),
                'add path = "photos" under [data], or --set data.path=photos',
            )
        if data.scale != 1.0 and data.resize != "native-crop":
            raise UsageError(
                f'data.scale is for resize = "native-crop"; "{data.resize}" fits each image '
                "to data.image_size whatever its size",
                sources.get("data.scale", source),
                'remove data.scale, or set data.resize = "native-crop"',
            )
        # Resolved once, here, so that the run's profile.toml names the folder from anywhere.
        return dataclasses.replace(data, path=os.path.abspath(os.path.expanduser(data.path)))
    for key, default in (("path", ""), ("image_size", CIFAR10_SIZE), ("scale", 1.0)):
        if getattr(data, key) != default:
            raise UsageError(
                f'data.{key} is for dataset = "folder"; CIFAR-10 images are 32x32',
                sources.get(f"data.{key}", source),
                f'remove data.{key}, or set data.dataset = "folder"',
            )
    return data


def profile_from_dict(raw: Mapping[str, Any], name: str, source: str) -> Profile:
    """Validate a nested mapping (as TOML gives it) into a Profile.

    `name` is used when `raw` has no `name` key; `source` is named in errors. Missing keys take
    their defaults; unknown keys, wrong types and out-of-range values raise UsageError.
    """
    model = raw.get("model")
    if isinstance(model, Mapping) and "weight_norm" not in model:
        # Stored before `weight_norm` was a key of its own: weight norm came with kaiming_init.
        raw = {**raw, "model": {**model, "weight_norm": bool(model.get("kaiming_init", True))}}
    return cast(Profile, _build(raw, name, {}, source, VQ))


def prior_profile_from_dict(raw: Mapping[str, Any], name: str, source: str) -> PriorProfile:
    """`profile_from_dict` for a prior profile."""
    return cast(PriorProfile, _build(raw, name, {}, source, PRIOR))


def _parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value` -> ("section.key", value); the value is TOML, else a bare string."""
    where = f"--set {text}"
    key, sep, value_text = text.partition("=")
    key = key.strip()
    parts = key.split(".")
    valid_key = (len(parts) == 2 and all(parts)) or key in ("name", "description")
    if not sep or not valid_key:
        raise UsageError(
            f"malformed override '{text}'",
            where,
            "write it as section.key=value, e.g. --set train.steps=1000",
        )
    try:
        value = loads_toml(f"v = {value_text.strip()}")["v"]
    except TOMLDecodeError:
        value = value_text.strip()  # a bare word such as cosine or cuda:1
    return key, value


def _apply_overrides(
    raw: dict[str, Any], sources: _Sources, overrides: Sequence[str], schema: Schema
) -> None:
    for text in overrides:
        key, value = _parse_override(text)
        where = f"--set {text}"
        if "." not in key:
            raw[key] = value
            sources[key] = where
            continue
        section, sub = key.split(".")
        if section not in schema.sections:
            names = list(schema.sections)
            raise UsageError(
                f"unknown section '{section}' in '{key}'",
                where,
                f"allowed sections are {', '.join(names)}" + _suggest(section, names),
            )
        allowed = sorted(_field_types(section, schema))
        if sub not in allowed:
            raise UsageError(
                f"unknown key '{sub}' in [{section}]",
                where,
                f"allowed keys are {', '.join(allowed)}" + _suggest(sub, allowed),
            )
        raw[section] = {**raw.get(section, {}), sub: value}
        sources[key] = where


def _load(spec: str | Path, overrides: Sequence[str], want: Schema | None) -> Any:
    where = f"--profile {spec}"
    path, default_name = _resolve_spec(str(spec), Path.cwd(), where, want)
    schema = _kind_of(path, [])
    if want is not None and schema is not want:
        example = "prior-small" if want is PRIOR else "smoke"
        raise UsageError(
            f"'{spec}' is a {schema.kind} profile, for vqtool {schema.command}",
            where,
            f"vqtool {want.command} takes a {want.kind} profile, e.g. {example} "
            "(see: vqtool profiles)",
        )
    raw, sources = _load_raw(path, [], schema)
    _apply_overrides(raw, sources, overrides, schema)
    return _build(raw, default_name, sources, _display(path), schema)


def load_profile(spec: str | Path, overrides: Sequence[str] = ()) -> Profile:
    """Load a shipped profile by name, or a TOML file by path, then apply `--set` overrides.

    `spec` is a path when it ends in .toml, holds a path separator or names an existing file.
    """
    return cast(Profile, _load(spec, overrides, VQ))


def load_prior_profile(spec: str | Path, overrides: Sequence[str] = ()) -> PriorProfile:
    """`load_profile` for a prior profile (a [prior] section, or extending a profile with one)."""
    return cast(PriorProfile, _load(spec, overrides, PRIOR))


def load_any_profile(spec: str | Path) -> AnyProfile:
    """A profile of either kind, as its file says."""
    return cast(AnyProfile, _load(spec, (), None))


def schema_of(p: AnyProfile) -> Schema:
    return PRIOR if isinstance(p, PriorProfile) else VQ


def with_overrides(p: Any, overrides: Sequence[str]) -> Any:
    """A copy of `p` with `section.key=value` overrides applied and validated (e.g. --resume)."""
    schema = schema_of(p)
    raw = profile_to_dict(p)
    sources: _Sources = {}
    _apply_overrides(raw, sources, overrides, schema)
    return _build(raw, p.name, sources, f"profile '{p.name}'", schema)


def profile_to_dict(p: AnyProfile) -> dict[str, Any]:
    """Nested plain dict: name, description and one dict per section."""
    return dataclasses.asdict(p)


def profile_to_toml(p: AnyProfile) -> str:
    """The full resolved profile as TOML that `load_profile` reads back into an equal Profile."""
    command = "vqtool train --profile" if schema_of(p) is VQ else "vqtool prior RUN --profile"
    header = f"# Resolved vqtool profile; repeat the run with: {command} <this file>\n"
    return header + dumps_toml(profile_to_dict(p))
