"""A prior's data: R's codes of R's dataset, encoded once with R's checkpoint and kept in P as
ordinary code files (`codes-train.vqc`, `codes-test.vqc`). A labelled dataset stores each image's
class as the first part of its name (`cat/train-00042`), so the code files carry the labels too."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from vqtool.codes.pipeline import batch_ranges, encode_images
from vqtool.codes.tokens import codes_to_tokens
from vqtool.codes.vqc import (
    CodeFile,
    check_codes_for_model,
    grid_groups,
    read_codes,
    write_codes,
)
from vqtool.data.datasets import dataset_classes, image_names, load_split
from vqtool.errors import UsageError
from vqtool.events import Progress
from vqtool.runs import RunDir
from vqtool.schedule import EVAL_BATCH
from vqtool.vq.load import LoadedModel


class PriorData(NamedTuple):
    codes: Tensor  # int64 (N, S * h, w): the prior's tokens (codes of one stage: (N, h, w))
    labels: Tensor | None  # int64 (N,)


def one_grid_codes(code_file: CodeFile, where: object) -> np.ndarray:
    """A code file's codes as one array (N, [S,] h, w); UsageError for a file of images of
    different grids (read from `where`): a prior trains on grids of one size."""
    codes = code_file.codes
    if isinstance(codes, tuple):
        grids = [f"{h}x{w}" for (h, w), _ in grid_groups(code_file.grids())]
        shown = ", ".join(grids[:4]) + (" ..." if len(grids) > 4 else "")
        raise UsageError(
            f"the prior trains on grids of one size; this code file holds images of "
            f"{len(grids)} grid sizes ({shown} codes, HxW)",
            where,
            "keep codes of images of one size there (vqtool encode --size HxW), or delete it: "
            "vqtool prior encodes the run's dataset again",
        )
    return codes


def prior_tokens(code_file: CodeFile, where: object) -> Tensor:
    """A code file's codes as the prior's tokens, int64 (N, S * h, w) (vqtool.codes.tokens);
    UsageError for a file of images of different grids (read from `where`)."""
    codes = one_grid_codes(code_file, where)
    return torch.from_numpy(codes_to_tokens(codes, code_file.num_embeddings))


def encode_split(
    vq: LoadedModel, data_dir: Path, split: str, on_progress: Progress | None = None
) -> CodeFile:
    """R's codes of one split of its dataset, as a CodeFile named by class and index."""
    images, labels, class_names = load_split(vq.profile.data, data_dir, split)
    n, _, height, width = images.shape
    model = vq.model.folded()
    codes: np.ndarray | None = None  # (N, h, w), or (N, S, h, w) for a model of S stages
    for start, stop in batch_ranges(n, EVAL_BATCH, height * width):
        batch = encode_images(model, images[start:stop]).numpy()
        if codes is None:
            codes = np.empty((n, *batch.shape[1:]), np.uint16)
        codes[start:stop] = batch
        if on_progress is not None:
            on_progress(stop, n)
    names = image_names(split, n, labels, class_names)
    config = vq.model.config
    assert codes is not None  # a split holds at least one image
    return CodeFile(
        codes=codes,
        names=tuple(names),
        sizes=np.tile(np.array([[height, width]], np.int32), (n, 1)),
        checkpoint=vq.fingerprint,
        num_embeddings=config.num_embeddings,
        embedding_dim=config.embedding_dim,
        downsample=config.downsample,
        image_size=(height, width),
    )


def labels_from_names(code_file: CodeFile, class_names: tuple[str, ...]) -> Tensor | None:
    """The class of each image from its name's first part, or None without classes."""
    if not class_names:
        return None
    index = {name: i for i, name in enumerate(class_names)}
    labels = [index.get(name.split("/", 1)[0], -1) for name in code_file.names]
    if min(labels) < 0:
        return None
    return torch.tensor(labels, dtype=torch.long)


def prepare_codes(
    vq: LoadedModel,
    run: RunDir,
    data_dir: Path,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> tuple[dict[str, PriorData], tuple[int, int], int]:
    """The train and test codes of R's dataset, read from P when there, else encoded and kept;
    the images' (H, W) and the codes' stage count."""
    found: dict[str, PriorData] = {}
    class_names = dataset_classes(vq.profile.data)
    config = vq.model.config
    image_size, stages = (0, 0), 1
    for split in ("train", "test"):
        path = run.codes_file(split)
        if path.is_file():
            code_file = read_codes(path)
            check_codes_for_model(
                code_file,
                vq.fingerprint,
                config.num_embeddings,
                config.embedding_dim,
                path,
                config.downsample,
            )
        else:
            progress = None
            if on_progress is not None:
                progress = functools.partial(on_progress, split)
            code_file = encode_split(vq, data_dir, split, progress)
            write_codes(path, code_file)
        tokens = prior_tokens(code_file, path)
        found[split] = PriorData(tokens, labels_from_names(code_file, class_names))
        assert code_file.image_size is not None  # prior_tokens refuses images of several grids
        image_size, stages = code_file.image_size, code_file.stages
    return found, image_size, stages


def crop_tokens(tokens: Tensor, stages: int, window: tuple[int, int], corners: Tensor) -> Tensor:
    """Windows of h x w codes from token grids (N, S * H, W), grid n's with its top-left corner
    at corners[n] = (top, left), the same place in every stage: -> (N, S * h, w)."""
    n, rows, width = tokens.shape
    h, w = window
    grids = tokens.view(n, stages, rows // stages, width)
    device = tokens.device
    at_rows = (corners[:, 0:1] + torch.arange(h, device=device)).view(n, 1, h, 1)
    at_columns = (corners[:, 1:2] + torch.arange(w, device=device)).view(n, 1, 1, w)
    every = torch.arange(n, device=device).view(n, 1, 1, 1)
    stage = torch.arange(stages, device=device).view(1, stages, 1, 1)
    return grids[every, stage, at_rows, at_columns].reshape(n, stages * h, w)


def random_corners(
    n: int, grid: tuple[int, int], window: tuple[int, int], generator: torch.Generator
) -> Tensor:
    """n top-left corners (n, 2) int64 of h x w windows inside an H x W grid, uniform."""
    tops = torch.randint(0, grid[0] - window[0] + 1, (n,), generator=generator)
    lefts = torch.randint(0, grid[1] - window[1] + 1, (n,), generator=generator)
    return torch.stack([tops, lefts], 1)


def centre_windows(data: PriorData, stages: int, window: tuple[int, int]) -> PriorData:
    """Each grid's centre window: what a windowed prior's test figures are measured on."""
    n, rows, width = data.codes.shape
    corner = torch.tensor([(rows // stages - window[0]) // 2, (width - window[1]) // 2])
    corners = corner.expand(n, 2)
    return PriorData(crop_tokens(data.codes, stages, window, corners), data.labels)
