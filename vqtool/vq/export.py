"""A run's encoder and decoder as ONNX graphs, for onnxruntime and other runtimes that know
neither Python, torch nor vqtool: uint8 images -> code indices -> uint8 images.

The graphs are traced from the model's own pixel methods (`VQVAE.images_to_codes` and
`codes_to_images`, weight norm folded first), so they compute what vqtool's encode and decode
compute: nearest codes as ||e||^2 - 2 z.e, one matrix product and an argmin (the form of
`quantizer.nearest_codes`; cdist exports slowly or not at all), fsq's bounded rounding and
mixed-radix digits, residual stages one after another, and the decoded pixels rounded and
clamped as vqtool rounds and clamps them. model.json describes the graphs.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from vqtool.errors import UsageError, WorkError, counted, first_line
from vqtool.files import check_output_folder, staged_folder
from vqtool.models.vqvae import PIXEL_CONVENTION, VQVAE
from vqtool.vq.load import LoadedModel, load_model

FORMAT = "vqtool-onnx"
VERSION = 1
# ONNX's operator set 17: within what the export extra's oldest onnxruntime (1.16) runs, and
# every operator the graphs use (Conv, ConvTranspose, Gemm, ArgMin, Gather, Tanh, Round, Mod,
# Clip) is in it.
OPSET = 17
ENCODER = "encoder.onnx"
DECODER = "decoder.onnx"
FACTS = "model.json"
INSTALL = "pip install 'vqtool[export]'"
OUTPUT_FIX = "give a folder for the graphs, e.g. -o model-onnx"


class ExportResult(NamedTuple):
    out_dir: Path
    stages: int  # residual stages the graphs hold (1 for a run of one stage)
    facts: dict[str, Any]  # what model.json holds


def require_onnx() -> None:
    """UsageError (one line, exit 2) unless onnx and onnxruntime import."""
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UsageError(
            f"vqtool export needs {' and '.join(missing)}, not installed here",
            "vqtool export",
            f"{INSTALL} (or pip install onnx onnxruntime)",
        )


class ImagesToCodes(nn.Module):
    """The encoder graph: uint8 (N, 3, H, W) -> int64 codes (N, h, w), or (N, S, h, w) of the
    first `stages` stages of a run of residual stages."""

    def __init__(self, model: VQVAE, stages: int | None) -> None:
        super().__init__()
        self.model = model
        self.stages = stages

    def forward(self, images: Tensor) -> Tensor:
        return self.model.images_to_codes(images, self.stages)


class CodesToImages(nn.Module):
    """The decoder graph: int64 codes (N, h, w) or (N, S, h, w) -> uint8 (N, 3, f h, f w)."""

    def __init__(self, model: VQVAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, codes: Tensor) -> Tensor:
        return self.model.codes_to_images(codes)


def export_run(run: Path, out_dir: Path, stages: int | None = None) -> ExportResult:
    """Write `encoder.onnx`, `decoder.onnx` and `model.json` of the run (a folder or its
    checkpoint) into `out_dir`; `stages` n keeps a run of residual stages' first n (the
    encoder computes no others, the decoder takes exactly n). All three files are written
    and checked in a hidden folder first, then moved into `out_dir` together.
    """
    require_onnx()
    check_output_folder(out_dir, OUTPUT_FIX)
    loaded = load_model(run, "cpu")
    held = loaded.model.stages
    if stages is not None and not 1 <= stages <= held:
        raise UsageError(
            f"--stages {stages}, but the run has {counted(held, 'stage')}",
            "--stages",
            f"give --stages from 1 to {held}" if held > 1 else "leave --stages out",
        )
    kept = held if stages is None else stages
    model = loaded.model.folded()
    with staged_folder(out_dir, OUTPUT_FIX) as staging:
        _export_graphs(model, kept, staging)
        facts = graph_facts(loaded, kept)
        _check_graphs(staging, facts, out_dir)
        (staging / FACTS).write_text(json.dumps(facts, indent=2) + "\n")
    return ExportResult(out_dir, kept, facts)


def _code_axes(model: VQVAE) -> dict[int, str]:
    """The dynamic axes of the codes: images, then (after the stage axis) rows and columns."""
    first = 1 if model.stages == 1 else 2
    return {0: "images", first: "code_rows", first + 1: "code_columns"}


def _export_graphs(model: VQVAE, stages: int, folder: Path) -> None:
    factor = model.config.downsample
    # 2 images of 5 x 7 codes: traced sizes unlike one another and unlike the stage count,
    # so that no size is taken for another.
    sample = torch.zeros(2, 3, 5 * factor, 7 * factor, dtype=torch.uint8)
    image_axes = {0: "images", 2: "height", 3: "width"}
    encoder = ImagesToCodes(model, stages if model.stages > 1 else None).eval()
    codes = encoder(sample)
    with warnings.catch_warnings():
        # The TorchScript exporter says it is deprecated, and the tracer warns of the Python
        # ints that shape checks read: the graphs run in onnxruntime before they are kept
        # (_check_graphs), and the tests hold their codes and pixels to vqtool's.
        warnings.simplefilter("ignore")
        _export(encoder, sample, folder / ENCODER, "images", "codes",
                {"images": image_axes, "codes": _code_axes(model)})  # fmt: skip
        _export(CodesToImages(model).eval(), codes, folder / DECODER, "codes", "images",
                {"codes": _code_axes(model), "images": image_axes})  # fmt: skip


def _export(
    module: nn.Module, sample: Tensor, path: Path, name_in: str, name_out: str,
    axes: dict[str, dict[int, str]],
) -> None:  # fmt: skip
    # The TorchScript exporter (dynamo=False): in every torch this vqtool supports, and it
    # needs neither onnxscript nor torch.export's symbolic shapes to make H and W dynamic.
    try:
        torch.onnx.export(
            module, (sample,), str(path), input_names=[name_in], output_names=[name_out],
            dynamic_axes=axes, opset_version=OPSET, dynamo=False,
        )  # fmt: skip
    except (RuntimeError, TypeError, ValueError) as exc:
        raise WorkError(
            f"torch could not export {path.name}: {first_line(exc)}",
            path.name,
            "report it, with the run's profile.toml",
        ) from exc


def graph_facts(loaded: LoadedModel, stages: int) -> dict[str, Any]:
    """model.json: what the graphs take and give, and which checkpoint they come from."""
    from vqtool import __version__

    config = loaded.model.config
    staged = loaded.model.stages > 1
    code_shape: list[int | str] = ["N", *([stages] if staged else []), "H/f", "W/f"]
    return {
        "format": FORMAT,
        "version": VERSION,
        "checkpoint": loaded.fingerprint,
        "step": loaded.step,
        "quantizer": config.quantizer,
        "num_embeddings": config.num_embeddings,
        "embedding_dim": config.embedding_dim,
        "downsample": config.downsample,
        "stages": stages,
        "run_stages": loaded.model.stages,
        "levels": list(config.levels) if config.quantizer == "fsq" else None,
        "opset": OPSET,
        "encoder": {
            "file": ENCODER,
            "input": {"name": "images", "type": "uint8", "shape": ["N", 3, "H", "W"]},
            "output": {
                "name": "codes",
                "type": "int64",
                "shape": code_shape,
                "values": [0, config.num_embeddings - 1],
            },
        },
        "decoder": {
            "file": DECODER,
            "input": {"name": "codes", "type": "int64", "shape": code_shape},
            "output": {"name": "images", "type": "uint8", "shape": ["N", 3, "H", "W"]},
        },
        "pixels": {
            **PIXEL_CONVENTION,
            "sizes": "H and W multiples of downsample (f); vqtool encode pads other sizes at "
            "the bottom and right with copies of the last row and column, and decode crops "
            "the padding off",
        },
        "vqtool": __version__,
        "torch": torch.__version__,
    }


def _check_graphs(folder: Path, facts: dict[str, Any], out_dir: Path) -> None:
    """The graphs in `folder` as onnx checks them, and one run of each through onnxruntime:
    codes and images of the shapes model.json says (WorkError naming `out_dir` otherwise)."""
    import onnx
    import onnxruntime

    factor = facts["downsample"]
    images = np.zeros((1, 3, 3 * factor, 2 * factor), np.uint8)
    try:
        for name in (ENCODER, DECODER):
            onnx.checker.check_model(str(folder / name))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        encoder = onnxruntime.InferenceSession(str(folder / ENCODER), options)
        decoder = onnxruntime.InferenceSession(str(folder / DECODER), options)
        codes = encoder.run(None, {"images": images})[0]
        decoded = decoder.run(None, {"codes": codes})[0]
    except Exception as exc:  # onnx and onnxruntime raise types of their own
        raise WorkError(
            f"the exported graphs do not run in onnxruntime: {first_line(exc)}",
            out_dir,
            "report it, with the run's profile.toml",
        ) from exc
    staged = len(facts["encoder"]["output"]["shape"]) == 4
    grid = [1, *([facts["stages"]] if staged else []), 3, 2]
    if list(codes.shape) != grid or decoded.shape != images.shape or decoded.dtype != np.uint8:
        raise WorkError(
            f"the exported graphs give codes {codes.shape} and images {decoded.shape}",
            out_dir,
            "report it, with the run's profile.toml",
        )
