"""Run setup and resume, shared by both kinds of run (a VQ run and a prior run).

Which profile a request means (`resolve_profile`), and how a run starts or picks up from its
checkpoint once it holds the lock (`begin_run`): the same rules for `vqtool train` and `vqtool
prior`. --resume continues from the folder's checkpoint and its profile; only [train] may change.
A folder without a checkpoint starts fresh, so a job script can always pass --resume.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from vqtool.checkpoint import load_checkpoint
from vqtool.errors import UsageError
from vqtool.events import TrainCallback, TrainEvent
from vqtool.profiles import profile_to_dict, profile_to_toml, with_overrides
from vqtool.runs import RunDir


class RunKind(NamedTuple):
    """What differs between the two kinds of run when they start or resume."""

    noun: str  # "run" or "prior", in messages
    fmt: str  # the checkpoint's format name
    frozen: tuple[str, ...]  # profile sections a resume may not change
    load: Callable[..., Any]  # (spec, overrides) -> profile
    from_dict: Callable[[Mapping[str, Any], str, str], Any]  # (raw, name, source) -> profile
    example: str  # how to name a profile, for the error without one


class Resumable(Protocol):
    """A trainer that `begin_run` can restore."""

    step: int

    def restore(self, payload: dict[str, Any]) -> None: ...


def resolve_profile(
    kind: RunKind, files: RunDir, spec: str | None, overrides: Sequence[str], resume: bool
) -> Any:
    """The profile a request means in `files`' folder, with the resume rules."""
    files.refuse_overwrite(resume)
    if resume and files.checkpoint.exists():
        raw = load_checkpoint(files.checkpoint, fmt=kind.fmt)["profile"]
        saved = kind.from_dict(raw, raw.get("name", kind.noun), str(files.checkpoint))
        base = kind.load(spec) if spec else saved
        profile = with_overrides(base, overrides)
        _refuse_frozen_change(kind, saved, profile, files)
        return profile
    if spec is None:
        if not files.profile.is_file():
            raise UsageError("no profile given", "--profile", kind.example)
        spec = str(files.profile)
    return kind.load(spec, overrides)


def _refuse_frozen_change(kind: RunKind, saved: Any, new: Any, files: RunDir) -> None:
    before, after = profile_to_dict(saved), profile_to_dict(new)
    changed = [
        f"{section}.{key}"
        for section in kind.frozen
        for key, value in after[section].items()
        if before[section].get(key) != value
    ]
    if changed:
        raise UsageError(
            f"--resume cannot change {', '.join(changed)}",
            files.checkpoint,
            f"only [train] keys may change on resume; start a new {kind.noun} for a new model "
            "or data",
        )


def saved_payload(kind: RunKind, files: RunDir, resume: bool) -> dict[str, Any] | None:
    """The checkpoint a run continues from: with --resume, when the folder holds one."""
    if resume and files.checkpoint.exists():
        return load_checkpoint(files.checkpoint, fmt=kind.fmt)
    return None


def begin_run(
    kind: RunKind,
    trainer: Resumable,
    payload: dict[str, Any] | None,
    profile: Any,
    files: RunDir,
    writer: bool,
    notify: TrainCallback,
    resume: bool,
) -> bool:
    """Restore `trainer` from `payload`, say so, and lay out the run's files (rank 0 alone).
    A `resume` without a checkpoint says that it starts fresh: a run stopped before its first
    checkpoint leaves only its profile and metrics.

    False when the run is already at its last step: nothing to train, and the files are left as
    they are (profile.toml keeps the steps the checkpoint was trained to).
    """
    total = profile.train.steps
    if payload is not None:
        trainer.restore(payload)
        step = trainer.step
        if step >= total:
            _note(
                notify,
                step,
                total,
                f"the {kind.noun} is already at step {step} (train.steps = {total}): nothing "
                "to train; raise train.steps to continue",
            )
            return False
        _note(notify, step, total, f"resuming from step {step} of {total}")
    elif resume:
        logged = ", replacing the metrics it logged" if files.metrics.exists() else ""
        message = f"no checkpoint in {files.path}: starting a new {kind.noun} from step 0{logged}"
        _note(notify, 0, total, message)
    if writer:
        if payload is not None:
            files.truncate_metrics(trainer.step)
        else:
            files.reset_metrics()
        files.write_profile(profile_to_toml(profile))
    return True


def _note(notify: TrainCallback, step: int, total: int, message: str) -> None:
    notify(
        TrainEvent("note", step, total, {"kind": "note", "step": step, "message": message}, message)
    )
