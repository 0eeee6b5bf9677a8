"""Loading a prior run: the transformer rebuilt from its checkpoint's own profile, and what it
remembers of its VQ run (VQFacts)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from vqtool.checkpoint import (
    PRIOR_FORMAT,
    load_checkpoint,
)
from vqtool.codes.vqc import MAX_STAGES
from vqtool.errors import UsageError, VqtoolError, WorkError
from vqtool.models.config import DOWNSAMPLE, DOWNSAMPLES, PriorConfig
from vqtool.models.exact_prior import ExactPrior
from vqtool.models.transformer import CodePrior
from vqtool.prior.coding_model import CodingModel, coding_model_for
from vqtool.profiles import (
    PriorProfile,
    prior_profile_from_dict,
)
from vqtool.runs import RunDir

PRIOR_DIR = "prior"  # P defaults to R/prior


@dataclass(frozen=True)
class VQFacts:
    """What a prior remembers of its VQ run: enough to check and to decode what it samples."""

    fingerprint: str
    num_embeddings: int
    embedding_dim: int
    image_size: tuple[int, int]  # (H, W) of the images; codes are (H / f, W / f)
    class_names: tuple[str, ...]  # the dataset's labels; empty when it has none
    checkpoint: str  # where R's checkpoint was when P was made
    stages: int = 1  # residual stages of R's codes the prior models, stage after stage
    downsample: int = DOWNSAMPLE  # R's model.downsample: its grid is image_size / this

    @property
    def grid(self) -> tuple[int, int]:
        return self.image_size[0] // self.downsample, self.image_size[1] // self.downsample

    @property
    def tokens(self) -> int:
        """The prior's vocabulary: K codes of each stage."""
        return self.num_embeddings * self.stages

    @property
    def token_grid(self) -> tuple[int, int]:
        """The grid the prior runs over: the stages' grids one under the other."""
        return self.grid[0] * self.stages, self.grid[1]

    def as_dict(self) -> dict[str, Any]:
        # one-stage priors of factor-4 runs unchanged
        stages = {"stages": self.stages} if self.stages > 1 else {}
        factor = {"downsample": self.downsample} if self.downsample != DOWNSAMPLE else {}
        return (
            stages
            | factor
            | {
                "fingerprint": self.fingerprint,
                "num_embeddings": self.num_embeddings,
                "embedding_dim": self.embedding_dim,
                "image_size": list(self.image_size),
                "class_names": list(self.class_names),
                "checkpoint": self.checkpoint,
            }
        )

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> VQFacts:
        return cls(
            str(raw["fingerprint"]),
            int(raw["num_embeddings"]),
            int(raw["embedding_dim"]),
            (int(raw["image_size"][0]), int(raw["image_size"][1])),
            tuple(str(n) for n in raw["class_names"]),
            str(raw["checkpoint"]),
            _stages(raw.get("stages", 1)),
            _downsample(raw.get("downsample", DOWNSAMPLE)),
        )


def model_grid(config: PriorConfig, vq: VQFacts) -> tuple[int, int]:
    """The grid a prior's transformer runs over: its window's (prior.window), or the VQ run's
    whole grid, each stage's one under the other."""
    if config.window == (0, 0):
        return vq.token_grid
    return config.window[0] * vq.stages, config.window[1]


def _downsample(value: Any) -> int:
    if value not in DOWNSAMPLES or isinstance(value, bool):
        raise ValueError(f"downsample {str(value)[:20]} is not one of {DOWNSAMPLES}")
    return int(value)


class LoadedPrior(NamedTuple):
    model: CodePrior  # eval mode
    profile: PriorProfile
    step: int
    fingerprint: str  # the prior checkpoint's
    vq: VQFacts
    path: Path  # the checkpoint file
    coding: CodingModel | None = None  # its exact coding model (load_coding_prior)

    @property
    def vq_fingerprint(self) -> str:
        return self.vq.fingerprint

    @property
    def exact(self) -> ExactPrior | None:
        return None if self.coding is None else self.coding.model

    @property
    def exact_fingerprint(self) -> str | None:
        return None if self.coding is None else self.coding.fingerprint


def load_prior(path: str | Path, device: str | torch.device = "cpu") -> LoadedPrior:
    """Rebuild a prior from its checkpoint's own profile and VQ facts; never runs code."""
    files = RunDir.with_checkpoint(path)
    payload = load_checkpoint(files.checkpoint, fmt=PRIOR_FORMAT)
    try:
        raw = payload["profile"]
        profile = prior_profile_from_dict(raw, raw.get("name", "prior"), str(files.checkpoint))
        vq = VQFacts.from_dict(payload["vq"])
        if tuple(payload["model"]["head.weight"].shape[:1]) != (vq.tokens,):
            raise ValueError(f"its weights do not predict {vq.tokens} tokens")
        model = CodePrior(profile.prior, vq.tokens, model_grid(profile.prior, vq), vq.stages)
        model.load_state_dict(payload["model"])
        step = int(payload["step"])
    except (KeyError, IndexError, RuntimeError, AttributeError, TypeError, ValueError) as exc:
        raise WorkError(
            f"the checkpoint does not describe a prior this vqtool can build: {exc}",
            files.checkpoint,
            "use a checkpoint written by this version of vqtool",
        ) from exc
    except UsageError as exc:
        raise WorkError(exc.what, files.checkpoint, "the checkpoint's profile is invalid") from exc
    model.to(device).eval()
    return LoadedPrior(model, profile, step, str(payload["fingerprint"]), vq, files.checkpoint)


def load_coding_prior(path: str | Path) -> LoadedPrior:
    """The prior run (or checkpoint) at `path`, on the CPU, where entropy coding runs, with its
    exact coding model (derived and stored in the run folder the first time)."""
    prior = load_prior(path, "cpu")
    if prior.model.config.conditional:
        return prior  # coding refuses it by name (entropy.check_prior)
    files = RunDir.at(prior.path.parent)
    coding = coding_model_for(files, prior.model, prior.fingerprint, prior.vq.fingerprint)
    return prior._replace(coding=coding)


def find_prior(vq_run: str | Path, fingerprint: str) -> Path | None:
    """The prior run inside VQ run `vq_run` (a run folder or its checkpoint) whose checkpoint
    has `fingerprint`: R/prior, its default place, first, then R's other subfolders in name
    order; None when none has it. Folders whose checkpoint is not a readable prior's are
    passed over."""
    folder = RunDir.with_checkpoint(vq_run).path
    try:
        others = sorted(p for p in folder.iterdir() if p.is_dir() and p.name != PRIOR_DIR)
    except OSError:
        others = []
    for candidate in [folder / PRIOR_DIR, *others]:
        files = RunDir.at(candidate)
        # profile.toml says what a run is without loading its checkpoint (a VQ run's is larger)
        if not files.has_checkpoint() or (files.profile.is_file() and files.kind() != "prior"):
            continue
        try:
            payload = load_checkpoint(files.checkpoint, fmt=PRIOR_FORMAT)
        except VqtoolError:
            continue
        if payload.get("fingerprint") == fingerprint:
            return candidate
    return None


def _stages(value: object) -> int:
    """A checkpoint's stage count, refused (ValueError: a damaged checkpoint) outside what a
    code file holds, before a model of that size is built."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_STAGES:
        raise ValueError(f"stages {str(value)[:20]} is not an integer in 1..{MAX_STAGES}")
    return value
