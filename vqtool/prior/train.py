"""Training a prior over codes, the second kind of run: a prior run P learns p(codes) for a
VQ run R.

P is a run folder like R (vqtool.runs.RunDir): profile.toml, metrics.jsonl, checkpoint.pt
(format "vqtool-prior", holding R's fingerprint), eval-test.json, the lock. Its data are R's
codes of R's dataset, encoded once with R's checkpoint and kept in P as ordinary code files
(`codes-train.vqc`, `codes-test.vqc`); a labelled dataset stores each image's class as the
first part of its name (`cat/train-00042`), so the code files carry the labels too.

Training follows the VQ loop's rules: the data order of epoch e is drawn from (seed, e), every
RNG state is in the checkpoint, so a resumed run is bit-identical; SIGINT/SIGTERM save a
checkpoint first; under torchrun each process takes its slice of the global batch.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from vqtool import distributed
from vqtool.checkpoint import (
    PRIOR_FORMAT,
    restore_training,
    save_checkpoint,
    training_state,
)
from vqtool.data.datasets import dataset_classes
from vqtool.device import Placement, describe_device, describe_precision, resolve_placement
from vqtool.errors import UsageError
from vqtool.events import TrainCallback, TrainEvent
from vqtool.models.transformer import CodePrior
from vqtool.prior.data import (
    PriorData,
    centre_windows,
    crop_tokens,
    prepare_codes,
    random_corners,
)
from vqtool.prior.evaluate import evaluate_codes
from vqtool.prior.load import PRIOR_DIR, VQFacts, load_coding_prior, model_grid
from vqtool.process import StopSignals
from vqtool.profiles import (
    PriorProfile,
    load_prior_profile,
    prior_profile_from_dict,
    profile_to_dict,
)
from vqtool.resume import RunKind, begin_run, resolve_profile, saved_payload
from vqtool.runs import RunDir
from vqtool.schedule import DataOrder, StepClock, scheduled_rate
from vqtool.threads import saved_threads, training_threads
from vqtool.vq.load import load_model


class PriorResult(NamedTuple):
    run_dir: Path
    step: int
    last_record: dict[str, Any]
    elapsed_s: float
    model: CodePrior


def default_prior_dir(vq_run: Path) -> Path:
    """P when none is given: `R/prior` beside R's checkpoint; for a ready-trained R (read-only),
    `runs/<name>-prior-<YYYYmmdd-HHMMSS>`."""
    run = RunDir.with_checkpoint(vq_run)
    if run.read_only:
        return RunDir.default(f"{run.path.name}-prior").path
    return run.path / PRIOR_DIR


# How a prior run starts and resumes (vqtool.resume holds the rules both kinds of run share).
PRIOR_RUN = RunKind(
    "prior",
    PRIOR_FORMAT,
    ("prior",),
    load_prior_profile,
    prior_profile_from_dict,
    "pass --profile prior-small (see vqtool profiles)",
)


def resolve_prior_run(
    vq_run: Path,
    profile_spec: str | None,
    overrides: list[str],
    run_dir: Path | None,
    resume: bool,
) -> tuple[PriorProfile, Path]:
    """The profile and folder a `vqtool prior` request means; the resume rules of vqtool.resume.
    The folder defaults to R/prior."""
    folder = run_dir if run_dir is not None else default_prior_dir(vq_run)
    return resolve_profile(PRIOR_RUN, RunDir.at(folder), profile_spec, overrides, resume), folder


class PriorTrainer:
    """One prior run: the transformer, its optimizer, R's codes and P's files."""

    def __init__(
        self,
        profile: PriorProfile,
        run_dir: Path,
        vq: VQFacts,
        train: PriorData,
        test: PriorData,
        placement: Placement,
        callback: TrainCallback,
    ) -> None:
        self.profile = profile
        self.files = RunDir.at(run_dir)
        self.vq = vq
        self.placement = placement
        self.callback = callback
        self.is_writer = placement.rank == 0
        cfg = profile.train
        if profile.prior.conditional and train.labels is None:
            raise UsageError(
                "prior.conditional needs a dataset with labels",
                "--set prior.conditional",
                "set prior.conditional=false for an unlabelled dataset",
            )
        if profile.prior.conditional and len(vq.class_names) > profile.prior.num_classes:
            raise UsageError(
                f"the dataset has {len(vq.class_names)} classes but prior.num_classes is "
                f"{profile.prior.num_classes}",
                "--set prior.num_classes",
                f"use --set prior.num_classes={len(vq.class_names)}",
            )
        window = profile.prior.window
        if window != (0, 0) and (window[0] > vq.grid[0] or window[1] > vq.grid[1]):
            raise UsageError(
                f"prior.window {window[0]}x{window[1]} is larger than the codes' grid "
                f"{vq.grid[0]}x{vq.grid[1]} (HxW)",
                "--set prior.window",
                f"choose at most {vq.grid[0]}x{vq.grid[1]}, or [0, 0] for the whole grid",
            )
        self.window = None if window in ((0, 0), vq.grid) else window
        if self.window is not None:
            test = centre_windows(test, vq.stages, self.window)
        device = placement.device
        self.codes = train.codes.to(device)
        self.order = DataOrder(
            self.codes.shape[0],
            cfg.batch_size,
            cfg.seed,
            True,
            device,
            placement.rank,
            placement.world_size,
            key="train.batch_size",
            what="training code grid",
        )
        self.labels = (
            train.labels.to(device)
            if profile.prior.conditional and train.labels is not None
            else None
        )
        self.test = test
        torch.manual_seed(cfg.seed)
        grid = model_grid(profile.prior, vq)
        self.model = CodePrior(profile.prior, vq.tokens, grid, vq.stages).to(device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
        self.forward_model: torch.nn.Module = self.model
        self.step = 0
        self.elapsed_s = 0.0

    def restore(self, payload: dict[str, Any]) -> None:
        self.step, self.elapsed_s = restore_training(self.model, self.optimizer, payload)

    def checkpoint_payload(self) -> dict[str, Any]:
        return {
            **training_state(self.model, self.optimizer.state_dict(), self.step, self.elapsed_s),
            "profile": profile_to_dict(self.profile),
            "data": self.order.position(self.step),
            "world_size": self.placement.world_size,
            "threads": saved_threads(self.placement.device),
            "vq": self.vq.as_dict(),
        }

    def save(self) -> None:
        if self.is_writer:
            save_checkpoint(self.files.checkpoint, self.checkpoint_payload(), PRIOR_FORMAT)
            self.callback(TrainEvent("checkpoint", self.step, self.profile.train.steps, {}))

    def train_step(self, index: Tensor) -> Tensor:
        """One optimizer step on the grids at `index`; returns the bits per code (device)."""
        for group in self.optimizer.param_groups:
            group["lr"] = scheduled_rate(self.profile.train, self.step)
        codes = self.codes[index]
        if self.window is not None:
            codes = crop_tokens(codes, self.vq.stages, self.window, self._corners(codes.device))
        labels = self.labels[index] if self.labels is not None else None
        dtype = self.placement.autocast_dtype
        device_type = self.placement.device.type
        with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
            logits = self.forward_model(codes, labels)
        loss = F.cross_entropy(logits.float().transpose(1, 2), codes.flatten(1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach() / math.log(2.0)

    def _corners(self, device: torch.device) -> Tensor:
        """This step's window corners for this process's grids: drawn for the global batch
        from (seed, step), then sliced like the batch, so that any number of processes and a
        resumed run cut the same windows."""
        assert self.window is not None
        generator = torch.Generator().manual_seed(self.profile.train.seed * 1_000_003 + self.step)
        every = random_corners(self.profile.train.batch_size, self.vq.grid, self.window, generator)
        local = self.order.local_batch
        return every[self.placement.rank * local : (self.placement.rank + 1) * local].to(device)

    def log_record(self, total: Tensor, count: int, window_s: float) -> dict[str, Any]:
        total = distributed.all_reduce_sum(total) / self.placement.world_size
        cfg = self.profile.train
        return {
            "kind": "train",
            "step": self.step,
            "bits_per_code": float(total) / count,
            "bits_per_image": float(total) / count * self.model.length,
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "images_per_s": count * cfg.batch_size / window_s if window_s > 0 else 0.0,
            "elapsed_s": self.elapsed_s,
            "world_size": self.placement.world_size,
        }

    def log_window(self, total: Tensor, clock: StepClock) -> dict[str, Any]:
        """Write and report the record of the window that just closed; start the next one."""
        record = self.log_record(total, *clock.close())
        self.write_metric(record)
        self.callback(TrainEvent("log", self.step, self.profile.train.steps, record))
        total.zero_()
        return record

    def write_metric(self, record: dict[str, Any]) -> None:
        if self.is_writer:
            self.files.append_metric(record)

    def evaluate_test(self) -> None:
        if not self.is_writer:
            return
        metrics = evaluate_codes(self.model, self.test, self.profile.prior.conditional)
        record = {"kind": "eval", "step": self.step, "split": "test", **metrics}
        self.write_metric(record)
        self.callback(TrainEvent("eval", self.step, self.profile.train.steps, record))

    def wrap_for_processes(self) -> None:
        if self.placement.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.placement.device] if self.placement.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(self.model, device_ids=device_ids)

    def run(self, stop: StopSignals) -> PriorResult:
        cfg = self.profile.train
        self.wrap_for_processes()
        self.model.train()
        total = torch.zeros((), device=self.placement.device)
        last: dict[str, Any] = {}
        clock = StepClock(cfg.log_every, cfg.steps, self.placement.device)
        while self.step < cfg.steps:
            if distributed.any_rank(stop.received is not None, self.placement.device):
                self.save()
                raise stop.interrupted()
            tick = time.perf_counter()
            total += self.train_step(self.order.indices(self.step))
            self.step += 1
            due = clock.finish(self.step, tick)
            self.elapsed_s += clock.spent
            if due:
                last = self.log_window(total, clock)
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                self.evaluate_test()
                self.model.train()
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save()
        return PriorResult(self.files.path, self.step, last, self.elapsed_s, self.model)


def train_prior(
    vq_run: Path,
    profile: PriorProfile,
    run_dir: Path,
    data_dir: Path,
    *,
    resume: bool = False,
    callback: TrainCallback | None = None,
) -> PriorResult:
    """Train (or continue) a prior over the codes of VQ run `vq_run`; files land in `run_dir`.

    Raises UsageError when `run_dir` holds a checkpoint and `resume` is False, and Interrupted
    after a signal (the checkpoint saved first).
    """
    files = RunDir.at(run_dir)
    files.refuse_overwrite(resume)
    world = distributed.world_from_env()
    cfg = profile.train
    # 'auto' stays fp32 on the CPU: the prior's CPU figures (and its speed) were measured so.
    placement = resolve_placement(cfg.device, cfg.precision, world, cpu_bf16=False)
    vq = load_model(vq_run, placement.device)  # encodes the dataset where training runs
    writer = world.rank == 0
    notify = callback if callback is not None and writer else (lambda event: None)
    lock = files.lock("vqtool prior") if writer else contextlib.nullcontext()
    with distributed.process_group(world, placement.device), lock, StopSignals() as stop:
        payload = saved_payload(PRIOR_RUN, files, resume)
        if payload is not None and payload["vq"]["fingerprint"] != vq.fingerprint:
            raise UsageError(
                "this prior was trained on the codes of another VQ checkpoint",
                run_dir,
                "resume it with the VQ run it was made for, or start a new prior",
            )

        def codes_progress(split: str, done: int, total: int) -> None:
            notify(TrainEvent("codes", done, total, {"split": split}))

        if writer:  # the others wait, then read the code files rank 0 wrote
            data, image_size, stages = prepare_codes(vq, files, data_dir, codes_progress)
        distributed.barrier()
        if not writer:
            data, image_size, stages = prepare_codes(vq, files, data_dir)
        facts = VQFacts(
            vq.fingerprint,
            vq.model.config.num_embeddings,
            vq.model.config.embedding_dim,
            image_size,
            dataset_classes(vq.profile.data),
            str(vq.path.resolve()),
            stages,
            vq.model.config.downsample,
        )
        trainer = PriorTrainer(
            profile, run_dir, facts, data["train"], data["test"], placement, notify
        )
        if not begin_run(PRIOR_RUN, trainer, payload, profile, files, writer, notify, resume):
            return PriorResult(files.path, trainer.step, {}, trainer.elapsed_s, trainer.model)
        saved = payload.get("threads") if payload is not None else None
        with training_threads(placement.device, cfg.threads, saved) as reason:
            start = _describe(placement, trainer, reason)
            notify(TrainEvent("start", trainer.step, cfg.steps, start))
            result = trainer.run(stop)
        notify(TrainEvent("end", result.step, cfg.steps, result.last_record))
        if writer:  # files coded with it decode on any machine: derive it once, here
            load_coding_prior(files.path)
        return result


def _describe(placement: Placement, trainer: PriorTrainer, threads_reason: str) -> dict[str, Any]:
    return {
        "device": describe_device(placement, threads_reason),
        "precision": describe_precision(placement),
        "world_size": placement.world_size,
        "train_images": int(trainer.codes.shape[0]),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "run_dir": str(trainer.files.path),
    }
