"""Range coding of code grids (constriction): a static unigram model, or a prior's predictions.

Two coding models, each an integer frequency table per coded symbol that the encoder and the
decoder compute bit for bit alike; constriction's range coder turns the tables into words:

- unigram: one table for the whole file, each code's count in the file plus one (so every
  code can be coded); the table travels with the file.
- prior: the CodePrior's prediction at every position of every grid in raster order, fed the
  codes before it. The probabilities come from one code path on both sides (`_prior_steps`):
  always `CodePrior.step_logits` (never the teacher-forced forward, which rounds
  differently), on chunks of a fixed number of sequences (a partial last chunk padded with
  dummy sequences), with torch on one thread, then `frequencies_from_logits`:
  floor(softmax in float64 * 2**PRECISION), at least 1. The chunk schedule depends only on
  the number of images, so the decoder evaluates exactly the batches the encoder did; on the
  same CPU and torch build a row's logits do not depend on the other rows of its chunk, so an
  image costs the same bits in any file, in any position (the tests check both).

Symbols are coded grid after grid in chunks, position by position, row by row within a chunk,
into one stream of uint32 words. A decoder on another CPU or torch build may compute other
probabilities: codes.py stores a checksum of the codes so that such a decode is refused, never
silently wrong.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple, Protocol

import constriction
import numpy as np
import torch
from torch import Tensor

from vqtool.errors import UsageError
from vqtool.prior_model import CodePrior

PRECISION = 20  # prior frequencies sum to about 2**PRECISION; constriction codes with 24 bits
CHUNK = 128  # sequences per prior evaluation
MIN_ROWS = 4  # the smallest batch the prior is ever run on (a partial chunk is padded to it)
DUMMY_CODE = 0  # what padding sequences are fed

Progress = Callable[[int, int], None]


class CodingPrior(Protocol):
    """What entropy coding needs of a prior run: its model and whom it belongs to."""

    @property
    def model(self) -> CodePrior: ...

    @property
    def fingerprint(self) -> str: ...  # the prior checkpoint's

    @property
    def vq_fingerprint(self) -> str: ...  # the VQ checkpoint whose codes it was trained on


class StreamError(ValueError):
    """A stream that cannot be the coding of the codes it claims (damaged or mismatched)."""


class Encoded(NamedTuple):
    words: np.ndarray  # uint32 (W,): the range coder's output
    bits: np.ndarray  # float64 (N,): each grid's information content under the integer model


def load_coding_prior(path: Path) -> CodingPrior:
    """The prior run (or checkpoint) at `path`, on the CPU, where entropy coding runs."""
    from vqtool.prior import load_prior

    return load_prior(path, "cpu")


def check_prior(
    prior: CodingPrior, checkpoint: str, num_embeddings: int, grid: tuple[int, int] | None = None
) -> None:
    """Refuse a prior that cannot code these codes (UsageError, exit 2)."""
    model = prior.model
    if prior.vq_fingerprint != checkpoint:
        raise UsageError(
            f"the prior was trained on another checkpoint's codes ({prior.vq_fingerprint[:12]}..., "
            f"these are {checkpoint[:12]}...)",
            "--prior",
            "give the prior trained on this run's codes",
        )
    if model.config.conditional:
        raise UsageError(
            "the prior is conditional: it needs each image's class, which a code file does not "
            "hold",
            "--prior",
            "compress with an unconditional prior",
        )
    if model.num_embeddings != num_embeddings or (grid is not None and tuple(model.grid) != grid):
        raise UsageError(
            f"the prior models {model.grid[0]}x{model.grid[1]} grids of {model.num_embeddings} "
            f"codes, these are {_grid(grid)}grids of {num_embeddings}",
            "--prior",
            "encode images of the size the prior was trained on",
        )


def _grid(grid: tuple[int, int] | None) -> str:
    return "" if grid is None else f"{grid[0]}x{grid[1]} "


def code_frequencies(codes: np.ndarray, num_embeddings: int) -> np.ndarray:
    """The unigram table of a file: each code's count plus one, uint32 (K,)."""
    counts = np.bincount(codes.reshape(-1), minlength=num_embeddings)
    return (counts + 1).astype(np.uint32)


def _bits(tables: np.ndarray, symbols: np.ndarray) -> np.ndarray:
    """-log2 of each symbol's probability under its integer table: (B, K), (B,) -> (B,)."""
    chosen = tables[np.arange(len(symbols)), symbols]
    return np.log2(tables.sum(-1)) - np.log2(chosen)


def _unigram_model(frequencies: np.ndarray) -> constriction.stream.model.Categorical:
    return constriction.stream.model.Categorical(frequencies.astype(np.float64), perfect=False)


def encode_unigram(codes: np.ndarray, frequencies: np.ndarray) -> Encoded:
    """Codes (N, h, w) -> words, with one static table (K,) for every symbol."""
    encoder = constriction.stream.queue.RangeEncoder()
    flat = codes.reshape(codes.shape[0], -1)
    encoder.encode(flat.reshape(-1).astype(np.int32), _unigram_model(frequencies))
    table = frequencies.astype(np.float64)
    bits = (np.log2(table.sum()) - np.log2(table))[flat].sum(1)
    return Encoded(encoder.get_compressed(), bits)


def decode_unigram(
    words: np.ndarray, frequencies: np.ndarray, shape: tuple[int, int, int]
) -> np.ndarray:
    """Words -> codes uint16 `shape`; raises StreamError when the words do not fit."""
    decoder = constriction.stream.queue.RangeDecoder(words)
    with _constriction_errors():
        symbols = decoder.decode(_unigram_model(frequencies), math.prod(shape))
    _check_exhausted(decoder)
    return symbols.astype(np.uint16).reshape(shape)


def frequencies_from_logits(logits: Tensor) -> np.ndarray:
    """Logits (B, K) -> integer frequency tables as float64 (B, K): floor(p * 2**PRECISION),
    at least 1, p the float64 softmax."""
    probabilities = torch.softmax(logits.double(), dim=-1)
    return torch.floor(probabilities * float(1 << PRECISION)).clamp_min_(1.0).numpy()


def chunks(n: int) -> Iterator[tuple[int, int, int]]:
    """(start, stop, rows run) of each chunk: CHUNK sequences, the last one padded to a power
    of two of at least MIN_ROWS. A function of n alone: encoder and decoder run the same."""
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        yield start, stop, max(MIN_ROWS, 1 << (stop - start - 1).bit_length())


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torch on one thread for the duration: how many threads split a matrix product changes
    its rounding."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _coding_mode(model: CodePrior) -> Iterator[None]:
    """Eval mode (no dropout) and one thread; the model is left as it was."""
    parameter = next(model.parameters())
    if parameter.dtype != torch.float32 or parameter.device.type != "cpu":
        raise ValueError(
            f"entropy coding runs the prior in float32 on the CPU, not {parameter.dtype} on "
            f"{parameter.device}"
        )
    was_training = model.training
    model.eval()
    try:
        with _one_thread(), torch.inference_mode():
            yield
    finally:
        model.train(was_training)


# One position of one chunk: (start, t, tables (rows, K)) -> the rows' codes at t (rows,).
Step = Callable[[int, int, np.ndarray], np.ndarray]


def _prior_steps(model: CodePrior, n: int, step: Step, on_progress: Progress | None) -> None:
    """Run the prior over n grids chunk by chunk and position by position, handing each
    position's tables to `step`, which codes or decodes the real rows and returns their codes.
    The only place prior probabilities are computed, for encoder and decoder alike."""
    with _coding_mode(model):
        for start, stop, rows in chunks(n):
            real = stop - start
            cache = model.new_cache(rows)
            previous: Tensor | None = None
            for t in range(model.length):
                tables = frequencies_from_logits(model.step_logits(cache, previous))
                symbols = step(start, t, tables[:real])
                fed = np.full(rows, DUMMY_CODE, np.int64)
                fed[:real] = symbols
                previous = torch.from_numpy(fed)
            if on_progress is not None:
                on_progress(stop, n)


def encode_with_prior(
    codes: np.ndarray, model: CodePrior, on_progress: Progress | None = None
) -> Encoded:
    """Codes (N, h, w) -> words, each symbol coded with the prior's prediction for it."""
    n = codes.shape[0]
    flat = codes.reshape(n, -1).astype(np.int32)
    bits = np.zeros(n)
    encoder = constriction.stream.queue.RangeEncoder()
    family = constriction.stream.model.Categorical(perfect=False)

    def step(start: int, t: int, tables: np.ndarray) -> np.ndarray:
        symbols = flat[start : start + len(tables), t]
        encoder.encode(symbols, family, tables)
        bits[start : start + len(tables)] += _bits(tables, symbols)
        return symbols

    _prior_steps(model, n, step, on_progress)
    return Encoded(encoder.get_compressed(), bits)


def decode_with_prior(
    words: np.ndarray,
    model: CodePrior,
    shape: tuple[int, int, int],
    on_progress: Progress | None = None,
) -> np.ndarray:
    """Words -> codes uint16 `shape`; raises StreamError when the words do not fit."""
    n = shape[0]
    codes = np.empty((n, shape[1] * shape[2]), np.uint16)
    decoder = constriction.stream.queue.RangeDecoder(words)
    family = constriction.stream.model.Categorical(perfect=False)

    def step(start: int, t: int, tables: np.ndarray) -> np.ndarray:
        with _constriction_errors():
            symbols = decoder.decode(family, tables)
        codes[start : start + len(tables), t] = symbols
        return symbols

    _prior_steps(model, n, step, on_progress)
    _check_exhausted(decoder)
    return codes.reshape(shape)


@contextlib.contextmanager
def _constriction_errors() -> Iterator[None]:
    # constriction reports words that no symbol can have produced with an AssertionError.
    try:
        yield
    except (AssertionError, ValueError, RuntimeError) as exc:
        raise StreamError(f"the stream cannot be decoded ({exc})") from exc


def _check_exhausted(decoder: constriction.stream.queue.RangeDecoder) -> None:
    if not decoder.maybe_exhausted():
        raise StreamError("the stream holds more words than its codes need")
