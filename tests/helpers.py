"""Tiny CIFAR-10 stand-ins for tests: archives and folders in the official python layout.

The images are smooth colour gradients with one soft blob and a little noise, so a model can
learn them in a few steps; every batch is a protocol-2 pickle with str keys, as in the
official CIFAR-10 python archive.
"""

from __future__ import annotations

import io
import os
import pickle
import resource
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

if TYPE_CHECKING:
    from vqtool.vq.train import Trainer

BATCHES_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_images(n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` structured images as uint8 rows (n, 3072), channel-major like CIFAR-10."""
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float64)  # (32, 32) pixel coordinates
    base = rng.uniform(0.15, 0.85, (n, 3, 1, 1))
    gx = rng.uniform(-0.4, 0.4, (n, 3, 1, 1)) / 31
    gy = rng.uniform(-0.4, 0.4, (n, 3, 1, 1)) / 31
    cx, cy = rng.uniform(6, 26, (2, n, 1, 1, 1))
    radius = rng.uniform(3, 8, (n, 1, 1, 1))
    colour = rng.uniform(-0.5, 0.5, (n, 3, 1, 1))
    blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))  # (n, 1, 32, 32)
    img = base + gx * xx + gy * yy + colour * blob + rng.normal(0, 0.02, (n, 3, 32, 32))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8).reshape(n, 3072)


def make_photos(n: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """`n` structured images of `size` (H, W) as uint8 (n, H, W, 3): gradients and a blob."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) / max(h, w)  # (H, W), 0 to < 1
    base = rng.uniform(0.15, 0.85, (n, 1, 1, 3))
    gx, gy = rng.uniform(-0.4, 0.4, (2, n, 1, 1, 3))
    cx, cy = rng.uniform(0.2, 0.8, (2, n, 1, 1, 1))
    radius = rng.uniform(0.1, 0.25, (n, 1, 1, 1))
    colour = rng.uniform(-0.5, 0.5, (n, 1, 1, 3))
    blob = np.exp(-((xx[..., None] - cx) ** 2 + (yy[..., None] - cy) ** 2) / (2 * radius**2))
    img = base + gx * xx[..., None] + gy * yy[..., None] + colour * blob
    img = img + rng.normal(0, 0.02, (n, h, w, 3))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def make_image_folder(
    folder: Path,
    names: list[str],
    size: tuple[int, int] = (32, 32),
    seed: int = 0,
) -> Path:
    """Write one generated image per name below `folder` ('cat/0001.png'; the extension picks
    the format: .png, .jpg, ...); return `folder`."""
    from PIL import Image

    pixels = make_photos(len(names), size, np.random.default_rng(seed))
    for name, image in zip(names, pixels, strict=True):
        path = Path(folder) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
    return Path(folder)


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


FOLDER_PROFILE = """\
extends = "tiny.toml"

[data]
dataset = "folder"
path = "photos"
image_size = [16, 16]
resize = "random-crop"
test_fraction = 0.2
batch_size = 8
"""


def write_folder_profile(folder: Path, extra: str = "") -> Path:
    """The tiny model on the image folder `photos` (relative to the working folder) at 16x16
    random crops: `folder/folder.toml`, extending `folder/tiny.toml`."""
    write_tiny_profile(folder / "tiny.toml")
    (folder / "folder.toml").write_text(FOLDER_PROFILE + extra)
    return folder / "folder.toml"


def cifar_batch_blobs(per_batch: int = 40, n_test: int = 40, seed: int = 0) -> dict[str, bytes]:
    """The pickled files of the batches folder, by name (data_batch_1..5, test_batch, meta)."""
    rng = np.random.default_rng(seed)
    files: dict[str, object] = {}
    for i, name in enumerate(TRAIN_FILES):
        files[name] = {
            "data": make_images(per_batch, rng),
            "labels": rng.integers(0, 10, per_batch).tolist(),
            "batch_label": f"training batch {i + 1} of 5",
            "filenames": [f"img_{i}_{j}.png" for j in range(per_batch)],
        }
    files["test_batch"] = {
        "data": make_images(n_test, rng),
        "labels": rng.integers(0, 10, n_test).tolist(),
        "batch_label": "testing batch 1 of 1",
        "filenames": [f"test_{j}.png" for j in range(n_test)],
    }
    files["batches.meta"] = {
        "label_names": CLASSES,
        "num_cases_per_batch": per_batch,
        "num_vis": 3072,
    }
    return {name: pickle.dumps(obj, protocol=2) for name, obj in files.items()}


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """Write a .tar.gz of the given members (data None for folders, links and the like)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    """A regular-file member for write_tar."""
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.mode = 0o644
    return info, data


def cifar_members(
    per_batch: int = 40, n_test: int = 40, seed: int = 0
) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """The members of an official-layout archive, for write_tar."""
    blobs = cifar_batch_blobs(per_batch, n_test, seed)
    return [file_member(f"{BATCHES_DIR}/{name}", blob) for name, blob in blobs.items()]


def make_cifar_archive(
    path: Path,
    per_batch: int = 40,
    n_test: int = 40,
    seed: int = 0,
    extra_members: dict[str, bytes] | None = None,
) -> Path:
    """Write a .tar.gz in the official layout (plus `extra_members`, name -> bytes); return it."""
    members = cifar_members(per_batch, n_test, seed)
    members += [file_member(name, data) for name, data in (extra_members or {}).items()]
    return write_tar(Path(path), members)


def make_cifar_folder(data_dir: Path, per_batch: int = 40, n_test: int = 40, seed: int = 0) -> Path:
    """Write `data_dir/cifar-10-batches-py/` directly (the extracted layout); return data_dir."""
    data_dir = Path(data_dir)
    folder = data_dir / BATCHES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in cifar_batch_blobs(per_batch, n_test, seed).items():
        (folder / name).write_bytes(blob)
    return data_dir


def py2_batch_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way Python 2's cPickle wrote the official CIFAR-10 files.

    Keys and the array's raw bytes are Python 2 `str` (BINSTRING opcodes), which Python 3
    reads as bytes or latin1 text; the array names numpy.core.multiarray._reconstruct.
    Only what a batch needs: a dict of 'data' (uint8 2-D array) and 'labels' (small ints).
    """

    def s(text: bytes) -> bytes:  # Python 2 str: SHORT_BINSTRING or BINSTRING
        if len(text) < 256:
            return b"U" + bytes([len(text)]) + text
        return b"T" + struct.pack("<I", len(text)) + text

    def i(value: int) -> bytes:  # BININT
        return b"J" + struct.pack("<i", value)

    rows, cols = data.shape
    dtype = b"cnumpy\ndtype\n" + s(b"u1") + b"\x89\x88\x87R"  # dtype('u1', False, True)
    dtype += b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
    array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
    array += i(0) + b"\x85" + s(b"b") + b"\x87R"  # _reconstruct(ndarray, (0,), 'b')
    array += b"(" + i(1) + i(rows) + i(cols) + b"\x86" + dtype + b"\x89"
    array += s(np.ascontiguousarray(data, np.uint8).tobytes()) + b"tb"
    label_list = b"](" + b"".join(i(v) for v in labels) + b"e"
    return b"\x80\x02}(" + s(b"data") + array + s(b"labels") + label_list + b"u."


TINY_PROFILE = """\
# A very small model for tests: trains in a fraction of a second on the CPU.
extends = "smoke"
name = "tiny"
description = "A very small model for tests."

[data]
batch_size = 20

[model]
num_hiddens = 16
num_residual_hiddens = 8
num_residual_layers = 1
embedding_dim = 8
num_embeddings = 32
dead_code_steps = 0

[train]
steps = 30
learning_rate = 2e-3
log_every = 10
checkpoint_every = 10
# The same arithmetic on every CPU ("auto" is bf16 where the CPU has it); bf16 has its own tests.
precision = "fp32"
"""


def write_tiny_profile(path: Path, extra: str = "") -> Path:
    """Write the tiny test profile (plus `extra` TOML lines appended) to `path`."""
    path.write_text(TINY_PROFILE + extra)
    return path


REPO = Path(__file__).resolve().parent.parent

# Long enough (200 steps of a few ms) that a signal sent at the first checkpoint lands mid-run.
SLOW_PROFILE = """
extends = "tiny.toml"

[train]
steps = 200
log_every = 10
checkpoint_every = 40
"""


def write_slow_profile(folder: Path) -> Path:
    """The tiny model for 200 steps (`folder/slow.toml`, extending `folder/tiny.toml`)."""
    write_tiny_profile(folder / "tiny.toml")
    (folder / "slow.toml").write_text(SLOW_PROFILE)
    return folder / "slow.toml"


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (a download from it is refused at once, a
    rendezvous of processes can take it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_as_rank(rank: int, world: int, port: int) -> None:
    """The environment torchrun gives process `rank` of `world`, one thread each."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)


def train_as_rank(rank: int, world: int, port: int, profile: Path, data: Path, out: Path) -> None:
    """A `mp.start_processes` worker: train `profile` as rank `rank` of `world` into out/run and
    save this rank's model state as out/rank<rank>.pt."""
    from vqtool.checkpoint import model_state
    from vqtool.profiles import load_profile
    from vqtool.vq.train import run_training

    join_as_rank(rank, world, port)
    result = run_training(load_profile(profile), out / "run", data)
    torch.save(model_state(result.model), out / f"rank{rank}.pt")


def source_env() -> dict[str, str]:
    """The environment for a subprocess that must import vqtool from this checkout."""
    return {**os.environ, "PYTHONPATH": str(REPO)}


def wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    """Poll until `path` exists; fails if `proc` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def tiny_trainer(tmp_path: Path, device: str, overrides: list[str]) -> Trainer:
    """A Trainer on a tiny profile and made-up data, on `device` (bf16 autocast on CUDA)."""
    from vqtool.data.cifar10 import load_cifar10
    from vqtool.device import Placement
    from vqtool.profiles import load_profile
    from vqtool.vq.train import Trainer

    data = make_cifar_folder(tmp_path / "data")
    profile = load_profile(write_tiny_profile(tmp_path / "tiny.toml"), overrides)
    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else None
    images = load_cifar10(data, "train").to(dev)
    return Trainer(profile, tmp_path / "run", images, Placement(dev, dtype), lambda e: None)


def run_steps(trainer: Trainer, steps: int) -> list[list[float]]:
    """Train `steps` steps by hand; a row per step: nmse, vq_loss, perplexity, restarts."""
    trainer.model.train()
    out = []
    for step in range(steps):
        x = trainer.next_batch(step)
        if step == 0:
            trainer.init_codebook(x)
        out.append(trainer.train_step(x).tolist())
        trainer.step += 1
    return out


def one_error_line(output: str) -> str:
    """The single `error: ...` line a failed command printed (no traceback); returns it."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: "), output
    assert "Traceback" not in output
    return lines[0]


# Every kind of VQ run, as --set keys over the tiny profile (32 codes per stage, 8x8 grids of
# 32x32 images): a codebook (ema), finite scalar quantization, residual stages, a codebook
# downsampling 8x (4x4 grids), and a network other than the seed's (its own channel plan, more
# residual blocks, SiLU).
VQ_KINDS = {
    "ema": [],
    "fsq": ["model.quantizer=fsq", "model.levels=[4,4,2]"],
    "rvq": ["model.stages=3", "model.stage_dropout=true", "model.gradient=rotation"],
    "ds8": ["model.downsample=8"],
    "net": [
        "model.channels=[6,20]",
        "model.num_hiddens=12",
        "model.num_residual_layers=2",
        "model.num_residual_hiddens=4",
        "model.activation=silu",
    ],  # fmt: skip
}
KIND_STAGES = {"ema": 1, "fsq": 1, "rvq": 3, "ds8": 1, "net": 1}
KIND_GRID = {"ema": (8, 8), "fsq": (8, 8), "rvq": (8, 8), "ds8": (4, 4), "net": (8, 8)}
TINY_PRIOR = ["train.steps=4", "train.eval_every=0", "prior.layers=1", "prior.width=32"]


@dataclass(frozen=True)
class KindRuns:
    """A run folder per kind of VQ run (`runs["rvq"]`), each with a tiny prior inside
    (`runs["rvq/prior"]`), and the data they were trained on."""

    root: Path
    data: Path

    def __getitem__(self, kind: str) -> Path:
        return self.root / kind


def make_kind_runs(root: Path) -> KindRuns:
    """Train every kind of VQ_KINDS (30 steps) with a prior of 4 steps inside, and evaluate
    both, as a user would leave them."""
    from vqtool.prior.evaluate import evaluate_prior
    from vqtool.prior.train import train_prior
    from vqtool.profiles import load_prior_profile, load_profile
    from vqtool.runs import RunDir
    from vqtool.vq.evaluate import evaluate_checkpoint, write_eval
    from vqtool.vq.train import run_training

    data = make_cifar_folder(root / "data")
    tiny = write_tiny_profile(root / "tiny.toml")
    prior_profile = load_prior_profile("prior-small", TINY_PRIOR)
    for kind, settings in VQ_KINDS.items():
        run = root / "runs" / kind
        run_training(load_profile(tiny, settings), run, data)
        write_eval(run, evaluate_checkpoint(run, "test", data))
        train_prior(run, prior_profile, run / "prior", data)
        RunDir.at(run / "prior").write_eval(evaluate_prior(run / "prior"))
    return KindRuns(root / "runs", data)


def vqtool_limited(max_file_bytes: int, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run `vqtool ARGS` in a process that cannot make a file longer than `max_file_bytes`: a
    full disk, for anyone (root included), as a write that fails with EFBIG."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, hard))

    return subprocess.run(
        [sys.executable, "-m", "vqtool", *map(str, args)],
        env=source_env(),
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=300,
    )


def last_error_line(stderr: str) -> str:
    """The `error: ...` line that ends a failed command's progress lines; it must be the only
    error line, the last line, and come without a traceback."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("error")] == lines[-1:], stderr
    assert "Traceback" not in stderr
    return lines[-1]


def cifar_names(data_dir: Path, split: str, n: int | None = None) -> list[str]:
    """What encode and a prior call the first `n` images of a CIFAR-10 split in `data_dir`:
    class, then split and index ('cat/test-00042')."""
    from vqtool.data.cifar10 import load_cifar10_labels

    labels = load_cifar10_labels(data_dir, split).tolist()[:n]
    return [f"{CLASSES[y]}/{split}-{i:05d}" for i, y in enumerate(labels)]


def decoded_pngs(folder: Path) -> dict[str, bytes]:
    """Every PNG below `folder` by its path there (CIFAR-10's lie in a folder per class)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


# A folder of three sizes for the tiny runs (32x32 training images): two 32x32, one 13x27 and
# one 20x36, in an order that interleaves the sizes; no side of 13x27 is a multiple of 4 or 8,
# and 20x36's are not of 8. Every run's factor gives the three sizes three grids.
MIXED_SIZES = {"a": (32, 32), "b": (13, 27), "c": (20, 36), "d": (32, 32)}


def make_sized_folder(folder: Path, sizes: dict[str, tuple[int, int]], seed: int = 0) -> Path:
    """One generated PNG per name at its (height, width): `folder/<name>.png`."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for k, (name, size) in enumerate(sizes.items()):
        (pixels,) = make_photos(1, size, np.random.default_rng(seed + k))
        Image.fromarray(pixels).save(folder / f"{name}.png")
    return folder


def code_arrays(path: Path) -> dict[str, np.ndarray]:
    """A code file's arrays, from either container: a zip (raw files, and compressed files of
    earlier vqtools) or the compact container of compressed files."""
    from vqtool.codes import container

    data = Path(path).read_bytes()
    if data.startswith(container.MAGIC):
        return container.unpack(data, 1 << 30)
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def save_code_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a (doctored) code file's arrays as vqtool would: a compressed file's in the compact
    container, unless an array's type cannot go there (then as a zip, which readers take too)."""
    from vqtool.codes import container, vqc

    compact = "stream" in arrays and "header" in arrays
    if compact and all(np.asarray(a).dtype.str in container.DTYPES for a in arrays.values()):
        Path(path).write_bytes(vqc.compact_bytes({k: np.asarray(a) for k, a in arrays.items()}))
        return
    with open(path, "wb") as f:  # a file object: np.savez would append .npz to a path
        np.savez(f, **arrays)
