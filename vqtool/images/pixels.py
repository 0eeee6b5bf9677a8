"""Pixel operations on uint8 image tensors (3, H, W) or (B, 3, H, W): sizes, padding, resizing."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vqtool.errors import UsageError
from vqtool.images import fit
from vqtool.images.read import MAX_IMAGE_PIXELS, MAX_IMAGE_WIDTH, pil_to_tensor, resize_rgb
from vqtool.models.config import DOWNSAMPLE

# How sizes are written for people, everywhere: height first, as --size takes them and as
# profiles (data.image_size) and code files (image_size) store them; messages say "HxW".
HW = "HxW"


def size_text(size: tuple[int, int] | Sequence[int]) -> str:
    """(H, W) -> '300x451' (height x width: say HW beside it)."""
    return f"{int(size[0])}x{int(size[1])}"


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' (e.g. '64x64') -> (H, W); each side >= 1, within MAX_IMAGE_PIXELS and
    MAX_IMAGE_WIDTH."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if match is None or int(match[1]) < 1 or int(match[2]) < 1:
        raise UsageError(
            f"bad size {text!r}", "--size", "give HEIGHTxWIDTH (height first), e.g. --size 64x96"
        )
    size = (int(match[1]), int(match[2]))
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise UsageError(
            f"size {text} is too large ({size[0] * size[1]:,} pixels)",
            "--size",
            f"use at most {MAX_IMAGE_PIXELS:,} pixels, e.g. 4096x4096",
        )
    if size[1] > MAX_IMAGE_WIDTH:
        raise UsageError(
            f"size {text} is too wide ({size[1]:,} pixels)",
            "--size",
            f"use a width of at most {MAX_IMAGE_WIDTH:,} pixels",
        )
    return size


def padded_size(size: tuple[int, int], multiple: int = DOWNSAMPLE) -> tuple[int, int]:
    """(H, W) rounded up to multiples of `multiple`."""
    return (math.ceil(size[0] / multiple) * multiple, math.ceil(size[1] / multiple) * multiple)


def pad_index(size: int, padded: int) -> Tensor:
    """Source index of each padded position along one axis: copies of the last pixel.

    Of reflection, edge copies and mid-grey, edge copies cost the real pixels least at every
    factor (benchmarks/bench_padding.py prints the comparison): a flat margin costs the codes
    little, and no mirrored detail is coded.
    """
    return torch.arange(padded).clamp_(max=size - 1)


def pad_to(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Pad (..., h, w) at the bottom and right to `size` (H, W) >= (h, w): see pad_index."""
    h, w = image.shape[-2:]
    if (h, w) == size:
        return image
    rows, cols = pad_index(h, size[0]), pad_index(w, size[1])
    return image.index_select(-2, rows.to(image.device)).index_select(-1, cols.to(image.device))


def pad_to_multiple(images: Tensor, multiple: int = DOWNSAMPLE) -> Tensor:
    """Pad (..., H, W) at the bottom and right so H and W are multiples of `multiple`."""
    return pad_to(images, padded_size((images.shape[-2], images.shape[-1]), multiple))


def resize(image: Tensor, size: tuple[int, int], mode: str = "stretch") -> Tensor:
    """uint8 (3, h, w) -> (3, H, W), fitted as `mode` says: as image files are resized
    (read.read_resized)."""
    if tuple(image.shape[-2:]) == size and mode != "random-crop":  # random: a zoom, always
        return image
    pil = Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))
    if mode == "stretch":
        return pil_to_tensor(resize_rgb(pil, size))
    return pil_to_tensor(fit.fit_rgb(pil, size, mode))
