"""Codes as the prior's tokens: the one sequence a `CodePrior` reads, and back.

Codes of one stage (N, h, w) are their own tokens. Codes of S residual stages (N, S, h, w)
are one sequence, stage after stage: all h * w codes of stage 0 in raster order, then those
of stage 1, and so on, with stage s's code c as the token s * K + c (K codes per stage, S * K
tokens in all). Every stage thus has tokens of its own, and a prefix of the sequence is a
prefix of the stages. As a grid the tokens are (N, S * h, w): the stages' grids one under the
other. A transformer trained on these tokens is what `vqtool prior` trains; docs/formats.md
("The prior's tokens") gives the layout with an example.
"""

from __future__ import annotations

from typing import overload

import numpy as np


@overload
def codes_to_tokens(codes: np.ndarray, num_embeddings: int) -> np.ndarray: ...


@overload
def codes_to_tokens(
    codes: tuple[np.ndarray, ...], num_embeddings: int
) -> tuple[np.ndarray, ...]: ...


def codes_to_tokens(
    codes: np.ndarray | tuple[np.ndarray, ...], num_embeddings: int
) -> np.ndarray | tuple[np.ndarray, ...]:
    """Codes (N, h, w), or (N, S, h, w) of S stages of `num_embeddings` (K) codes each ->
    tokens int64 (N, S * h, w): stage after stage, stage s's code c as s * K + c.

    The codes of a file of images of different sizes (CodeFile.codes as a tuple, image i's
    (h_i, w_i) or (S, h_i, w_i)) give a tuple of each image's tokens, (S * h_i, w_i): the same
    sequence image by image. A prior trains on grids of one size (vqtool prior refuses such
    a file); CodeFile.groups() gives the codes of each size as one array."""
    if isinstance(codes, tuple):
        return tuple(codes_to_tokens(part[None], num_embeddings)[0] for part in codes)
    if codes.ndim == 3:
        return codes.astype(np.int64)
    if codes.ndim != 4:
        raise ValueError(f"expected codes (N, h, w) or (N, S, h, w), got shape {codes.shape}")
    n, stages, h, w = codes.shape
    offsets = (np.arange(stages, dtype=np.int64) * num_embeddings).reshape(1, stages, 1, 1)
    return (codes.astype(np.int64) + offsets).reshape(n, stages * h, w)


def tokens_to_codes(tokens: np.ndarray, num_embeddings: int, stages: int = 1) -> np.ndarray:
    """`codes_to_tokens` reversed: tokens (N, S * h, w) -> codes uint16 (N, h, w) for one
    stage, (N, S, h, w) for S > 1. ValueError when a token is not one of its stage's."""
    if tokens.ndim != 3 or tokens.shape[1] % stages:
        raise ValueError(f"expected tokens (N, {stages} * h, w), got shape {tokens.shape}")
    n, rows, w = tokens.shape
    by_stage = tokens.astype(np.int64).reshape(n, stages, rows // stages, w)
    offsets = (np.arange(stages, dtype=np.int64) * num_embeddings).reshape(1, stages, 1, 1)
    codes = by_stage - offsets
    if codes.size and (codes.min() < 0 or codes.max() >= num_embeddings):
        raise ValueError(f"a token is not one of its stage's {num_embeddings} codes")
    codes = codes.astype(np.uint16)
    return codes[:, 0] if stages == 1 else codes
