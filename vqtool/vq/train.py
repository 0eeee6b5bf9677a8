"""The training loop. It reports through a callback and never prints.

Everything a run needs to continue bit-identically lives in its checkpoint: model and
optimizer state, the step, every RNG state, and the data position. The data order of epoch e
is a permutation drawn from (seed, e) alone, so a resumed run visits the same batches.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from vqtool import distributed
from vqtool.checkpoint import (
    FORMAT,
    restore_training,
    save_checkpoint,
    training_state,
)
from vqtool.data.datasets import Crops, ensure_dataset, load_images, load_training_images
from vqtool.device import Placement, describe_device, describe_precision, resolve_placement
from vqtool.errors import UsageError, WorkError, first_line
from vqtool.events import TrainCallback, TrainEvent
from vqtool.models.vqvae import VQVAE, build_model
from vqtool.process import StopSignals
from vqtool.profiles import (
    Profile,
    load_profile,
    profile_from_dict,
    profile_to_dict,
)
from vqtool.resume import RunKind, begin_run, resolve_profile, saved_payload
from vqtool.runs import RunDir
from vqtool.schedule import DataOrder, StepClock, drawn_stages, scheduled_rate
from vqtool.threads import saved_threads, training_threads
from vqtool.vq.evaluate import evaluate_images
from vqtool.vq.graphs import GraphedStep, learning_rates_as_floats, set_learning_rate
from vqtool.vq.guard import CollapseGuard, agree
from vqtool.vq.speed import compile_for_training


class TrainResult(NamedTuple):
    run_dir: Path
    step: int
    last_record: dict[str, Any]
    elapsed_s: float
    model: VQVAE  # the trained model, still on the training device


# How a VQ run starts and resumes (vqtool.resume holds the rules both kinds of run share).
VQ_RUN = RunKind(
    "run",
    FORMAT,
    ("model", "data"),
    load_profile,
    profile_from_dict,
    "pass --profile NAME or FILE",
)


def resolve_run(
    profile_spec: str | None,
    overrides: list[str],
    run_dir: Path | None,
    resume: bool,
) -> tuple[Profile, Path]:
    """The profile and run folder a `train` request means, with the resume rules
    (vqtool.resume); without --run-dir, a new folder named after the profile and the time."""
    if run_dir is None:
        if resume:
            raise UsageError("--resume needs the run to continue", "--run-dir", "pass --run-dir R")
        if profile_spec is None:
            raise UsageError("no profile given", "--profile", VQ_RUN.example)
        profile = load_profile(profile_spec, overrides)
        return profile, RunDir.default(profile.name).path
    return resolve_profile(VQ_RUN, RunDir.at(run_dir), profile_spec, overrides, resume), run_dir


def pixel_variance(images: Tensor) -> float:
    """Variance of all pixels in [0, 1] units, exact, from a 256-bin histogram of uint8 data."""
    hist = torch.zeros(256, dtype=torch.float64, device=images.device)
    # A bounded copy at a time (16 M values), however many images, or however large a flat
    # store of photos (vqtool.data.photos) is.
    rows = max(1, (1 << 24) // max(1, images[0].numel()))
    for begin in range(0, images.shape[0], rows):
        hist += torch.bincount(images[begin : begin + rows].reshape(-1), minlength=256)
    values = torch.arange(256, dtype=torch.float64, device=hist.device) / 255.0
    n = hist.sum()
    mean = (hist * values).sum() / n
    return float((hist * (values - mean) ** 2).sum() / n)


def learning_rate(profile: Profile, step: int, scale: float) -> float:
    """Base rate x collapse-guard scale x the schedule (vqtool.schedule)."""
    return scheduled_rate(profile.train, step) * scale


class Trainer:
    """One training run: model, optimizer, data and the files of its run folder."""

    def __init__(
        self,
        profile: Profile,
        run_dir: Path,
        images: Tensor,
        placement: Placement,
        callback: TrainCallback,
        test_images: Tensor | None = None,
        crops: Crops | None = None,
    ) -> None:
        self.profile = profile
        self.run_dir = run_dir
        self.files = RunDir.at(run_dir)
        self.placement = placement
        self.callback = callback
        self.images = images
        self.crops = crops  # training windows cut from larger stored images, if any
        self.test_images = test_images
        self.is_writer = placement.rank == 0
        cfg = profile.train
        self.order = DataOrder(
            crops.count if crops is not None else images.shape[0],
            profile.data.batch_size,
            cfg.seed,
            profile.data.shuffle,
            images.device,
            placement.rank,
            placement.world_size,
        )
        self.variance = pixel_variance(images)
        torch.manual_seed(cfg.seed)
        self.model: VQVAE = build_model(profile.model).to(placement.device)
        # channels_last weights: faster cuDNN convolutions. On the CPU only the input goes
        # channels_last (see next_batch): oneDNN reorders weights itself, and channels_last
        # weights under weight norm cost extra copies each step.
        if placement.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
            # Every batch has the same shape: let cuDNN time its kernels once and keep the best.
            torch.backends.cudnn.benchmark = True
        # Any: a **dict of one value type would be checked against every other parameter.
        fused: dict[str, Any] = {"fused": True} if placement.device.type in ("cuda", "cpu") else {}
        self.optimizer = torch.optim.Adam(
            self.model.parameters(),
            lr=cfg.learning_rate,
            amsgrad=cfg.amsgrad,
            **fused,
        )
        # What the training step calls: the model itself, or its DDP wrapper (see `run`).
        self.forward_model: torch.nn.Module = self.model
        # One CUDA process: the whole step recorded as a CUDA graph (vqtool/graphs.py).
        self.graphed: GraphedStep | None = None
        if cfg.cuda_graphs and placement.device.type == "cuda" and placement.world_size == 1:
            self.graphed = GraphedStep(self.optimizer_step, self.optimizer)
        self._graph_failure_told = False
        self.guard = CollapseGuard.for_profile(profile)
        self.step = 0
        self.elapsed_s = 0.0
        self.lr_scale = 1.0

    def restore(self, payload: dict[str, Any]) -> None:
        """Continue from a checkpoint payload: weights, optimizer, step, RNG, clock."""
        self.step, self.elapsed_s = restore_training(self.model, self.optimizer, payload)
        self.lr_scale = float(payload.get("lr_scale", 1.0))
        if self.guard is not None:
            self.guard.resume(payload.get("guard", {}), self.model, self.optimizer)

    def checkpoint_payload(self) -> dict[str, Any]:
        return {
            **training_state(
                self.model,
                learning_rates_as_floats(self.optimizer.state_dict()),
                self.step,
                self.elapsed_s,
            ),
            "profile": profile_to_dict(self.profile),
            "data": self.order.position(self.step),
            "train_variance": self.variance,
            "lr_scale": self.lr_scale,
            "guard": self.guard.state_dict() if self.guard is not None else {},
            "world_size": self.placement.world_size,
            "threads": saved_threads(self.placement.device),
        }

    def save(self) -> None:
        if self.is_writer:
            save_checkpoint(self.files.checkpoint, self.checkpoint_payload())
            self.callback(TrainEvent("checkpoint", self.step, self.profile.train.steps, {}))

    def batch_indices(self, step: int) -> Tensor:
        """This process's slice of the global batch of `step`."""
        return self.order.indices(step)

    def next_batch(self, step: int) -> Tensor:
        indices = self.batch_indices(step)
        if self.crops is not None:
            batch = self.crops(self.images, indices, self.order.epoch(step))
        else:
            batch = self.images[indices]
        x = VQVAE.to_input(batch, self.placement.device)
        if self.placement.device.type in ("cuda", "cpu"):
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.no_grad()
    def init_codebook(self, x: Tensor) -> None:
        """Seed the codebook from the first batch's encoder outputs.

        For codebook_init encoder or kmeans; a no-op once the codebook is initialised.
        """
        if not self.model.quantizer.needs_init():
            return
        z = self.model.latents(x).float()
        self.model.quantizer.init_from_data(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))

    def stages_of_step(self, step: int) -> int:
        """How many residual stages step `step` trains: all, or a draw (vqtool.schedule)."""
        cfg = self.profile.model
        if cfg.stages > 1 and cfg.stage_dropout:
            return drawn_stages(self.profile.train.seed, step, cfg.stages)
        return cfg.stages

    def train_step(self, x: Tensor) -> Tensor:
        """One optimizer step; returns (nmse, vq_loss, perplexity, restarted) as a device tensor."""
        set_learning_rate(self.optimizer, learning_rate(self.profile, self.step, self.lr_scale))
        stages = self.stages_of_step(self.step)
        if self.graphed is not None:
            return self.graphed(x, stages)
        return self.optimizer_step(x, stages)

    def optimizer_step(self, x: Tensor, stages: int) -> Tensor:
        """Forward, backward and update with the first `stages` stages: the part of a step
        that a CUDA graph records (one recording per stage count)."""
        dtype = self.placement.autocast_dtype
        device_type = self.placement.device.type
        # No autocast weight cache on CUDA: a graph cannot record it, and each weight is cast
        # once per step anyway.
        autocast = torch.autocast(
            device_type, dtype=dtype, enabled=dtype is not None, cache_enabled=device_type != "cuda"
        )
        with autocast:
            out = self.forward_model(x, stages)
        # NMSE as in Sonnet and zalando: MSE over the variance of the training pixels.
        nmse = F.mse_loss(out.reconstruction.float(), x) / self.variance
        loss = nmse + out.vq_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return torch.stack(
            [
                nmse.detach(),
                out.vq_loss.detach(),
                out.perplexity.detach(),
                out.restarted,
            ]
        )

    def log_record(self, sums: Tensor, count: int, window_s: float) -> dict[str, Any]:
        # Each process saw its slice of the batch: average the window over processes.
        sums = distributed.all_reduce_sum(sums) / self.placement.world_size
        nmse, vq_loss, perplexity, restarted = (sums / count).tolist()
        record = {
            "kind": "train",
            "step": self.step,
            "nmse": nmse,
            "vq_loss": vq_loss,
            "perplexity": perplexity,
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "images_per_s": (
                count * self.profile.data.batch_size / window_s if window_s > 0 else 0.0
            ),
            "elapsed_s": self.elapsed_s,
            "world_size": self.placement.world_size,
        }
        if restarted > 0:
            record["restarted_codes"] = int(round(restarted * count))
        return record

    def write_metric(self, record: dict[str, Any]) -> None:
        if self.is_writer:
            self.files.append_metric(record)

    def evaluate_test(self) -> None:
        # Evaluation has no collectives: rank 0 alone runs it while the others wait at the
        # next step's all-reduce.
        if self.test_images is None or not self.is_writer:
            return
        metrics = evaluate_images(self.model, self.test_images, self.variance)
        record = {"kind": "eval", "step": self.step, "split": "test", **metrics}
        self.write_metric(record)
        self.callback(TrainEvent("eval", self.step, self.profile.train.steps, record))

    def wrap_for_processes(self) -> None:
        """Under torchrun, average gradients with DDP. The quantizer all-reduces its own EMA
        statistics, so buffers are not broadcast (they are already equal on every rank)."""
        if self.placement.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.placement.device] if self.placement.device.type == "cuda" else None
            # Newer torch renames broadcast_buffers; either way buffers are not re-sent per step.
            params = inspect.signature(DistributedDataParallel.__init__).parameters
            no_sync = (
                "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
            )
            no_buffer_sync: dict[str, Any] = {no_sync: False}
            # Stages left out of a step leave their codebooks without a gradient; only codebooks
            # learnt by their loss (no EMA) are parameters.
            cfg = self.profile.model
            unused = cfg.quantizer == "vq" and cfg.decay == 0 and cfg.stages > 1
            no_buffer_sync["find_unused_parameters"] = unused and cfg.stage_dropout
            # channels_last input gives 1x1 convolutions channels_last weight gradients, which
            # DDP copies into its buckets (a few KB a step) and warns about on every rank.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
            self.forward_model = DistributedDataParallel(
                self.model, device_ids=device_ids, **no_buffer_sync
            )

    def check_collapse(self, record: dict[str, Any]) -> None:
        """The collapse guard: keep this state as the last good one, or go back to that one
        with half the learning rate when this record shows a collapse (vqtool/guard.py)."""
        assert self.guard is not None
        verdict = self.guard.observe(self.step, record)
        if not agree(verdict.restore, self.placement.device):
            self.guard.snapshot(self.model, self.optimizer)
            return
        good_step = self.guard.restore(self.model, self.optimizer)
        if self.graphed is not None:
            self.graphed.reset()  # the optimizer's state tensors were replaced
        self.lr_scale *= self.guard.lr_factor
        note = {
            "kind": "guard",
            "step": self.step,
            "restored_step": good_step,
            "reason": verdict.reason,
            "lr_scale": self.lr_scale,
        }
        self.write_metric(note)
        message = (
            f"collapse guard: {verdict.reason}; restored the state of step {good_step}, "
            f"learning rate x{self.lr_scale:g}"
        )
        self.callback(TrainEvent("note", self.step, self.profile.train.steps, note, message))

    def tell_graph_failure(self) -> None:
        if self.graphed is None or self.graphed.failure is None or self._graph_failure_told:
            return
        self._graph_failure_told = True
        message = f"CUDA graph recording failed ({self.graphed.failure}); training goes on eagerly"
        note = {"kind": "note", "step": self.step, "message": message}
        self.write_metric(note)
        self.callback(TrainEvent("note", self.step, self.profile.train.steps, note, message))

    def should_stop(self, stop: StopSignals) -> bool:
        return distributed.any_rank(stop.received is not None, self.placement.device)

    def run(self, stop: StopSignals) -> TrainResult:
        cfg = self.profile.train
        self.wrap_for_processes()
        if cfg.compile:
            self.forward_model = compile_for_training(self.forward_model)
        self.model.train()
        sums = torch.zeros(4, device=self.placement.device)
        last_record: dict[str, Any] = {}
        clock = StepClock(cfg.log_every, cfg.steps, self.placement.device)
        while self.step < cfg.steps:
            if self.should_stop(stop):
                self.save()
                raise stop.interrupted()
            tick = time.perf_counter()
            x = self.next_batch(self.step)
            if self.step == 0:
                self.init_codebook(x)
            sums += self.train_step(x)
            self.step += 1
            self.tell_graph_failure()
            at_log = clock.finish(self.step, tick)
            self.elapsed_s += clock.spent
            if at_log:
                last_record = self.log_record(sums, *clock.close())
                self.write_metric(last_record)
                self.callback(TrainEvent("log", self.step, cfg.steps, last_record))
                if self.guard is not None:
                    self.check_collapse(last_record)
                sums.zero_()
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                self.evaluate_test()
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save()
        return TrainResult(self.run_dir, self.step, last_record, self.elapsed_s, self.model)


def run_training(
    profile: Profile,
    run_dir: Path,
    data_dir: Path,
    *,
    resume: bool = False,
    callback: TrainCallback | None = None,
    on_download: Callable[[int, int | None], None] | None = None,
    data_origin: str = "",
) -> TrainResult:
    """Train (or continue) a run; files land in `run_dir`. Raises Interrupted after a signal.

    Nothing is written to `run_dir` until training can start: the data is there (downloaded
    when missing; `data_origin` says how `data_dir` was chosen, for the error) and the
    profile fits it.

    `resume` continues from `run_dir/checkpoint.pt` when there is one (see `resolve_run`);
    without it, a folder that already holds a checkpoint is refused (UsageError), as the CLI
    refuses it without --resume.
    Under torchrun every process calls this; rank 0 alone writes files and reports.
    """
    world = distributed.world_from_env()
    placement = resolve_placement(profile.train.device, profile.train.precision, world)
    try:
        return _train(
            profile, run_dir, data_dir, resume, callback, on_download, data_origin, world, placement
        )
    except RuntimeError as exc:
        if world.size == 1:
            raise
        # A peer died or its connection broke mid-step: this step's state is not consistent
        # across processes, so the last periodic checkpoint is the one to keep.
        raise WorkError(
            f"training process lost ({_peer_error(exc)})",
            f"rank {world.rank} of {world.size}",
            "the last checkpoint is intact; rerun the same command with --resume",
        ) from exc


def _peer_error(exc: BaseException) -> str:
    """gloo/nccl's message without its source location and advice: 'Connection reset by peer'."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", first_line(exc, 10_000))
    return text.split(". This is typically")[0][:160]


def _train(
    profile: Profile,
    run_dir: Path,
    data_dir: Path,
    resume: bool,
    callback: TrainCallback | None,
    on_download: Callable[[int, int | None], None] | None,
    data_origin: str,
    world: distributed.World,
    placement: Placement,
) -> TrainResult:
    writer = world.rank == 0
    notify = callback if callback is not None and writer else (lambda event: None)
    files = RunDir.at(run_dir)
    with distributed.process_group(world, placement.device):
        # Whatever can refuse the request comes before the lock, which makes the run folder:
        # a train that cannot start leaves nothing behind.
        RunDir.at(run_dir).refuse_overwrite(resume)
        if writer:
            steps = profile.train.steps

            def decoding(done: int, total: int) -> None:
                notify(TrainEvent("decode", 0, steps, {"done": done, "total": total}))

            need = ("train", "test") if profile.train.eval_every else ("train",)
            for message in ensure_dataset(
                profile.data, data_dir, on_download, decoding, data_origin, need
            ):
                notify(TrainEvent("note", 0, steps, {"kind": "note", "message": message}, message))
        distributed.barrier()
        train = load_training_images(profile.data, data_dir, profile.train.seed)
        images = train.images.to(placement.device)
        test_images = (
            load_images(profile.data, data_dir, "test") if profile.train.eval_every else None
        )
        trainer = Trainer(profile, run_dir, images, placement, notify, test_images, train.crops)
        lock = files.lock() if writer else contextlib.nullcontext()
        with lock, StopSignals() as stop:
            return _train_locked(trainer, files, resume, notify, stop)


def _train_locked(
    trainer: Trainer, files: RunDir, resume: bool, notify: TrainCallback, stop: StopSignals
) -> TrainResult:
    """The part of a run that holds the run folder's lock: restore, write the files, train."""
    profile, writer = trainer.profile, trainer.is_writer
    if writer:
        files.refuse_overwrite(resume)  # again: another run may have ended meanwhile
    payload = saved_payload(VQ_RUN, files, resume)
    if not begin_run(VQ_RUN, trainer, payload, profile, files, writer, notify, resume):
        return TrainResult(files.path, trainer.step, {}, trainer.elapsed_s, trainer.model)
    saved = payload.get("threads") if payload is not None else None
    with training_threads(trainer.placement.device, profile.train.threads, saved) as reason:
        start = describe(trainer.placement, trainer, reason)
        notify(TrainEvent("start", trainer.step, profile.train.steps, start))
        result = trainer.run(stop)
    notify(TrainEvent("end", result.step, profile.train.steps, result.last_record))
    return result


def describe(placement: Placement, trainer: Trainer, threads_reason: str = "") -> dict[str, Any]:
    """What the user got: device, precision, process count, data and model size."""
    return {
        "device": describe_device(placement, threads_reason),
        "precision": describe_precision(placement),
        "compile": trainer.profile.train.compile,
        "cuda_graphs": trainer.graphed is not None,
        "world_size": placement.world_size,
        "train_images": trainer.order.count,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "run_dir": str(trainer.run_dir),
    }
