"""A CodePrior in exact arithmetic: the coding model whose predictions are the same numbers on
every machine, so that a file it codes decodes anywhere.

Float predictions differ between machines in their last bits (another SIMD width, BLAS kernel,
thread count or torch version sums in another order or fuses multiply-adds), and a range decoder
fed a table that differs by one count loses the stream. This model is derived from a trained
CodePrior after training and computes by three rules:

- Every tensor that is summed holds integers, and every sum of products stays below the
  largest integer its float type holds exactly (2**24 in float32: linear layers, attention
  scores and mixing; 2**53 in float64: a norm's variance, the probabilities' total). Weights
  are integers, activations are integers clamped to bounds chosen for that (`check_bounds`
  checks every bound from the stored integers), so each partial sum is exact and the result is
  the same in any order, with or without fused multiply-adds: any BLAS, SIMD width, thread
  count or device.
- Every other step is a single IEEE 754 operation (a product, a quotient, a square root: the
  standard rounds each correctly, so every conforming CPU and GPU gives the same bits)
  followed by rounding to an integer, or an exact one (a power of two, floor, clamp, max).
- No transcendental function runs while coding: GELU and exp are lookup tables computed once
  when the model is derived and stored with it.

Layer norms' gains and biases are folded into the linear layer after them, so a norm only
normalizes. A position's prediction runs like `PriorSteps` (one query over the written slots),
and ends in an integer frequency table over the position's own stage's codes: p from an exp
table at each logit's distance below the largest, then floor(p * 2**precision / sum p), at
least 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from vqtool.models.transformer import Block, CodePrior

EXACT = 2.0**53  # every integer below this is a float64, and so is every sum of them below it
EXACT32 = 2.0**24  # the same for float32
INPUT_BITS = 10  # a linear layer's inputs are clamped to +-(2**10 - 1)
INPUT_LIMIT = 2.0**INPUT_BITS - 1
GELU_BITS = 15  # the GELU table covers inputs +-2**15 (its input's units)
GELU_LIMIT = 2.0**GELU_BITS
SCORE_FRACTION = 8  # attention scores and logits in units of 2**-8 nat
EXP_BITS = 8  # attention weights: round(2**8 * exp(-i / 2**8))
LOGIT_EXP_BITS = 24  # output probabilities before normalization: round(2**24 * exp(...))
LOGIT_LIMIT = 2.0**22  # logits (units 2**-8 nat) stay below this: their differences are exact
CALIBRATION_MARGIN = 2.0  # clamps sit at twice the largest value the calibration codes reach
MAX_PRECISION = 24  # the largest frequency precision a table may be scaled to
NORM_EPS = 1e-5  # nn.LayerNorm's default, the CodePrior's norms
# Settings under which this machine's float arithmetic is another machine's (they act only in a
# process started with them, before torch is imported): what the exactness is checked against,
# by the tests and benchmarks/check_portable.py.
OTHER_MACHINES = {
    "no vector kernels": {"ATEN_CPU_CAPABILITY": "default"},
    "AVX2 CPU": {"ATEN_CPU_CAPABILITY": "avx2"},
    "oneDNN on AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "SSE4.2 BLAS": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "one thread": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
}


def residual_bits(width: int) -> int:
    """The residual stream is clamped below 2**bits so that a norm's squared deviations
    (C x - sum x)**2, up to (2 C 2**bits)**2 each, sum exactly in float64 over C channels."""
    return min(23, math.floor((math.log2(EXACT) - 3 * math.log2(width)) / 2 - 1))


def query_bits(head_dim: int) -> int:
    """Queries and keys are clamped below 2**bits so that a float32 score, head_dim products
    of two of them, and the difference of two scores are exact (below 2**24)."""
    return math.floor((math.log2(EXACT32) - 1 - math.log2(head_dim)) / 2)


def value_bits(length: int) -> int:
    """Values are clamped below 2**bits so that the float32 sum over up to `length` slots of
    weight (at most 2**EXP_BITS) times value is exact (below 2**24)."""
    return int(math.log2(EXACT32)) - EXP_BITS - math.ceil(math.log2(length))


class ExactLinear(NamedTuple):
    """y = round((b + z W^T) * scale) for inputs |z| <= INPUT_LIMIT, all float32: weight
    integers (O, I), bias integers in the product's units (O,), and the scale (O,) from the
    product's units to the output's. Each channel's |b| + sum |W| * INPUT_LIMIT is below
    2**24, so the product is exact."""

    weight: Tensor
    bias: Tensor
    scale: Tensor

    def __call__(self, z: Tensor, out: Tensor | None = None) -> Tensor:
        """The outputs (rows, O), into `out` when given."""
        return torch.addmm(self.bias, z, self.weight.t(), out=out).mul_(self.scale).round_()

    def rows(self, start: int, stop: int) -> ExactLinear:
        """Output channels start..stop-1 alone."""
        return ExactLinear(self.weight[start:stop], self.bias[start:stop], self.scale[start:stop])


class ExactLayer(NamedTuple):
    qkv: ExactLinear  # output: queries and keys (query units), values (value units)
    proj: ExactLinear  # output: residual units
    fc1: ExactLinear  # output: GELU table units, clamped to +-2**GELU_BITS
    fc2: ExactLinear  # output: residual units
    gelu: Tensor  # (2 * 2**GELU_BITS + 1,): GELU of each input, in fc2's input units


@dataclass(frozen=True)
class Fractions:
    """Fixed-point scales (fraction bits: a value v is held as round(v * 2**bits))."""

    residual: int  # the residual stream, token and position embeddings
    norm: int  # a norm's outputs (qkv's, fc1's and the head's inputs)
    query: int  # queries and keys (one scale, so a score is q . k in units of 2**-(2 q))
    value: int  # values
    mix: int  # the attention's output (proj's input)
    gelu_in: int  # fc1's outputs, the GELU table's index units
    gelu_out: int  # the GELU table's outputs, fc2's inputs


@dataclass(frozen=True)
class ExactPrior:
    """The integer coding model of a CodePrior (see the module's docstring), float32 tensors of
    whole numbers but the scales.

    Shapes: tokens (K + 1, C) and positions (T, C) in residual units; per layer an ExactLayer;
    head over every token (the caller takes a stage's rows).
    """

    width: int
    heads: int
    length: int  # positions T of the token sequence (stages after each other)
    num_embeddings: int  # tokens over all stages
    stages: int
    fractions: Fractions
    tokens: Tensor
    positions: Tensor
    layers: tuple[ExactLayer, ...]
    head: ExactLinear  # output: logits in units of 2**-SCORE_FRACTION nat
    attention_exp: Tensor  # (n,): round(2**EXP_BITS * exp(-i / 2**SCORE_FRACTION)), 0 last
    logit_exp: Tensor  # (n,) float64: round(2**LOGIT_EXP_BITS * exp(...)), 0 last
    # (h, w): each stage's grid, the window that codes larger grids (vqtool.models.windows);
    # None for a model stored before windows, which codes its own grid only.
    grid: tuple[int, int] | None = None

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def per_stage(self) -> int:
        return self.num_embeddings // self.stages

    @property
    def per_position(self) -> int:
        return self.length // self.stages


def exp_table(bits: int) -> Tensor:
    """round(2**bits * exp(-i / 2**SCORE_FRACTION)) for i = 0.. until it rounds to 0 (kept as
    the last entry: a difference beyond the table weighs nothing), float64."""
    unit = 2.0**SCORE_FRACTION
    stop = math.ceil((bits + 1) * math.log(2.0) * unit) + 1
    table = torch.round(torch.exp(-torch.arange(stop, dtype=torch.float64) / unit) * 2.0**bits)
    last = int(torch.nonzero(table == 0)[0])
    return table[: last + 1]


def _bits_for(maximum: float, bits: int) -> int:
    """The fraction bits that hold +-maximum below 2**bits."""
    return bits - max(0, math.ceil(math.log2(max(maximum, 2.0**-30)) + 1e-9))


def _linear(weight: Tensor, bias: Tensor, input_bits: int, output_bits: int) -> ExactLinear:
    """A float layer (O, I), (O,) as integers, inputs in units of 2**-input_bits, outputs of
    2**-output_bits: per output channel the weight scale s that brings |b| + sum |W| *
    INPUT_LIMIT to the float32 budget (what rounding may add kept aside)."""
    weight, bias = weight.double(), bias.double()
    budget = EXACT32 - 1 - (weight.shape[1] * INPUT_LIMIT + 1) / 2
    need = weight.abs().sum(1) * INPUT_LIMIT + bias.abs() * 2.0**input_bits
    scale = (need / budget).clamp_min(2.0**-60)  # (O,)
    integers = torch.round(weight / scale[:, None])
    product_unit = scale * 2.0**-input_bits  # one unit of z W^T in real terms
    bias_units = torch.round(bias / product_unit)
    output = product_unit * 2.0**output_bits
    return ExactLinear(integers.float(), bias_units.float(), output.float())


def _folded(norm: torch.nn.LayerNorm, linear: torch.nn.Linear) -> tuple[Tensor, Tensor]:
    """The linear layer after a norm with the norm's gain and bias folded in: W diag(g),
    b + W beta (float64)."""
    weight, bias = linear.weight.double(), linear.bias.double()
    gain, shift = norm.weight.double(), norm.bias.double()
    return weight * gain, bias + weight @ shift


class _Ranges(NamedTuple):
    residual: float
    norm: float
    query: float
    value: float
    gelu_in: float
    gelu_out: float


@torch.no_grad()
def _calibrate(model: CodePrior, tokens: Tensor) -> _Ranges:
    """The largest magnitudes the float model reaches on `tokens` (B, T), with a margin: the
    residual stream, the norms' outputs (before their gains), queries and keys, values, and
    fc1's outputs and their GELU."""
    seen = dict.fromkeys(_Ranges._fields, 0.0)

    def note(key: str, value: Tensor) -> Tensor:
        seen[key] = max(seen[key], float(value.abs().max()))
        return value

    def normalized(x: Tensor) -> Tensor:
        return note("norm", F.layer_norm(x, (model.config.width,), eps=NORM_EPS))

    b, c = tokens.shape[0], model.config.width
    start = model.tokens.weight[model.num_embeddings].expand(b, 1, -1)
    x = torch.cat([start, model.tokens(tokens[:, :-1])], 1) + model.positions
    note("residual", x)
    for block in _blocks(model):
        normalized(x)
        qkv = block.attn.qkv(block.norm1(x)).view(b, -1, 3, c)
        note("query", qkv[:, :, :2])
        note("value", qkv[:, :, 2])
        x = note("residual", x + block.attn(block.norm1(x)))
        normalized(x)
        hidden = note("gelu_in", block.mlp[0](block.norm2(x)))
        note("gelu_out", F.gelu(hidden))
        x = note("residual", x + block.mlp(block.norm2(x)))
    normalized(x)
    note("residual", model.tokens.weight)
    note("residual", model.positions)
    return _Ranges(**{k: v * CALIBRATION_MARGIN for k, v in seen.items()})


def _blocks(model: CodePrior) -> Iterator[Block]:
    for block in model.blocks:
        assert isinstance(block, Block)
        yield block


@torch.no_grad()
def derive(model: CodePrior, calibration: Tensor) -> ExactPrior:
    """The exact coding model of `model` (float, eval mode), its clamps set from the values the
    float model reaches on `calibration`, token sequences (B, T) int64 of its training codes."""
    cfg = model.config
    if cfg.conditional:
        raise ValueError("a conditional prior needs labels; coding has none")
    ranges = _calibrate(model.eval(), calibration)
    c, head_dim = cfg.width, cfg.width // cfg.heads
    fractions = Fractions(
        residual=_bits_for(ranges.residual, residual_bits(c)),
        norm=_bits_for(min(ranges.norm, math.sqrt(c)), INPUT_BITS),
        query=_bits_for(ranges.query, query_bits(head_dim)),
        value=_bits_for(ranges.value, value_bits(model.length)),
        mix=_bits_for(ranges.value, INPUT_BITS),  # a weighted mean of values
        gelu_in=_bits_for(ranges.gelu_in, GELU_BITS),
        gelu_out=_bits_for(max(ranges.gelu_out, 0.17), INPUT_BITS),
    )
    f = fractions
    inputs = torch.arange(-(2**GELU_BITS), 2**GELU_BITS + 1, dtype=torch.float64)
    gelu = torch.round(F.gelu(inputs * 2.0**-f.gelu_in) * 2.0**f.gelu_out)
    gelu = gelu.clamp_(-INPUT_LIMIT, INPUT_LIMIT).float()
    layers = []
    for block in _blocks(model):
        qkv_w, qkv_b = _folded(block.norm1, block.attn.qkv)
        qkv = _linear(qkv_w, qkv_b, f.norm, f.query)
        # values in their own units: qkv's last third, the same integers and bias units
        value_scale = qkv.scale[2 * c :] * 2.0 ** (f.value - f.query)  # a power of two: exact
        qkv = qkv._replace(scale=torch.cat([qkv.scale[: 2 * c], value_scale]))
        proj = block.attn.proj
        fc1 = block.mlp[0]
        fc2 = block.mlp[2]
        assert isinstance(fc1, torch.nn.Linear) and isinstance(fc2, torch.nn.Linear)
        fc1_w, fc1_b = _folded(block.norm2, fc1)
        layers.append(
            ExactLayer(
                qkv,
                _linear(proj.weight, proj.bias, f.mix, f.residual),
                _linear(fc1_w, fc1_b, f.norm, f.gelu_in),
                _linear(fc2.weight, fc2.bias, f.gelu_out, f.residual),
                gelu,
            )
        )
    head_w, head_b = _folded(model.norm, model.head)
    residual, limit = 2.0**f.residual, 2.0 ** residual_bits(c) - 1
    exact = ExactPrior(
        width=c,
        heads=cfg.heads,
        length=model.length,
        num_embeddings=model.num_embeddings,
        stages=model.stages,
        fractions=fractions,
        tokens=torch.round(model.tokens.weight.double() * residual).clamp_(-limit, limit).float(),
        positions=torch.round(model.positions.double() * residual).clamp_(-limit, limit).float(),
        layers=tuple(layers),
        head=_linear(head_w, head_b, f.norm, SCORE_FRACTION),
        attention_exp=exp_table(EXP_BITS).float(),
        logit_exp=exp_table(LOGIT_EXP_BITS),
        grid=(model.grid[0] // model.stages, model.grid[1]),
    )
    check_bounds(exact)
    return exact


def _sum_bound(linear: ExactLinear) -> Tensor:
    """Each output channel's largest |b + z W^T| for |z| <= INPUT_LIMIT (float64)."""
    return linear.weight.double().abs().sum(1) * INPUT_LIMIT + linear.bias.double().abs()


def check_bounds(model: ExactPrior) -> None:
    """Raise ValueError unless every sum of products the model computes is exact in any order
    (float32 below 2**24, float64 below 2**53), and its weights and tables are whole numbers
    within their bounds."""
    linears = {"head": model.head}
    for i, layer in enumerate(model.layers):
        linears |= {f"layer {i} {name}": getattr(layer, name) for name in ExactLayer._fields[:4]}
        if layer.gelu.shape != (2 * 2**GELU_BITS + 1,) or layer.gelu.abs().max() > INPUT_LIMIT:
            raise ValueError(f"layer {i}'s GELU table does not fit its bounds")
    over = [name for name, lin in linears.items() if float(_sum_bound(lin).max()) >= EXACT32]
    logits = _sum_bound(model.head) * model.head.scale.double()
    if float(logits.max()) >= LOGIT_LIMIT:
        over.append("logits")
    if model.length * 2.0**EXP_BITS * 2.0 ** value_bits(model.length) > EXACT32:
        over.append("attention mix")
    if float(model.attention_exp.max()) > 2.0**EXP_BITS:
        over.append("attention weights")
    if float(model.logit_exp.max()) > 2.0**LOGIT_EXP_BITS or model.logit_exp.dtype != torch.float64:
        over.append("probabilities")
    if over:
        raise ValueError(f"sums of products could be inexact in: {', '.join(over)}")
    tensors = [model.tokens, model.positions, model.attention_exp, model.logit_exp]
    tensors += [layer.gelu for layer in model.layers]
    tensors += [t for lin in linears.values() for t in (lin.weight, lin.bias)]
    if any(bool((t != torch.round(t)).any()) for t in tensors):
        raise ValueError("a weight or table of the exact model is not a whole number")
    limit = 2.0 ** residual_bits(model.width)
    if max(float(model.tokens.abs().max()), float(model.positions.abs().max())) >= limit:
        raise ValueError("the embeddings exceed the residual stream's bound")


class _Arithmetic:
    """What the step-by-step and the teacher-forced runs of the exact model share: its
    constants, the norm and the frequency tables, so both compute each number by the same
    operations."""

    def __init__(self, model: ExactPrior, precision: int) -> None:
        if not 1 <= precision <= MAX_PRECISION:
            raise ValueError(f"precision {precision} is outside 1..{MAX_PRECISION}")
        self.model = model
        self.precision = 2.0**precision
        f, c = model.fractions, model.width
        # attention scores q . k (units 2**-2q) -> 2**-SCORE_FRACTION nat, / sqrt(head_dim)
        self.score_scale = 2.0 ** (SCORE_FRACTION - 2 * f.query) / math.sqrt(model.head_dim)
        self.mix_scale = 2.0 ** (f.mix - f.value)  # a power of two: exact
        self.query_limit = 2.0 ** query_bits(model.head_dim) - 1
        self.value_limit = 2.0 ** value_bits(model.length) - 1
        self.limit = 2.0 ** residual_bits(c) - 1
        limits = [self.query_limit] * (2 * c) + [self.value_limit] * c
        self.qkv_limit = torch.tensor(limits)  # (3 C,): queries and keys, then values
        # The feed-forward's hidden layer, its table indices and GELU outputs: the largest
        # tensors of a pass, written into the same memory each time rather than fresh memory
        # (which the system hands over page by page). Hence one instance per thread.
        self.hidden = [torch.empty(0, 0), torch.empty(0, 0, dtype=torch.int32), torch.empty(0, 0)]
        # norm: the divisor sqrt(sum d**2 / C + eps C**2 4**residual), d = C x - sum x
        self.inverse_width = 1.0 / c
        self.norm_eps = NORM_EPS * c**2 * 4.0**f.residual
        self.norm_out = 2.0**f.norm
        self.inverse_precision = 1.0 / self.precision  # a power of two: exact

    def _norm(self, x: Tensor) -> Tensor:
        """Each row to mean 0 and variance 1 (no gain: folded into the next layer), float32
        integers: the deviations d = C x - sum x and their squares' sum are exact in float64;
        the row's divisor is single IEEE operations."""
        wide = x.double()
        d = wide.mul_(self.model.width).sub_(x.sum(-1, keepdim=True, dtype=torch.float64))
        variance = torch.linalg.vecdot(d, d).unsqueeze_(-1)
        divisor = variance.mul_(self.inverse_width).add_(self.norm_eps).sqrt_()
        z = d.mul_(divisor.reciprocal_().mul_(self.norm_out)).round_()
        return z.clamp_(-INPUT_LIMIT, INPUT_LIMIT).float()

    def _qkv(self, layer: ExactLayer, x: Tensor) -> Tensor:
        """Queries, keys and values (rows, 3 C) of residual rows (rows, C), clamped."""
        return layer.qkv(self._norm(x)).clamp_(-self.qkv_limit, self.qkv_limit)

    def _weights(self, scores: Tensor) -> Tensor:
        """Attention weights from the exp table at each score's distance below its row's
        largest (scores of slots a row may not see are -inf: weight 0)."""
        table = self.model.attention_exp
        below = (scores.amax(-1, keepdim=True) - scores).mul_(self.score_scale).round_()
        index = below.clamp_(max=len(table) - 1).to(torch.int32).view(-1)
        return table.index_select(0, index).view_as(scores)

    def _mix(self, weights: Tensor, values: Tensor) -> Tensor:
        """The weighted mean of values, rounded and clamped to proj's inputs."""
        total = weights.sum(-1, keepdim=True)
        mixed = torch.bmm(weights, values).mul_(self.mix_scale).div_(total)
        return mixed.round_().clamp_(-INPUT_LIMIT, INPUT_LIMIT)

    def _feed_forward(self, layer: ExactLayer, x: Tensor) -> Tensor:
        rows, width = x.shape[0], layer.fc1.weight.shape[0]
        if self.hidden[0].shape[0] < rows:
            self.hidden = [torch.empty(rows, width, dtype=b.dtype) for b in self.hidden]
        hidden, index, gelu = (b[:rows] for b in self.hidden)  # the first rows: contiguous
        layer.fc1(self._norm(x), out=hidden).clamp_(-GELU_LIMIT, GELU_LIMIT).add_(GELU_LIMIT)
        torch.index_select(layer.gelu, 0, index.copy_(hidden).view(-1), out=gelu.view(-1))
        return x.add_(layer.fc2(gelu)).clamp_(-self.limit, self.limit)

    def _logits(self, x: Tensor, stage: int) -> Tensor:
        """Logits (rows, K_s) over stage `stage`'s codes, in 2**-SCORE_FRACTION nat."""
        model = self.model
        head = model.head.rows(stage * model.per_stage, (stage + 1) * model.per_stage)
        return head(self._norm(x))

    def frequencies(self, logits: Tensor) -> Tensor:
        """Logits (B, K_s) in 2**-SCORE_FRACTION nat -> floor(p * 2**precision / sum p), at
        least 1, p from the exp table at each logit's distance below the row's largest
        (float64)."""
        table = self.model.logit_exp
        below = (logits.amax(-1, keepdim=True) - logits).clamp_(max=len(table) - 1)
        p = table.index_select(0, below.to(torch.int32).view(-1)).view(logits.shape)
        # p * 2**precision / total computed as p / (total / 2**precision): the same quotient,
        # rounded once (scaling by a power of two is exact), and one pass fewer.
        total = p.sum(-1, keepdim=True).mul_(self.inverse_precision)
        return p.div_(total).floor_().clamp_min_(1.0)


class ExactSteps(_Arithmetic):
    """The exact model's frequency tables for `rows` sequences, one position per `next` call
    (like PriorSteps). Not thread-safe: one per thread."""

    def __init__(self, model: ExactPrior, rows: int, precision: int) -> None:
        super().__init__(model, precision)
        self.rows = rows
        shape = (rows * model.heads, model.length, model.head_dim)
        # Every position attends over all the caches' slots, those not yet written masked:
        # whole contiguous caches go to the matrix products as they are, where slots 0..t of
        # them would be copied first (a slice's matrices lie apart). A masked slot weighs
        # exactly 0, and its zeros add exactly 0 (NaN would not: hence zeros, not empty).
        self.keys = [torch.zeros(shape) for _ in model.layers]
        self.values = [torch.zeros(shape) for _ in model.layers]
        self.position = 0

    @staticmethod
    def cache_bytes(model: ExactPrior) -> int:
        """The bytes of one row's key and value caches."""
        return 2 * len(model.layers) * model.length * model.width * 4

    def next(self, previous: Tensor | None) -> Tensor:
        """Frequency tables (rows, K_s) float64 of integers >= 1 for position `self.position`
        over its stage's K_s codes, fed the tokens (rows,) int64 at the position before (None
        at position 0)."""
        model = self.model
        t = self.position
        if t >= model.length:
            raise ValueError(f"all {model.length} positions are done")
        if (previous is None) != (t == 0):
            raise ValueError("previous must be None exactly at the first position")
        if previous is None:
            x = model.tokens[model.num_embeddings].expand(self.rows, -1)
        else:
            x = model.tokens.index_select(0, previous)
        x = (x + model.positions[t]).clamp_(-self.limit, self.limit)  # (B, C)
        for i, layer in enumerate(model.layers):
            x = self._block(layer, x, i, t)
        self.position = t + 1
        return self.frequencies(self._logits(x, t // model.per_position))

    def _block(self, layer: ExactLayer, x: Tensor, index: int, t: int) -> Tensor:
        b, h, d, c = self.rows, self.model.heads, self.model.head_dim, self.model.width
        qkv = self._qkv(layer, x).view(b, 3, h, d)
        keys, values = self.keys[index], self.values[index]
        keys.view(b, h, -1, d)[:, :, t] = qkv[:, 1]
        values.view(b, h, -1, d)[:, :, t] = qkv[:, 2]
        query = qkv[:, 0].reshape(b * h, 1, d)
        scores = torch.bmm(query, keys.transpose(1, 2))  # (B H, 1, T)
        scores[:, :, t + 1 :] = -math.inf
        weights = self._weights(scores)
        mixed = self._mix(weights, values).view(b, c)
        x = x.add_(layer.proj(mixed)).clamp_(-self.limit, self.limit)
        return self._feed_forward(layer, x)


class ExactForced(_Arithmetic):
    """The exact model's tables for sequences whose every token is known (the encoder's case),
    all positions in one pass with a causal mask: the same operations on the same integers as
    ExactSteps, so the same tables to the bit (every sum is exact in any order and shape, and
    a masked slot weighs exactly 0), many times faster than one position at a time."""

    # Sequences per pass: as many as keep attention's (B H, T, T) tensors to this many
    # elements, small enough to stay in a core's cache.
    ELEMENTS = 1 << 17

    def logits(
        self, tokens: Tensor, positions: Tensor | None = None, at: slice | None = None
    ) -> Tensor:
        """Tokens (B, T) int64 -> each position's logits over its stage's codes (B, T, K_s), in
        2**-SCORE_FRACTION nat, or the positions `at` alone (B, len, K_s). The tokens sit at the
        first T positions (whole stages), or at `positions` (T,) int64 (a window of a larger
        grid, vqtool.models.windows; any length)."""
        positions, at = self._checked(tokens, positions, at)
        stages = positions[at] // self.model.per_position
        x = self._outputs(tokens, positions, at)  # (B, len, C)
        c = self.model.width
        logits = [
            self._logits(x[:, begin:end].reshape(-1, c), stage).view(len(x), end - begin, -1)
            for begin, end, stage in _stage_runs(stages)
        ]
        return logits[0] if len(logits) == 1 else torch.cat(logits, 1)

    def outputs(
        self, tokens: Tensor, positions: Tensor | None = None, at: slice | None = None
    ) -> Tensor:
        """What the last layer gives the head (B, len, C) at the positions `at` (default all),
        for `logits`' tokens and positions: `position_logits` turns a position's into its
        logits, without holding every position's logits at once (the encoder's case)."""
        return self._outputs(tokens, *self._checked(tokens, positions, at))

    def _outputs(self, tokens: Tensor, positions: Tensor, at: slice) -> Tensor:
        """`outputs` of checked positions and slice."""
        t = tokens.shape[1]
        block = max(1, self.ELEMENTS // (self.model.heads * t * t))
        parts = [self._block_outputs(part, positions, at) for part in tokens.split(block)]
        if not parts:
            return torch.zeros(0, len(range(t)[at]), self.model.width)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def position_logits(self, outputs: Tensor, position: int) -> Tensor:
        """`outputs` (B, C) at the model's position `position` -> logits (B, K_s) over that
        position's stage's codes."""
        return self._logits(outputs, position // self.model.per_position)

    def _checked(
        self, tokens: Tensor, positions: Tensor | None, at: slice | None
    ) -> tuple[Tensor, slice]:
        model, t = self.model, tokens.shape[1]
        if positions is None:
            if not 0 < t <= model.length or t % model.per_position:
                raise ValueError(f"tokens of {t} positions: not whole stages")
            positions = torch.arange(t)
        elif positions.shape != (t,) or not 0 < t <= model.length:
            raise ValueError(f"{t} tokens at {tuple(positions.shape)} positions")
        return positions, slice(0, t) if at is None else slice(*at.indices(t))

    def _block_outputs(self, tokens: Tensor, positions: Tensor, at: slice) -> Tensor:
        model = self.model
        (b, t), c = tokens.shape, model.width
        start = torch.full((b, 1), model.num_embeddings, dtype=torch.int64)
        fed = torch.cat([start, tokens[:, :-1]], 1).reshape(-1)
        x = model.tokens.index_select(0, fed).view(b, t, c) + model.positions[positions]
        x = x.clamp_(-self.limit, self.limit).view(b * t, c)
        future = torch.ones(t, t, dtype=torch.bool).triu_(1)
        last = len(model.layers) - 1
        for i, layer in enumerate(model.layers):
            # The last layer's outputs are read at `at` alone: its other rows are not computed
            # (every row's numbers depend on the keys and values before it alone).
            x = self._layer(layer, x, b, future, at if i == last else slice(0, t))
        return x.view(b, -1, c) if model.layers else x.view(b, t, c)[:, at]

    def _layer(self, layer: ExactLayer, x: Tensor, b: int, future: Tensor, keep: slice) -> Tensor:
        """Residual rows (B T, C) -> the layer's outputs at positions `keep` (B n, C)."""
        model = self.model
        t, h, d, c = future.shape[0], model.heads, model.head_dim, model.width
        qkv = self._qkv(layer, x).view(b, t, 3, h, d).permute(2, 0, 3, 1, 4)  # (3, B, H, T, d)
        query, keys, values = (part.reshape(b * h, t, d) for part in qkv)
        query, n = query[:, keep], len(range(t)[keep])
        if n != t:
            x = x.view(b, t, c)[:, keep].reshape(b * n, c)
        scores = torch.bmm(query, keys.transpose(1, 2))  # (B H, n, T)
        scores.masked_fill_(future[keep], -math.inf)
        mixed = self._mix(self._weights(scores), values)  # (B H, n, d)
        mixed = mixed.view(b, h, n, d).permute(0, 2, 1, 3).reshape(b * n, c)
        x = x.add_(layer.proj(mixed)).clamp_(-self.limit, self.limit)
        return self._feed_forward(layer, x)


def _stage_runs(stages: Tensor) -> list[tuple[int, int, int]]:
    """(begin, end, stage) of each run of equal values in a sequence's stages (T,)."""
    values = stages.tolist()
    runs: list[tuple[int, int, int]] = []
    begin = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or values[end] != values[begin]:
            runs.append((begin, end, values[begin]))
            begin = end
    return runs


def tensors(model: ExactPrior) -> dict[str, Tensor]:
    """The model's tensors by name (for storing it)."""
    out = {
        "tokens": model.tokens,
        "positions": model.positions,
        "attention_exp": model.attention_exp,
        "logit_exp": model.logit_exp,
    }
    for i, layer in enumerate(model.layers):
        for name in ("qkv", "proj", "fc1", "fc2"):
            linear: ExactLinear = getattr(layer, name)
            for part in ExactLinear._fields:
                out[f"layers.{i}.{name}.{part}"] = getattr(linear, part)
        out[f"layers.{i}.gelu"] = layer.gelu
    for part in ExactLinear._fields:
        out[f"head.{part}"] = getattr(model.head, part)
    return out


def from_tensors(
    sizes: dict[str, int], fractions: dict[str, int], named: dict[str, Tensor]
) -> ExactPrior:
    """Rebuild a model from `tensors`' names and its sizes (width, heads, length,
    num_embeddings, stages, layers); raises ValueError (KeyError for a missing tensor) when they
    do not fit together, or when its sums could be inexact (check_bounds)."""

    def linear(prefix: str, out: int, inp: int) -> ExactLinear:
        parts = [named[f"{prefix}.{p}"].float() for p in ExactLinear._fields]
        if parts[0].shape != (out, inp) or parts[1].shape != (out,) or parts[2].shape != (out,):
            raise ValueError(f"{prefix} has shapes {[tuple(p.shape) for p in parts]}")
        return ExactLinear(*parts)

    c, k, layers = sizes["width"], sizes["num_embeddings"], sizes["layers"]
    hidden = named["layers.0.fc1.weight"].shape[0] if layers else 0
    model = ExactPrior(
        width=c,
        heads=sizes["heads"],
        length=sizes["length"],
        num_embeddings=k,
        stages=sizes["stages"],
        fractions=Fractions(**{f.name: int(fractions[f.name]) for f in fields(Fractions)}),
        tokens=named["tokens"].float(),
        positions=named["positions"].float(),
        layers=tuple(
            ExactLayer(
                linear(f"layers.{i}.qkv", 3 * c, c),
                linear(f"layers.{i}.proj", c, c),
                linear(f"layers.{i}.fc1", hidden, c),
                linear(f"layers.{i}.fc2", c, hidden),
                named[f"layers.{i}.gelu"].float(),
            )
            for i in range(layers)
        ),
        head=linear("head", k, c),
        attention_exp=named["attention_exp"].float(),
        logit_exp=named["logit_exp"].double(),
        grid=_grid(sizes.get("grid")),
    )
    if c % model.heads or k % model.stages or model.length % model.stages:
        raise ValueError(f"width {c}, {model.heads} heads, {k} tokens: sizes that do not fit")
    if model.tokens.shape != (k + 1, c) or model.positions.shape != (model.length, c):
        raise ValueError("the embeddings' shapes do not fit the sizes")
    if model.grid is not None and model.grid[0] * model.grid[1] * model.stages != model.length:
        raise ValueError(f"a grid of {model.grid} does not make {model.length} positions")
    if model.attention_exp.ndim != 1 or model.logit_exp.ndim != 1:
        raise ValueError("the exp tables are not vectors")
    check_bounds(model)
    return model


def _grid(raw: object) -> tuple[int, int] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) != 2 or not all(type(v) is int for v in raw):
        raise ValueError(f"grid {str(raw)[:40]} is not two integers")
    return raw[0], raw[1]
