"""A prior run's exact coding model: derived once from its checkpoint, stored beside it as
`coding-model.npz`, named by its own fingerprint in every file it codes.

Derivation runs the float prior over the first CALIBRATION grids of the run's training codes
(`codes-train.vqc`) to set the clamps (vqtool.models.exact_prior.derive). Its float arithmetic
may differ between machines, so the model is derived once and stored: a file coded with it
decodes wherever the same `coding-model.npz` is, whatever the CPU, thread count, torch
version or device. Loading never runs code: numpy arrays (`allow_pickle=False`) and a JSON
header, the arrays' fingerprint checked and the sums' bounds checked again.

The file: an NPZ of `header` (uint8, UTF-8 JSON {"format": "vqtool-coding-model", "version":
1, "prior": the prior checkpoint's fingerprint, "checkpoint": the VQ checkpoint's,
"fingerprint": sha256 over the arrays (name, dtype, shape, little-endian bytes, in name
order), "sizes": {width, heads, layers, length, num_embeddings, stages, grid: [h, w] of each stage},
"fractions": {...}}; a model stored without "grid" takes its prior's)
and one array per tensor of `exact_prior.tensors`: weights int32, biases int64, scales
float64, tables int64.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from vqtool.codes.tokens import codes_to_tokens
from vqtool.errors import WorkError
from vqtool.files import save_or_fail
from vqtool.models import exact_prior
from vqtool.models.exact_prior import ExactPrior
from vqtool.models.transformer import CodePrior
from vqtool.runs import RunDir

FORMAT = "vqtool-coding-model"
VERSION = 1
CALIBRATION = 512  # training grids the clamps are calibrated on
MAX_FILE_BYTES = 1 << 31


class CodingModel(NamedTuple):
    model: ExactPrior
    fingerprint: str  # of its arrays
    prior: str  # the prior checkpoint's fingerprint
    checkpoint: str  # the VQ checkpoint's


def _arrays(model: ExactPrior) -> dict[str, np.ndarray]:
    """The model's tensors as the file stores them: whole numbers as integers."""
    out = {}
    for name, tensor in exact_prior.tensors(model).items():
        kind = "<f8" if name.endswith(".scale") else "<i4" if name.endswith(".weight") else "<i8"
        out[name] = np.ascontiguousarray(tensor.numpy().astype(kind))
    return out


def arrays_fingerprint(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the arrays in name order: name, dtype, shape, little-endian bytes."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = arrays[name]
        digest.update(name.encode())
        digest.update(array.dtype.str.encode())
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def derive_coding_model(
    model: CodePrior, calibration: torch.Tensor, prior: str, vq: str
) -> CodingModel:
    """The exact model of `model`, calibrated on token grids (B, T), with its fingerprint."""
    exact = exact_prior.derive(model, calibration)
    return CodingModel(exact, arrays_fingerprint(_arrays(exact)), prior, vq)


def calibration_tokens(run: RunDir, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """The first CALIBRATION grids of a prior run's training codes, as token sequences (B, T);
    for a prior of a smaller grid (h, w) per stage (prior.window), a window of that size from
    each grid, at places spread over the grid."""
    from vqtool.codes.vqc import read_codes  # the code file's owner
    from vqtool.prior.data import one_grid_codes  # which refuses codes of several grids

    path = run.codes_file("train")
    if not path.is_file():
        raise WorkError(
            "cannot derive the prior's exact coding model: its training codes are missing",
            path,
            "run vqtool prior R --resume --run-dir P once to write them again",
        )
    code_file = read_codes(path)
    codes = one_grid_codes(code_file, path)[:CALIBRATION]
    if grid is not None and codes.shape[-2:] != grid:
        codes = _spread_crops(codes, grid)
    tokens = codes_to_tokens(codes, code_file.num_embeddings)
    return torch.from_numpy(tokens.reshape(tokens.shape[0], -1))


def _spread_crops(codes: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """An h x w window of each grid (N, [S,] H, W), grid n's at the n-th of the places in
    raster order (cycling), so that the calibration sees every part of the grids."""
    h, w = grid
    rows, columns = codes.shape[-2] - h + 1, codes.shape[-1] - w + 1
    out = np.empty((*codes.shape[:-2], h, w), codes.dtype)
    for n in range(codes.shape[0]):
        top, left = divmod(n % (rows * columns), columns)
        out[n] = codes[n, ..., top : top + h, left : left + w]
    return out


def save_coding_model(path: Path, coding: CodingModel) -> None:
    """Write the model's file (atomically); WorkError when it cannot be written."""
    model = coding.model
    header = {
        "format": FORMAT,
        "version": VERSION,
        "prior": coding.prior,
        "checkpoint": coding.checkpoint,
        "fingerprint": coding.fingerprint,
        "sizes": {
            "width": model.width,
            "heads": model.heads,
            "layers": len(model.layers),
            "length": model.length,
            "num_embeddings": model.num_embeddings,
            "stages": model.stages,
        }
        | ({} if model.grid is None else {"grid": list(model.grid)}),
        "fractions": asdict(model.fractions),
    }
    arrays = _arrays(model) | {"header": np.frombuffer(json.dumps(header).encode(), np.uint8)}
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    save_or_fail(path, lambda f: f.write(buffer.getvalue()), "the exact coding model")


def load_coding_model(path: Path) -> CodingModel:
    """Read and check a coding model file; WorkError when it is damaged or not one."""
    fix = "delete it: vqtool derives it again from the prior's checkpoint"
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError("larger than any coding model")
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        header = json.loads(arrays.pop("header").tobytes().decode())
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError("not a vqtool coding model")
        if header.get("version") != VERSION:
            raise ValueError(f"unsupported version {str(header.get('version'))[:20]}")
        fingerprint = arrays_fingerprint(arrays)
        if fingerprint != header["fingerprint"]:
            raise ValueError("its arrays do not match its fingerprint")
        named = {name: torch.from_numpy(array.astype(np.float64)) for name, array in arrays.items()}
        model = exact_prior.from_tensors(header["sizes"], header["fractions"], named)
        return CodingModel(model, fingerprint, str(header["prior"]), str(header["checkpoint"]))
    except OSError as exc:
        raise WorkError(f"cannot read the exact coding model: {exc.strerror}", path, fix) from exc
    except (ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile, EOFError) as exc:
        what = str(exc)[:120]
        raise WorkError(f"not a readable exact coding model: {what}", path, fix) from exc


def coding_model_for(run: RunDir, model: CodePrior, prior: str, vq: str) -> CodingModel:
    """The prior run's exact coding model: its stored file when that belongs to this prior
    checkpoint, else derived now and stored (WorkError when it cannot be written)."""
    path = run.coding_model()
    grid = (model.grid[0] // model.stages, model.grid[1])
    if path.is_file():
        stored = load_coding_model(path)
        if stored.prior == prior and stored.checkpoint == vq:
            if stored.model.grid is None:  # stored before windows: its prior's own grid
                return stored._replace(model=replace(stored.model, grid=grid))
            return stored
    coding = derive_coding_model(model, calibration_tokens(run, grid), prior, vq)
    save_coding_model(path, coding)
    return coding
