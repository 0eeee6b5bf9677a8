"""Rate-distortion: vqtool's real code files beside JPEG, WebP and AVIF on the same images.

Every codec compresses the same uint8 images; each point is the mean over the images of
- bits per pixel: bytes * 8 / (H * W), whole files (headers counted) and payload alone;
- PSNR in dB: 10 log10(1 / MSE) per image, pixels in [0, 1], all channels, then averaged
  (an image decoded without error counts as PSNR_CAP).

vqtool's points are whole .vqc files holding all the images (raw, unigram-coded and, with a
prior, prior-coded), written, read back and decoded exactly as `vqtool encode` and
`vqtool decode` do: bits per pixel = file bytes * 8 / (N * H * W); their payload is the
stream (the codes member of a raw file). The images decode to the same pixels whatever the
coding, so the three share one PSNR.

Payloads, per codec (what is left when the container and the coding tables are taken away):
- JPEG (Pillow, 4:2:0, optimized Huffman tables): the entropy-coded scan, from after the
  first start-of-scan (SOS) segment to before the end-of-image marker;
- WebP (Pillow, lossy, method 6): the VP8 chunk's data less its 10-byte frame header;
- AVIF (Pillow, 4:2:0, default speed): the mdat box's content (the AV1 OBUs).

Each codec's bits per pixel at vqtool's PSNR is interpolated between the two sweep points
around it, linearly in log(bits per pixel). Where even the codec's lowest quality gives a
higher PSNR, its bits per pixel there are an upper bound (marked "at_most"); where its
highest gives less, None.
Library code: it reports through callbacks and never prints.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import PIL
import torch
from PIL import Image
from torch import Tensor

from vqtool.codes.bdrate import CODING_ORDER, bd_rates_against, vqtool_curves
from vqtool.codes.entropy import CodingPrior
from vqtool.codes.pipeline import (
    DEFAULT_BATCH,
    CodingModel,
    batch_ranges,
    decode_indices,
    encode_images,
)
from vqtool.codes.vqc import CodeFile, describe_codes, read_codes, write_codes
from vqtool.data.datasets import dataset_source, load_images
from vqtool.errors import WorkError, counted
from vqtool.files import write_text
from vqtool.profiles import Profile
from vqtool.runs import RunDir

CODECS = ("jpeg", "webp", "avif")
QUALITIES = (0, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90)
PSNR_CAP = 100.0  # dB, for an image that comes back exactly
SETTINGS = {
    "jpeg": "Pillow JPEG, quality Q, 4:2:0, optimize=True",
    "webp": "Pillow WebP, lossy, quality Q, method 6",
    "avif": "Pillow AVIF, quality Q, 4:2:0, default speed",
}

# A stage's progress: the factory gets the stage's name and returns an on_progress(done, n).


class ProfiledModel(CodingModel, Protocol):
    """A coding model that also knows its profile, so its dataset can be loaded."""

    @property
    def profile(self) -> Profile: ...


Stages = Callable[[str], Callable[[int, int], None]]


# Values per float64 step of psnr_per_image: images a group at a time, and a photo larger than
# this a slice at a time, so that a photo costs no more than a few copies of a slice.
PSNR_STEP = 1 << 22


def _squared_error(originals: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """uint8 (n, m) and (n, m) -> the sum of each row's squared differences, pixels in [0, 1]."""
    difference = (originals.astype(np.float64) - decoded.astype(np.float64)) / 255.0
    return (difference**2).sum(1)


def psnr_per_image(originals: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """uint8 (N, ...) and (N, ...) -> PSNR of each image in dB, pixels in [0, 1]: (N,)."""
    n = len(originals)
    flat_originals, flat_decoded = originals.reshape(n, -1), decoded.reshape(n, -1)
    values = max(1, flat_originals.shape[1])
    rows = max(1, PSNR_STEP // values)  # whole images per step: each sum is then the same
    sums = np.zeros(n)
    for i in range(0, n, rows):
        for j in range(0, values, PSNR_STEP):
            sums[i : i + rows] += _squared_error(
                flat_originals[i : i + rows, j : j + PSNR_STEP],
                flat_decoded[i : i + rows, j : j + PSNR_STEP],
            )
    mse = sums / values
    with np.errstate(divide="ignore"):
        return np.minimum(10.0 * np.log10(1.0 / mse), PSNR_CAP)


def compress_image(codec: str, image: np.ndarray, quality: int) -> bytes:
    """One uint8 (H, W, 3) image -> the bytes of a whole file."""
    buffer = io.BytesIO()
    picture = Image.fromarray(image)
    if codec == "jpeg":
        picture.save(buffer, "JPEG", quality=quality, subsampling=2, optimize=True)
    elif codec == "webp":
        picture.save(buffer, "WEBP", quality=quality, method=6)
    elif codec == "avif":
        picture.save(buffer, "AVIF", quality=quality, subsampling="4:2:0")
    else:
        raise ValueError(f"unknown codec {codec!r}; known: {', '.join(CODECS)}")
    return buffer.getvalue()


def decompress_image(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as picture:
        return np.asarray(picture.convert("RGB"))


def payload_bytes(codec: str, data: bytes) -> int:
    """The payload of a whole file (see the module's docstring); ValueError if unparsable."""
    if codec == "jpeg":
        return _jpeg_payload(data)
    if codec == "webp":
        return _webp_payload(data)
    if codec == "avif":
        return _avif_payload(data)
    raise ValueError(f"unknown codec {codec!r}")


def _jpeg_payload(data: bytes) -> int:
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG file")
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            raise ValueError(f"no JPEG marker at byte {at}")
        marker, length = data[at + 1], int.from_bytes(data[at + 2 : at + 4], "big")
        if marker == 0xDA:  # start of scan: the entropy-coded data follows its header
            end = len(data) - 2 if data.endswith(b"\xff\xd9") else len(data)
            return end - (at + 2 + length)
        at += 2 + length
    raise ValueError("no start-of-scan marker")


def _webp_payload(data: bytes) -> int:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a WebP file")
    at = 12
    while at + 8 <= len(data):
        kind, size = data[at : at + 4], int.from_bytes(data[at + 4 : at + 8], "little")
        if kind == b"VP8 ":
            return size - 10  # a key frame's tag (3 bytes), start code and size (7 bytes)
        at += 8 + size + (size & 1)
    raise ValueError("no VP8 chunk")


def _avif_payload(data: bytes) -> int:
    at = 0
    while at + 8 <= len(data):
        size, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
        header = 8
        if size == 1:
            size, header = int.from_bytes(data[at + 8 : at + 16], "big"), 16
        elif size == 0:
            size = len(data) - at
        if size < header:
            raise ValueError(f"a box of {size} bytes at byte {at}")
        if kind == b"mdat":
            return size - header
        at += size
    raise ValueError("no mdat box")


def codec_curve(
    codec: str,
    images: np.ndarray,
    qualities: Sequence[int] = QUALITIES,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """One point per quality over uint8 images (N, H, W, 3): quality, bpp_file, bpp_payload,
    psnr."""
    n, h, w = images.shape[:3]
    points = []
    for done, quality in enumerate(qualities, start=1):
        file_bytes = payload = 0
        psnr = np.empty(n)
        for i, image in enumerate(images):
            data = compress_image(codec, image, quality)
            file_bytes += len(data)
            payload += payload_bytes(codec, data)
            psnr[i] = psnr_per_image(image[None], decompress_image(data)[None])[0]
        points.append({
            "quality": quality,
            "bpp_file": file_bytes * 8 / (n * h * w),
            "bpp_payload": payload * 8 / (n * h * w),
            "psnr": float(psnr.mean()),
        })  # fmt: skip
        if on_progress is not None:
            on_progress(done, len(qualities))
    return points


def bpp_at(points: Sequence[dict[str, Any]], psnr: float, key: str) -> float | None:
    """The bits per pixel (`key`) a sweep needs for `psnr`: interpolated linearly in
    log(bpp) between the points around it; None outside the sweep."""
    ordered = sorted(points, key=lambda p: p["psnr"])
    for low, high in zip(ordered, ordered[1:], strict=False):
        if low["psnr"] <= psnr <= high["psnr"]:
            if high["psnr"] == low["psnr"]:
                return float(min(low[key], high[key]))
            t = (psnr - low["psnr"]) / (high["psnr"] - low["psnr"])
            return float(math.exp((1 - t) * math.log(low[key]) + t * math.log(high[key])))
    return None


def vqtool_points(
    loaded: CodingModel,
    images: Tensor,
    prior: CodingPrior | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_prior: Callable[[int, int], None] | None = None,
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """vqtool's points over uint8 images (N, 3, H, W), one per coding (raw, unigram, prior) and
    stage count (1..S for a run of S residual stages): label, stages, bpp_file, bpp_payload,
    bits_per_image, bytes, psnr; and each image's PSNR at every stage count (S, N). The files
    are really written, read back (the prior's stream decoded) and checked against the codes."""
    n, _, h, w = images.shape
    model = loaded.model.folded()
    stages = model.stages
    factor = model.config.downsample
    grid = (h // factor, w // factor)
    codes = np.empty((n, stages, *grid), np.uint16)
    psnr = np.empty((stages, n))
    for start, stop in batch_ranges(n, DEFAULT_BATCH, h * w):
        batch = images[start:stop]
        indices = encode_images(model, batch)
        by_stage = indices if indices.ndim == 4 else indices[:, None]
        codes[start:stop] = by_stage.numpy()
        for count in range(1, stages + 1):
            prefix = by_stage[:, :count] if indices.ndim == 4 else indices
            decoded = decode_indices(model, prefix)
            psnr[count - 1, start:stop] = psnr_per_image(batch.numpy(), decoded.numpy())
        if on_progress is not None:
            on_progress(stop, n)
    config = loaded.model.config
    codings: list[tuple[str, bool, CodingPrior | None]] = [("raw", False, None)]
    codings.append(("unigram", True, None))
    if prior is not None:
        codings.append(("prior", True, prior))
    points = []
    with tempfile.TemporaryDirectory(prefix="vqtool-rd-") as folder:
        for count in range(1, stages + 1):
            kept = codes[:, :count] if stages > 1 else codes[:, 0]
            code_file = CodeFile(
                codes=np.ascontiguousarray(kept),
                names=tuple(f"image-{i:05d}" for i in range(n)),
                sizes=np.tile(np.array([h, w], np.int32), (n, 1)),
                checkpoint=loaded.fingerprint,
                num_embeddings=config.num_embeddings,
                embedding_dim=config.embedding_dim,
                downsample=config.downsample,
                image_size=(h, w),
            )
            for label, compress, coding_prior in codings:
                path = Path(folder) / f"{label}-{count}.vqc"
                write_codes(path, code_file, compress, coding_prior, on_prior)
                if not np.array_equal(read_codes(path, coding_prior).codes, code_file.codes):
                    raise WorkError(f"the {label} file does not decode to its codes", path)
                payload = describe_codes(path).payload_bytes
                size = path.stat().st_size
                points.append({
                    "label": label,
                    "stages": count,
                    "bpp_file": size * 8 / (n * h * w),
                    "bpp_payload": payload * 8 / (n * h * w),
                    "bits_per_image": size * 8 / n,
                    "bytes": size,
                    "psnr": float(psnr[count - 1].mean()),
                })  # fmt: skip
    return points, psnr


def bd_rates(rd: dict[str, Any]) -> dict[str, Any]:
    """The BD-rate of vqtool's best curve (its most compact coding) against each codec, whole
    files against whole files and payloads against payloads, over their shared PSNR range:
    {"vqtool": coding, codec: {"file": {...} | None, "payload": {...} | None}}. A curve needs
    two points (two stage counts); a single-stage run gets None."""
    curves = vqtool_curves(rd["vqtool"])
    best = next(label for label in CODING_ORDER if label in curves)
    against = bd_rates_against(rd["codecs"], {"file": curves[best], "payload": curves[best]})
    return {"vqtool": best, **against}


def rate_distortion(
    loaded: CodingModel,
    images: Tensor,
    prior: CodingPrior | None = None,
    codecs: Sequence[str] = CODECS,
    qualities: Sequence[int] = QUALITIES,
    stages: Stages | None = None,
) -> dict[str, Any]:
    """vqtool's points and each codec's sweep over the same uint8 images (N, 3, H, W), and
    what each codec needs at vqtool's PSNR: the JSON that `vqtool plot` draws."""
    start = time.perf_counter()

    def stage(name: str) -> Callable[[int, int], None] | None:
        return None if stages is None else stages(name)

    points, _ = vqtool_points(
        loaded, images, prior, stage("vqtool: encoding and decoding"), stage("vqtool: prior coding")
    )
    pixels = images.permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, 3) for Pillow
    curves = {codec: codec_curve(codec, pixels, qualities, stage(codec)) for codec in codecs}
    # The codecs at the quality of all the run's stages, against vqtool's smallest file there.
    top = [p for p in points if p["stages"] == points[-1]["stages"]]
    target = top[0]["psnr"]
    best = min(p["bpp_file"] for p in top)
    best_payload = min(p["bpp_payload"] for p in top)
    at_psnr: dict[str, Any] = {
        "psnr": target,
        "vqtool_bpp_file": best,
        "vqtool_bpp_payload": best_payload,
    }
    for codec, curve in curves.items():
        lowest = min(curve, key=lambda p: p["psnr"])
        at_most = target < lowest["psnr"]
        if at_most:
            bpp_file, bpp_payload = lowest["bpp_file"], lowest["bpp_payload"]
        else:
            bpp_file = bpp_at(curve, target, "bpp_file")
            bpp_payload = bpp_at(curve, target, "bpp_payload")
        at_psnr[codec] = {
            "bpp_file": bpp_file,
            "bpp_payload": bpp_payload,
            "at_most": at_most,
            "times_vqtool_file": None if bpp_file is None else bpp_file / best,
            # JPEG's headers outweigh its scan at 32x32: payloads compare the coded data alone
            "times_vqtool_payload": None if bpp_payload is None else bpp_payload / best_payload,
        }
    rd = {
        "images": int(images.shape[0]),
        "image_size": [int(images.shape[2]), int(images.shape[3])],
        "checkpoint": loaded.fingerprint,
        "prior": None if prior is None else prior.fingerprint,
        "vqtool": points,
        "codecs": curves,
        "at_vqtool_psnr": at_psnr,
        "settings": SETTINGS,
        "pillow": PIL.__version__,
        "torch": torch.__version__,
        "seconds": time.perf_counter() - start,
    }
    rd["bd_rate"] = bd_rates(rd)
    return rd


def rate_distortion_split(
    loaded: ProfiledModel,
    split: str,
    data_dir: Path,
    prior: CodingPrior | None = None,
    max_images: int | None = None,
    stages: Stages | None = None,
) -> dict[str, Any]:
    """`rate_distortion` over a split of the run's dataset (its first `max_images` images),
    with the split and the dataset named, so that runs measured on the same images are known."""
    images = load_images(loaded.profile.data, data_dir, split)
    if max_images is not None:
        images = images[:max_images]
    rd = rate_distortion(loaded, images, prior, stages=stages)
    return {"split": split, "data": dataset_source(loaded.profile.data), **rd}


def write_rate_distortion(run: Path, rd: dict[str, Any]) -> Path:
    """Write `rd-<split>.json` in the run of `run` (a run folder or checkpoint)."""
    path = RunDir.with_checkpoint(run).rd_file(rd["split"])
    write_text(path, json.dumps(rd, indent=2) + "\n")
    return path


RD_COLUMNS = (
    "", "bpp (whole files)", "bpp (payload)", "PSNR (dB)", "x vqtool (whole)",
    "x vqtool (payload)",
)  # fmt: skip


def _bounded(bound: str, value: float | None) -> str | float | None:
    return f"{bound}{value:.4g}" if bound and value is not None else value


def _point_label(point: dict[str, Any]) -> str:
    """'vqtool prior', or with the stage count of a multi-stage run 'vqtool prior, 2 stages'."""
    stages = f", {counted(point['stages'], 'stage')}" if "stages" in point else ""
    return f"vqtool {point['label']}{stages}"


def rate_distortion_rows(rd: dict[str, Any]) -> list[list[Any]]:
    """Table rows: vqtool's files, then what each codec needs at vqtool's PSNR, as a multiple
    of vqtool's smallest file and of its smallest payload (an rd file written before the
    payload ratio was kept shows none)."""
    rows: list[list[Any]] = [
        [_point_label(p), p["bpp_file"], p["bpp_payload"], p["psnr"], None, None]
        for p in rd["vqtool"]
    ]
    at = rd["at_vqtool_psnr"]
    for codec in rd["codecs"]:
        needed = at[codec]
        bound = "<= " if needed["at_most"] else ""
        rows.append([
            f"{codec} at {at['psnr']:.2f} dB",
            *(_bounded(bound, needed[key]) for key in ("bpp_file", "bpp_payload")),
            at["psnr"],
            _bounded(bound, needed["times_vqtool_file"]),
            _bounded(bound, needed.get("times_vqtool_payload")),
        ])  # fmt: skip
    return rows
