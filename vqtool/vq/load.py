"""Loading a VQ run's model: rebuilt from its checkpoint's own profile, never from weight shapes."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from vqtool.checkpoint import load_checkpoint
from vqtool.errors import UsageError, WorkError
from vqtool.models.vqvae import VQVAE, build_model
from vqtool.profiles import Profile, profile_from_dict
from vqtool.runs import RunDir


class LoadedModel(NamedTuple):
    model: VQVAE
    profile: Profile
    step: int
    fingerprint: str
    train_variance: float
    path: Path  # the checkpoint file

    @property
    def run_dir(self) -> RunDir:
        return RunDir.with_checkpoint(self.path)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model from a checkpoint's own profile (never from weight shapes).

    The model comes back in eval mode.
    """
    run = RunDir.with_checkpoint(path)
    payload = load_checkpoint(run.checkpoint)
    checkpoint_path = run.checkpoint
    try:
        profile = profile_from_dict(
            payload["profile"], payload["profile"].get("name", "checkpoint"), str(checkpoint_path)
        )
        model = build_model(profile.model)
        model.load_state_dict(payload["model"])
    except (KeyError, RuntimeError, AttributeError, TypeError) as exc:
        raise WorkError(
            f"the checkpoint does not describe a model this vqtool can build: {exc}",
            checkpoint_path,
            "use a checkpoint written by this version of vqtool",
        ) from exc
    except UsageError as exc:
        raise WorkError(exc.what, checkpoint_path, "the checkpoint's profile is invalid") from exc
    model.to(device).eval()
    return LoadedModel(
        model,
        profile,
        int(payload["step"]),
        str(payload["fingerprint"]),
        float(payload["train_variance"]),
        checkpoint_path,
    )
