"""Range coding of code grids (constriction): a static unigram model, or a prior's predictions.

Two coding models, each an integer frequency table per coded symbol that the encoder and the
decoder compute bit for bit alike; constriction's range coder turns the tables into words:

- unigram: one table for the whole file, each code's count in the file plus one (so every
  code can be coded); the table travels with the file.
- prior: the CodePrior's prediction at every position of every grid in raster order, fed the
  codes before it. The probabilities come from one code path on both sides (`_chunk_steps`):
  always `PriorSteps` (never the teacher-forced forward, which rounds differently), on chunks
  of a fixed number of sequences (a partial last chunk padded with dummy sequences), each
  chunk with torch on one thread, then `frequencies_from_logits`: floor(softmax in float32 *
  2**PRECISION), at least 1. The chunk schedule depends only on the number of images, so the
  decoder evaluates exactly the batches the encoder did; on the same CPU and torch build a
  row's logits do not depend on the other rows of its chunk, so an image costs the same bits
  in any file, in any position (the tests check both).

Unigram symbols are coded grid after grid into one stream of uint32 words. Prior coding gives
each chunk a stream of its own (position by position, row by row within the chunk), the
streams concatenated and their lengths kept, so that chunks are encoded and decoded on as many
threads as torch uses, each chunk's arithmetic the same on any of them.

The float prior's arithmetic rounds differently on another CPU, thread count or torch build: a
file coded with it (coding "prior") decodes only where it was written, and vqc.py stores a
checksum of the codes so that such a decode is refused, never silently wrong. Files written
today use the prior's exact coding model instead (coding "exact", `ExactPredictor`,
vqtool.models.exact_prior): the same integer tables on every machine.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import NamedTuple, Protocol, TypeVar

import constriction
import numpy as np
import torch
from torch import Tensor

from vqtool.codes.adaptive import Adapter
from vqtool.codes.window_tables import WindowTables
from vqtool.errors import UsageError, counted, first_line
from vqtool.events import Progress
from vqtool.models.exact_prior import ExactForced, ExactPrior, ExactSteps
from vqtool.models.steps import PriorSteps
from vqtool.models.transformer import CodePrior
from vqtool.models.windows import same_grid
from vqtool.threads import torch_threads

PRECISION = 20  # prior frequencies sum to about 2**PRECISION; constriction codes with 24 bits
CHUNK = 128  # grids per chunk of the float prior's coding: a stream of its own, on a thread
# Grids per chunk of the exact coding (stored in the file's header). A chunk runs on one thread
# position by position, and each position costs the model's operations whatever the rows, so
# larger chunks share that cost among more grids; over grids of the model's own size a file
# takes up to EXACT_CHUNK, with at least four chunks where it has the images (every thread
# busy); other grids' window tables keep a row of logits per grid: WINDOW_CHUNK there.
EXACT_CHUNK = 1024
WINDOW_CHUNK = 256
CACHE_BYTES = 1 << 26  # a chunk's key and value caches stay within this (ExactSteps)
MIN_ROWS = 4  # the smallest batch the prior is ever run on (a partial chunk is padded to it)
DUMMY_CODE = 0  # what padding sequences are fed
REPORT_EVERY_S = 0.5  # how often a coding reports its progress

Result = TypeVar("Result")
# One coding at a time per process: coding sets torch's process-wide thread count.
_CODING = threading.Lock()


class CodingPrior(Protocol):
    """What entropy coding needs of a prior run: its model, its exact coding model (None when
    it has none), and whom they belong to."""

    @property
    def model(self) -> CodePrior: ...

    @property
    def fingerprint(self) -> str: ...  # the prior checkpoint's

    @property
    def vq_fingerprint(self) -> str: ...  # the VQ checkpoint whose codes it was trained on

    @property
    def exact(self) -> ExactPrior | None: ...

    @property
    def exact_fingerprint(self) -> str | None: ...  # the exact coding model's


class Tables(Protocol):
    """One chunk's predictions, position by position."""

    def next(self, previous: Tensor | None) -> np.ndarray:
        """Integer frequency tables (rows, K_s) float64 of the next position over its stage's
        K_s codes, fed the tokens (rows,) of the position before (None at the first)."""
        ...


class Predictor(Protocol):
    """A model that gives the range coder its tables: the float prior or its exact model."""

    length: int  # positions of a token sequence: stages after each other
    stages: int
    per_stage: int  # codes of each stage, K_s

    def steps(self, rows: int, known: Tensor | None = None, real: int | None = None) -> Tables:
        """Tables for `rows` sequences; `known` (rows, T) int64 when every token is known
        already (encoding), which a predictor may use to compute all positions at once. Only
        the tables of the first `real` rows (default all) are read: a predictor may leave the
        others out."""
        ...

    def prepared(self) -> contextlib.AbstractContextManager[None]: ...


class FloatPredictor:
    """The CodePrior's own predictions in float32 on the CPU: `PriorSteps`, then
    `frequencies_from_logits` over the position's stage. Its tables are the same only on the
    same CPU and torch build (the coding "prior", still decoded)."""

    def __init__(self, model: CodePrior) -> None:
        self.model = model
        self.length = model.length
        self.stages = model.stages
        self.per_stage = model.num_embeddings // model.stages

    def steps(self, rows: int, known: Tensor | None = None, real: int | None = None) -> Tables:
        # Always one position at a time, even when encoding: the teacher-forced forward sums
        # in another order, and float sums round differently in another order.
        return _FloatTables(self, PriorSteps(self.model, rows))

    @contextlib.contextmanager
    def prepared(self) -> Iterator[None]:
        """Eval mode (no dropout); the model is left as it was."""
        parameter = next(self.model.parameters())
        if parameter.dtype != torch.float32 or parameter.device.type != "cpu":
            raise ValueError(
                f"entropy coding runs the prior in float32 on the CPU, not {parameter.dtype} on "
                f"{parameter.device}"
            )
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)


class _FloatTables:
    def __init__(self, predictor: FloatPredictor, steps: PriorSteps) -> None:
        self.predictor = predictor
        self.steps = steps

    def next(self, previous: Tensor | None) -> np.ndarray:
        t = self.steps.position
        logits = self.steps.next(previous)
        if self.predictor.stages > 1:
            offset = t // (self.predictor.length // self.predictor.stages)
            offset *= self.predictor.per_stage
            logits = logits[:, offset : offset + self.predictor.per_stage]
        return frequencies_from_logits(logits)


class ExactPredictor:
    """The prior's exact coding model: integer tables, the same on every machine. For grids of
    another size than the model's (`grid`, (H, W) per stage), each position's table comes from
    the model run over its window (vqtool.codes.window_tables)."""

    def __init__(self, model: ExactPrior, grid: tuple[int, int] | None = None) -> None:
        self.model = model
        self.stages = model.stages
        self.per_stage = model.per_stage
        own = model.grid
        self.grid = None if grid is None or own is None or same_grid(grid, own) else grid
        if grid is not None and own is None and model.per_position != grid[0] * grid[1]:
            raise ValueError(f"a model of {model.per_position} positions for a grid of {grid}")
        self.length = model.length
        if self.grid is not None:
            self.length = model.stages * self.grid[0] * self.grid[1]

    def steps(self, rows: int, known: Tensor | None = None, real: int | None = None) -> Tables:
        forced = ExactForced(self.model, PRECISION)
        if self.grid is not None:
            assert self.model.grid is not None  # a grid of its own is needed to differ from it
            grids = (self.grid, self.model.grid)
            return WindowTables(forced, rows, *grids, self.stages, known, real)
        if known is None:
            return _ExactTables(ExactSteps(self.model, rows, PRECISION))
        return _ForcedTables(forced, known)

    @contextlib.contextmanager
    def prepared(self) -> Iterator[None]:
        yield


class _ExactTables:
    def __init__(self, steps: ExactSteps) -> None:
        self.steps = steps

    def next(self, previous: Tensor | None) -> np.ndarray:
        return self.steps.next(previous).numpy()


class _ForcedTables:
    """The encoder's tables: every position's last layer in one teacher-forced pass (the same
    numbers as step by step: exact arithmetic), the head and the tables position by position
    (all positions' logits at once would be a large tensor to write and read back)."""

    def __init__(self, forced: ExactForced, known: Tensor) -> None:
        self.forced = forced
        self.outputs = forced.outputs(known)  # (rows, T, C)
        self.position = 0

    def next(self, previous: Tensor | None) -> np.ndarray:
        t = self.position
        self.position += 1
        logits = self.forced.position_logits(self.outputs[:, t], t)
        return self.forced.frequencies(logits).numpy()


class StreamError(ValueError):
    """A stream that cannot be the coding of the codes it claims (damaged or mismatched)."""


class _Cancelled(Exception):
    """Another chunk failed or the caller was interrupted: this chunk stops where it is."""


class Encoded(NamedTuple):
    words: np.ndarray  # uint32 (W,): the range coder's output
    bits: np.ndarray  # float64 (N,): each grid's information content under the integer model
    chunk_words: np.ndarray | None = None  # uint32 (C,): each chunk's share of words (prior)


def check_prior(
    prior: CodingPrior,
    checkpoint: str,
    num_embeddings: int,
    grid: tuple[int, int] | None = None,
    stages: int = 1,
) -> None:
    """Refuse a prior that cannot code these codes (UsageError, exit 2): `stages` stages of
    `grid` grids of `num_embeddings` codes each. A prior of S stages codes the first n <= S
    stages too: it predicts stage after stage, so a prefix never depends on what follows. Its
    exact coding model codes grids of any size (vqtool.models.windows); without one, only
    grids of its own size."""
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
    if model.stages < stages:
        raise UsageError(
            f"the prior was trained on {counted(model.stages, 'stage')} of codes, these have "
            f"{stages}",
            "--prior",
            f"encode with --stages {model.stages}, or train a prior on {counted(stages, 'stage')}",
        )
    per_stage = model.num_embeddings // model.stages
    prior_grid = (model.grid[0] // model.stages, model.grid[1])
    windows = prior.exact is not None and prior.exact.grid is not None
    if per_stage != num_embeddings or (grid is not None and prior_grid != grid and not windows):
        raise UsageError(
            f"the prior models {prior_grid[0]}x{prior_grid[1]} grids (HxW) of {per_stage} "
            f"codes, these are {_grid(grid)}grids of {num_embeddings}",
            "--prior",
            "encode images of the size the prior was trained on",
        )


def _grid(grid: tuple[int, int] | None) -> str:
    return "" if grid is None else f"{grid[0]}x{grid[1]} "


def code_frequencies(codes: np.ndarray, num_embeddings: int) -> np.ndarray:
    """The unigram table of a file: each code's count plus one, uint32 (K,); for codes of
    stages (N, S, h, w), one table per stage (S, K): each stage has a codebook of its own."""
    if codes.ndim == 4:
        stages = range(codes.shape[1])
        return np.stack([code_frequencies(codes[:, s], num_embeddings) for s in stages])
    counts = np.bincount(codes.reshape(-1), minlength=num_embeddings)
    return (counts + 1).astype(np.uint32)


def _bits(tables: np.ndarray, symbols: np.ndarray) -> np.ndarray:
    """-log2 of each symbol's probability under its integer table: (B, K), (B,) -> (B,)."""
    chosen = tables[np.arange(len(symbols)), symbols]
    return np.log2(tables.sum(-1)) - np.log2(chosen)


def _unigram_model(frequencies: np.ndarray) -> constriction.stream.model.Categorical:
    return constriction.stream.model.Categorical(frequencies.astype(np.float64), perfect=False)


def encode_unigram(codes: np.ndarray, frequencies: np.ndarray) -> Encoded:
    """Codes (N, h, w) -> words, with one static table (K,) for every symbol; codes of stages
    (N, S, h, w) with a table per stage (S, K), stage after stage over the whole file, so the
    first stages decode without the rest (`decode_unigram`'s `stages`)."""
    encoder = constriction.stream.queue.RangeEncoder()
    by_stage = codes[:, None] if codes.ndim == 3 else codes  # (N, S, h, w)
    tables = frequencies.reshape(by_stage.shape[1], -1)  # (S, K)
    bits = np.zeros(codes.shape[0])
    for stage, table in enumerate(tables):
        flat = by_stage[:, stage].reshape(codes.shape[0], -1)
        encoder.encode(flat.reshape(-1).astype(np.int32), _unigram_model(table))
        weights = table.astype(np.float64)
        bits += (np.log2(weights.sum()) - np.log2(weights))[flat].sum(1)
    return Encoded(encoder.get_compressed(), bits)


def decode_unigram(
    words: np.ndarray,
    frequencies: np.ndarray,
    shape: tuple[int, ...],
    stages: int | None = None,
) -> np.ndarray:
    """Words -> codes uint16 `shape` ((N, h, w), or (N, S, h, w) with tables (S, K)), or only
    the first `stages` stages of them; raises StreamError when the words do not fit."""
    decoder = constriction.stream.queue.RangeDecoder(words)
    staged = len(shape) == 4
    total = shape[1] if staged else 1
    wanted = total if stages is None else stages
    tables = frequencies.reshape(total, -1)
    per_stage = math.prod(shape) // total
    parts = []
    with _constriction_errors():
        for table in tables[:wanted]:
            parts.append(decoder.decode(_unigram_model(table), per_stage))
    if wanted == total:  # a prefix leaves the later stages' words unread
        _check_exhausted(decoder)
    n = shape[0]
    codes = np.stack([part.reshape(n, *shape[-2:]) for part in parts], axis=1)
    return codes.astype(np.uint16) if staged else codes[:, 0].astype(np.uint16)


def frequencies_from_logits(logits: Tensor) -> np.ndarray:
    """Logits (B, K) -> integer frequency tables as float64 (B, K): floor(p * 2**PRECISION),
    at least 1, p the softmax in the logits' dtype (float32 when coding)."""
    scaled = torch.softmax(logits, dim=-1).mul_(float(1 << PRECISION))
    return torch.floor(scaled).clamp_min_(1.0).double().numpy()


def chunks(n: int, size: int = CHUNK) -> Iterator[tuple[int, int, int]]:
    """(start, stop, rows run) of each chunk: `size` sequences, the last one padded to a power
    of two of at least MIN_ROWS. A function of n and size alone: encoder and decoder run the
    same."""
    for start in range(0, n, size):
        stop = min(start + size, n)
        yield start, stop, max(MIN_ROWS, 1 << (stop - start - 1).bit_length())


def coding_threads() -> int:
    """How many chunks are coded at once: the threads torch would use here."""
    return torch.get_num_threads()


@contextlib.contextmanager
def _coding_mode(predictor: Predictor) -> Iterator[None]:
    """The predictor made ready, and one torch thread per chunk."""
    # One torch thread per chunk: how many threads split a float matrix product changes its
    # rounding, and whole chunks on threads of their own use the cores best anyway.
    with predictor.prepared(), torch_threads(1):
        yield


# One position of one chunk: (t, tables (real rows, K)) -> the real rows' codes at t.
Step = Callable[[int, np.ndarray], np.ndarray]


def _chunk_steps(
    predictor: Predictor,
    real: int,
    rows: int,
    step: Step,
    shared: _Shared,
    positions: int | None = None,
    known: np.ndarray | None = None,
    adapt: bool = False,
) -> None:
    """Run the predictor over one chunk position by position, handing each position's tables
    for the `real` rows to `step`, which codes or decodes them and returns their codes;
    padding rows are fed DUMMY_CODE. The only place probabilities are computed, for encoder
    and decoder alike. Counts each position's codes in `shared`, and raises _Cancelled at the
    next position once it is cancelled.

    With stages, a position's table covers its own stage's K codes only (the prior gives the
    other stages' tokens no probability), and `step` sees and returns codes of that stage;
    the prior is fed the tokens s * K + code. `known`, the encoder's tokens (real, positions),
    lets the predictor compute every position's tables at once. `adapt` adapts each table to
    the codes of its grid so far (vqtool.codes.adaptive)."""
    per_position = predictor.length // predictor.stages
    adapter = Adapter(real, predictor.per_stage, per_position) if adapt else None
    with torch.inference_mode():  # per thread: inference mode does not cross threads
        steps = predictor.steps(rows, None if known is None else torch.from_numpy(known), real)
        previous: Tensor | None = None
        for t in range(predictor.length if positions is None else positions):
            if shared.cancelled.is_set():
                raise _Cancelled
            tables = steps.next(previous)[:real]
            if adapter is not None:
                tables = adapter.tables(t, tables)
            offset = t // per_position * predictor.per_stage
            fed = np.full(rows, DUMMY_CODE, np.int64)
            fed[:real] = step(t, tables)
            if adapter is not None:
                adapter.saw(fed[:real])
            fed[:real] += offset
            previous = torch.from_numpy(fed)
            shared.advance(real)


class _Shared:
    """What the chunks of one coding share: the flag that cancels them, and the count of codes
    done, reported through `report` (from the caller's thread) at most every REPORT_EVERY_S."""

    def __init__(self, report: Callable[[int], None] | None, in_caller: bool) -> None:
        self.cancelled = threading.Event()
        self.codes = 0
        self.report = report
        self.in_caller = in_caller  # the chunks run in the caller's thread: report from there
        self.lock = threading.Lock()
        self.last = time.monotonic()

    def advance(self, codes: int) -> None:
        with self.lock:
            self.codes += codes
        if self.in_caller and self.report is not None and self.due():
            self.report(self.codes)

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last < REPORT_EVERY_S:
            return False
        self.last = now
        return True


# One chunk's work: (start, stop, rows, shared) -> its result.
ChunkWork = Callable[[int, int, int, _Shared], Result]


def _each_chunk(
    predictor: Predictor,
    n: int,
    work: ChunkWork[Result],
    threads: int | None,
    on_progress: Progress | None,
    size: int,
    per_grid: int = 1,
) -> list[Result]:
    """work(start, stop, rows, shared) for every chunk of `size` of n grids, `threads` chunks
    at a time (default coding_threads()), results in chunk order. Chunks are independent, so
    the order in which they run changes nothing. `on_progress(done, total)` counts codes
    (`per_grid` a grid), so that it moves within a chunk too (a large image is one chunk).
    The first error (or an interrupt) cancels the other chunks at their next position and is
    raised."""
    threads = coding_threads() if threads is None else threads
    schedule = list(chunks(n, size))
    total = n * per_grid
    report = None if on_progress is None else (lambda done: on_progress(done, total))
    in_caller = threads <= 1 or len(schedule) == 1
    shared = _Shared(report, in_caller)
    with _CODING, _coding_mode(predictor):
        if in_caller:
            results = [work(start, stop, rows, shared) for start, stop, rows in schedule]
            if report is not None:
                report(total)
            return results
        pool = ThreadPoolExecutor(max_workers=min(threads, len(schedule)))
        try:
            futures = {pool.submit(work, *chunk, shared): chunk for chunk in schedule}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, REPORT_EVERY_S, FIRST_COMPLETED)
                for future in finished:
                    future.result()  # raises the chunk's error here, in the caller's thread
                if report is not None:
                    report(total if not pending else shared.codes)
            return [future.result() for future in futures]
        finally:
            shared.cancelled.set()  # a no-op after success; after an error, the others stop
            pool.shutdown(wait=True, cancel_futures=True)


def predictor_for(model: CodePrior | ExactPrior, grid: tuple[int, int]) -> Predictor:
    """The float prior's predictor, or its exact coding model's, for codes of `grid` (H, W)
    per stage: the exact model codes a grid of any size, the float prior its own only."""
    if isinstance(model, ExactPrior):
        return ExactPredictor(model, grid)
    if tuple(grid) != (model.grid[0] // model.stages, model.grid[1]):
        raise ValueError(f"the float prior codes {model.grid} grids only, not {grid}")
    return FloatPredictor(model)


def window_coded(model: ExactPrior, grid: tuple[int, int]) -> bool:
    """Whether the exact model codes `grid` (H, W) window by window: a grid not its own."""
    return adapts(ExactPredictor(model, grid))


def adapts(predictor: Predictor) -> bool:
    """Whether `adapt` adapts this predictor's tables: the exact model's over a grid of another
    size than its own, coded window by window (a photo's). Grids of its own size (CIFAR-10's)
    are the images it learned from, and too small for counts to say much."""
    return isinstance(predictor, ExactPredictor) and predictor.grid is not None


def encode_with_prior(
    codes: np.ndarray,
    model: CodePrior | ExactPrior,
    on_progress: Progress | None = None,
    threads: int | None = None,
    chunk_size: int | None = None,
    count_bits: bool = True,
    adapt: bool = False,
) -> Encoded:
    """Codes (N, h, w) or (N, S, h, w) -> words, each symbol coded with the model's prediction
    for it (an ExactPrior: the same on any machine); each chunk of `chunk_size` grids (CHUNK
    for the float prior, EXACT_CHUNK for the exact model) is a stream of its own
    (`Encoded.chunk_words`), coding stage after stage, so that a decode of the first stages
    stops early. `on_progress(done, total)` counts codes. Without `count_bits` (a file needs
    the words alone) `Encoded.bits` is NaN. With `adapt`, a grid coded window by window (of
    another size than the exact model's) has its tables adapted to its own codes so far
    (vqtool.codes.adaptive); other grids are coded as without."""
    predictor = predictor_for(model, (codes.shape[-2], codes.shape[-1]))
    adapt = adapt and adapts(predictor)
    size = default_chunk(model) if chunk_size is None else chunk_size
    n = codes.shape[0]
    flat = codes.reshape(n, -1).astype(np.int32)  # stage after stage: codes of each stage
    per_position = predictor.length // predictor.stages
    offsets = np.arange(flat.shape[1]) // per_position * predictor.per_stage  # tokens s K + c

    def chunk(start: int, stop: int, rows: int, shared: _Shared) -> tuple[np.ndarray, np.ndarray]:
        encoder = constriction.stream.queue.RangeEncoder()
        family = constriction.stream.model.Categorical(perfect=False)
        bits = np.zeros(stop - start) if count_bits else np.full(stop - start, np.nan)

        def step(t: int, tables: np.ndarray) -> np.ndarray:
            symbols = flat[start:stop, t]
            encoder.encode(symbols, family, tables)
            if count_bits:
                bits[:] += _bits(tables, symbols)
            return symbols

        known = flat[start:stop].astype(np.int64) + offsets
        _chunk_steps(predictor, stop - start, rows, step, shared, flat.shape[1], known, adapt)
        return encoder.get_compressed(), bits

    parts = _each_chunk(predictor, n, chunk, threads, on_progress, size, flat.shape[1])
    words = [part[0] for part in parts]
    return Encoded(
        np.concatenate(words).astype(np.uint32),
        np.concatenate([part[1] for part in parts]),
        np.array([len(w) for w in words], np.uint32),
    )


def default_chunk(model: CodePrior | ExactPrior) -> int:
    """Grids per chunk: EXACT_CHUNK for the exact model, CHUNK for the float prior."""
    return EXACT_CHUNK if isinstance(model, ExactPrior) else CHUNK


def exact_chunk(model: ExactPrior, groups: Sequence[tuple[tuple[int, int], int]]) -> int:
    """Grids per chunk for a file of `groups`, (grid (H, W), images) each: a quarter of the
    largest group's images, between WINDOW_CHUNK and EXACT_CHUNK, when every grid is the
    model's own; WINDOW_CHUNK when one is not (see EXACT_CHUNK). Fewer when the decoder's
    caches for that many would exceed CACHE_BYTES (a deep, wide model over many positions)."""
    own = model.grid
    if any(own is not None and not same_grid(grid, own) for grid, _ in groups):
        return WINDOW_CHUNK
    largest = max((images for _, images in groups), default=0)
    return min(EXACT_CHUNK, max(WINDOW_CHUNK, -(-largest // 4)), _cache_rows(model))


def _cache_rows(model: ExactPrior) -> int:
    """The most grids whose decoder caches fit CACHE_BYTES (at least 1)."""
    return max(1, CACHE_BYTES // ExactSteps.cache_bytes(model))


def largest_chunk(model: ExactPrior) -> int:
    """The most grids a chunk of a file may ask `model`'s decoder to hold at once: what
    exact_chunk writes, or WINDOW_CHUNK (every earlier vqtool's chunk), so that a damaged or
    crafted header cannot make the caches outgrow memory."""
    return max(WINDOW_CHUNK, min(EXACT_CHUNK, _cache_rows(model)))


def chunk_spans(
    chunk_words: np.ndarray, n: int, words: int, size: int = CHUNK
) -> list[tuple[int, int]]:
    """Each chunk's (first word, end) in a stream of `words` words for n grids in chunks of
    `size`, from the chunk lengths; raises StreamError when they cannot be the chunks of such
    a stream."""
    expected = len(range(0, n, size))
    total = int(chunk_words.sum(dtype=np.uint64))
    if len(chunk_words) != expected or total != words:
        raise StreamError(
            f"{len(chunk_words)} chunk lengths adding up to {total} words, for {expected} "
            f"chunks of a stream of {words} words"
        )
    if len(chunk_words) and chunk_words.min() == 0:
        raise StreamError("a chunk length of 0 words: every chunk codes at least one symbol")
    ends = np.cumsum(chunk_words, dtype=np.int64).tolist()
    return list(zip([0, *ends[:-1]], ends, strict=True))


def decode_with_prior(
    words: np.ndarray,
    chunk_words: np.ndarray,
    model: CodePrior | ExactPrior,
    shape: tuple[int, ...],
    on_progress: Progress | None = None,
    threads: int | None = None,
    stages: int | None = None,
    chunk_size: int | None = None,
    adapt: bool = False,
) -> np.ndarray:
    """Words -> codes uint16 `shape` ((N, h, w) or (N, S, h, w)), or only their first `stages`
    stages (each chunk's decoder stops there); raises StreamError when the words do not fit.
    `on_progress(done, total)` counts codes; `adapt` as the encoder had it."""
    predictor = predictor_for(model, (shape[-2], shape[-1]))
    adapt = adapt and adapts(predictor)
    size = default_chunk(model) if chunk_size is None else chunk_size
    n = shape[0]
    spans = chunk_spans(chunk_words, n, len(words), size)
    total = shape[1] if len(shape) == 4 else 1
    wanted = total if stages is None else stages
    positions = predictor.length // predictor.stages * wanted
    decoded = np.empty((n, positions), np.uint16)

    def chunk(start: int, stop: int, rows: int, shared: _Shared) -> None:
        begin, end = spans[start // size]
        decoder = constriction.stream.queue.RangeDecoder(words[begin:end])
        family = constriction.stream.model.Categorical(perfect=False)

        def step(t: int, tables: np.ndarray) -> np.ndarray:
            with _constriction_errors():
                symbols = decoder.decode(family, tables)
            decoded[start:stop, t] = symbols
            return symbols

        _chunk_steps(predictor, stop - start, rows, step, shared, positions, adapt=adapt)
        if wanted == total:  # a prefix leaves the later stages' words unread
            _check_exhausted(decoder)

    _each_chunk(predictor, n, chunk, threads, on_progress, size, positions)
    return decoded.reshape(shape if len(shape) == 3 else (n, wanted, *shape[2:]))


@contextlib.contextmanager
def _constriction_errors() -> Iterator[None]:
    # constriction reports words that no symbol can have produced with an AssertionError.
    try:
        yield
    except (AssertionError, ValueError, RuntimeError) as exc:
        raise StreamError(f"the stream cannot be decoded ({first_line(exc, 120)})") from exc


def _check_exhausted(decoder: constriction.stream.queue.RangeDecoder) -> None:
    if not decoder.maybe_exhausted():
        raise StreamError("the stream holds more words than its codes need")
