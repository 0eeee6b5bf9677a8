"""The VQ-VAE of van den Oord et al. (2017) as the seed and Sonnet build it for CIFAR-10.

Encoder: two stride-2 4x4 convs and a 3x3 conv, then a residual stack; a 1x1 conv maps to
the embedding size. Decoder: a 3x3 conv, a residual stack, two stride-2 transposed convs.
Images are `model.downsample` (f: 2, 4, 8 or 16; default 4, `DOWNSAMPLE`) times smaller per
side in the latent grid. The widths, the residual blocks, the channel plan across resolutions
(`model.channels`) and the activation are the config's; at their defaults the network is the
seed's, module for module and draw for draw.

The model owns its pixel convention: uint8 images in [0, 255] go in as [-0.5, 0.5] floats,
and codes come back out as images in [0, 1] (clamped) or uint8 (rounded). Evaluation, code
files, plots and training all go through these methods, so they see the same pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from vqtool.errors import counted
from vqtool.models.config import ACTIVATIONS, DOWNSAMPLE, ModelConfig
from vqtool.models.fsq import FiniteScalarQuantizer
from vqtool.models.quantizer import VectorQuantizer
from vqtool.models.residual import ResidualVectorQuantizer

Quantizer = VectorQuantizer | ResidualVectorQuantizer | FiniteScalarQuantizer

# The pixel convention in words, for files that describe the model to programs without vqtool
# (the model.json of `vqtool export`): what `to_input` and `codes_to_images` compute.
PIXEL_CONVENTION = {
    "images": "uint8 RGB in [0, 255], channels first: (N, 3, H, W)",
    "encoder_input": "images / 255 - 0.5, as float32",
    "decoded_images": "round(clamp(decoder_output + 0.5, 0, 1) * 255), as uint8 "
    "(rounding half to even)",
}

__all__ = [
    "DOWNSAMPLE",
    "VQVAE",
    "Layer",
    "ModelConfig",
    "build_model",
    "build_quantizer",
    "decoder_layers",
    "encoder_layers",
]


# An activation: (x, inplace) -> activated x. Both are elementwise, so bands stay exact.
Activation = Callable[[Tensor, bool], Tensor]
_ACTIVATIONS: dict[str, Activation] = {"relu": F.relu, "silu": F.silu}
assert tuple(_ACTIVATIONS) == ACTIVATIONS


class Residual(nn.Module):
    """x + conv1x1(act(conv3x3(act(x)))), both convs without bias as in the seed."""

    def __init__(self, channels: int, hidden: int, act: Activation = F.relu) -> None:
        super().__init__()
        self.conv3 = nn.Conv2d(channels, hidden, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(hidden, channels, 1, bias=False)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        # In-place activations on fresh conv/add outputs (never on x, which the skip needs): no
        # large allocation per layer, and autograd needs only what the activation keeps.
        return x + self.conv1(self.act(self.conv3(self.act(x, False)), True))


class ResidualStack(nn.Module):
    """n residual blocks, each with its own weights (the seed's `[Residual()] * n` shared one)."""

    def __init__(self, channels: int, hidden: int, layers: int, act: Activation = F.relu) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Residual(channels, hidden, act) for _ in range(layers))
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.act(x, len(self.layers) > 0)


class Layer(NamedTuple):
    """One convolution's geometry along a side: all that where an output looks depends on."""

    kernel: int
    stride: int
    padding: int
    transposed: bool = False


_HALVE, _SAME3, _SAME1 = Layer(4, 2, 1), Layer(3, 1, 1), Layer(1, 1, 0)
_DOUBLE = Layer(4, 2, 1, transposed=True)


def encoder_layers(cfg: ModelConfig) -> tuple[Layer, ...]:
    """The convolutions from pixels to the latents the quantizer takes (the encoder's, then
    the 1x1 before the quantizer), in the order they run: Encoder and VQVAE.pre_vq."""
    residual = (_SAME3, _SAME1) * cfg.num_residual_layers
    second = _SAME3 if cfg.halvings == 1 else _HALVE
    return (_HALVE, second, *[_HALVE] * (cfg.halvings - 2), _SAME3, *residual, _SAME1)


def decoder_layers(cfg: ModelConfig) -> tuple[Layer, ...]:
    """The decoder's convolutions from code vectors to pixels, in the order they run."""
    residual = (_SAME3, _SAME1) * cfg.num_residual_layers
    first_up = _SAME3 if cfg.halvings == 1 else _DOUBLE
    return (_SAME3, *residual, *[_DOUBLE] * (cfg.halvings - 2), first_up, _DOUBLE)


class Encoder(nn.Module):
    """Strided 4x4 convolutions, one per halving of the sides, then a 3x3 one and the residual
    stack. At the default factor 4, exactly the seed's network (the same modules and names);
    at 2 the second convolution keeps the size; at 8 and 16 `down` adds halvings. Their
    output channels are the plan's (`ModelConfig.stage_channels`; the seed's: h // 2, then h),
    and the 3x3 convolution maps the last of them to h = num_hiddens."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h, c = cfg.num_hiddens, cfg.stage_channels
        halvings = cfg.halvings
        self.act = _ACTIVATIONS[cfg.activation]
        self.conv1 = nn.Conv2d(3, c[0], 4, stride=2, padding=1)
        if halvings == 1:
            self.conv2 = nn.Conv2d(c[0], c[1], 3, padding=1)
        else:
            self.conv2 = nn.Conv2d(c[0], c[1], 4, stride=2, padding=1)
        self.down = nn.ModuleList(
            nn.Conv2d(c[i], c[i + 1], 4, stride=2, padding=1) for i in range(1, halvings - 1)
        )
        self.conv3 = nn.Conv2d(c[-1], h, 3, padding=1)
        self.residual = ResidualStack(
            h, cfg.num_residual_hiddens, cfg.num_residual_layers, self.act
        )

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, H, W) -> (B, h, H/f, W/f)
        x = self.act(self.conv1(x), True)
        x = self.act(self.conv2(x), True)
        for conv in self.down:
            x = self.act(conv(x), True)
        return self.residual(self.conv3(x))


class Decoder(nn.Module):
    """The encoder mirrored: a 3x3 convolution and the residual stack, then transposed 4x4
    convolutions that double the sides (`up` at 8 and 16, then up1 and up2; at factor 2 up1
    keeps the size), through the plan's channels in reverse from h = num_hiddens: the seed's
    h, ..., h, h // 2, 3."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h = cfg.num_hiddens
        # The plan with h at the latents' resolution, read back up towards the pixels.
        c = (*cfg.stage_channels[:-1], h)
        halvings = cfg.halvings
        self.act = _ACTIVATIONS[cfg.activation]
        self.conv = nn.Conv2d(cfg.embedding_dim, h, 3, padding=1)
        self.residual = ResidualStack(
            h, cfg.num_residual_hiddens, cfg.num_residual_layers, self.act
        )
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(c[i], c[i - 1], 4, stride=2, padding=1)
            for i in range(len(c) - 1, 1, -1)
        )
        if halvings == 1:
            self.up1: nn.Module = nn.Conv2d(c[1], c[0], 3, padding=1)
        else:
            self.up1 = nn.ConvTranspose2d(c[1], c[0], 4, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(c[0], 3, 4, stride=2, padding=1)

    def forward(self, q: Tensor) -> Tensor:  # (B, D, h, w) -> (B, 3, f h, f w)
        x = self.residual(self.conv(q))
        for conv in self.up:
            x = self.act(conv(x), True)
        return self.up2(self.act(self.up1(x), True))


class VQVAEOutput(NamedTuple):
    reconstruction: Tensor  # (B, 3, H, W), same scale as the input ([-0.5, 0.5])
    vq_loss: Tensor  # scalar
    perplexity: Tensor  # scalar: the first stage's
    indices: Tensor  # (B, H/f, W/f); (B, n, H/f, W/f) from n of several stages
    restarted: Tensor  # scalar: dead codes re-seeded this step


def build_quantizer(cfg: ModelConfig) -> Quantizer:
    """The quantizer a config asks for; one stage of "vq" is the seed's VectorQuantizer."""
    if cfg.quantizer == "fsq":
        return FiniteScalarQuantizer(cfg.embedding_dim, cfg.levels, cfg.stages)
    args = (
        cfg.num_embeddings,
        cfg.embedding_dim,
        cfg.commitment_cost,
        cfg.decay,
        cfg.codebook_init,
        cfg.dead_code_steps,
        cfg.gradient,
    )
    if cfg.stages > 1:
        return ResidualVectorQuantizer(cfg.stages, *args)
    return VectorQuantizer(*args)


class VQVAE(nn.Module):
    """Encoder -> 1x1 conv -> quantizer -> decoder.

    `encode` and `decode` are the two halves used by code files: decode(encode(x)) is exactly
    the reconstruction that `forward` produces in eval mode. A model of one stage has codes
    (B, h, w); one of S residual stages has codes (B, S, h, w), and decodes any prefix of them.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.pre_vq = nn.Conv2d(cfg.num_hiddens, cfg.embedding_dim, 1)
        self.quantizer = build_quantizer(cfg)
        self.decoder = Decoder(cfg)
        if cfg.kaiming_init:
            draw_kaiming(self)
        if cfg.has_weight_norm:
            apply_weight_norm(self)

    def latents(self, x: Tensor) -> Tensor:
        """Pre-quantization latents: (B, 3, H, W) -> (B, D, H/f, W/f)."""
        return self.pre_vq(self.encoder(x))

    @property
    def stages(self) -> int:
        """Residual stages: 1 for codes (B, h, w), S > 1 for codes (B, S, h, w)."""
        return self.config.stages

    def forward(self, x: Tensor, stages: int | None = None) -> VQVAEOutput:
        """`stages`: the first n residual stages only (training's quantizer dropout)."""
        q = self.quantizer(self.latents(x), stages)
        return VQVAEOutput(self.decoder(q.quantized), q.loss, q.perplexity, q.indices, q.restarted)

    @torch.no_grad()
    def encode(self, x: Tensor, stages: int | None = None) -> Tensor:
        """Images in [-0.5, 0.5] to code indices: (B, 3, H, W) -> (B, H/f, W/f) int64, or
        (B, S, H/f, W/f) with S residual stages; `stages` n <= S: the first n only
        (B, n, H/f, W/f), the later ones not computed."""
        if stages is not None and not 1 <= stages <= self.stages:
            raise ValueError(f"cannot encode {counted(stages, 'stage')} with {self.stages}")
        # channels_last: oneDNN's faster convolution layout on the CPU, and
        # the layout training feeds the encoder on the CPU and on CUDA.
        x = x.contiguous(memory_format=torch.channels_last)
        return self.quantizer.quantize(self.latents(x), stages)

    @torch.no_grad()
    def decode(self, indices: Tensor, stages: int | None = None) -> Tensor:
        """Code indices to images in [-0.5, 0.5] (unclamped): (B, h, w) -> (B, 3, f h, f w).

        With residual stages the indices are (B, n, h, w), n <= S, and `stages` (default n)
        decodes the first of them only.
        """
        return self.decoder(self.quantizer.lookup(self.stage_prefix(indices, stages)))

    def stage_prefix(self, indices: Tensor, stages: int | None) -> Tensor:
        """The first `stages` stages of codes (B, n, h, w); a model of one stage takes
        (B, h, w) and stages 1 or None. ValueError for a count the codes do not hold."""
        held = 1 if self.stages == 1 else indices.shape[1]
        if indices.dim() != (3 if self.stages == 1 else 4) or held > self.stages:
            raise ValueError(
                f"codes {tuple(indices.shape)} do not fit {counted(self.stages, 'stage')}"
            )
        if stages is None:
            return indices
        if not 1 <= stages <= held:
            raise ValueError(f"cannot decode {counted(stages, 'stage')} from codes of {held}")
        return indices if self.stages == 1 else indices[:, :stages]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @staticmethod
    def to_input(images: Tensor, device: torch.device | str) -> Tensor:
        """uint8 (B, 3, H, W) in [0, 255] -> float (B, 3, H, W) in [-0.5, 0.5] on `device`."""
        return images.to(device, non_blocking=True).float().div_(255.0).sub_(0.5)

    @torch.no_grad()
    def images_to_codes(self, images: Tensor, stages: int | None = None) -> Tensor:
        """uint8 (B, 3, H, W), sides multiples of the factor f -> int64 codes (B, H/f, W/f)
        (`stages`: as in `encode`)."""
        return self.encode(self.to_input(images, self.device), stages)

    @torch.no_grad()
    def codes_to_unit(self, indices: Tensor, stages: int | None = None) -> Tensor:
        """Code indices (B, h, w) -> images in [0, 1] (B, 3, f h, f w): the decoded pixels that
        evaluation measures and code files decode to (`stages`: as in `decode`)."""
        return self.decode(indices, stages).float().add_(0.5).clamp_(0.0, 1.0)

    @torch.no_grad()
    def codes_to_images(self, indices: Tensor, stages: int | None = None) -> Tensor:
        """Code indices (B, h, w) -> uint8 images (B, 3, f h, f w): codes_to_unit rounded."""
        return self.codes_to_unit(indices, stages).mul_(255.0).round_().to(torch.uint8)

    @torch.no_grad()
    def reconstruct(self, images: Tensor, stages: int | None = None) -> tuple[Tensor, Tensor]:
        """uint8 (B, 3, H, W) -> (codes (B, h, w), reconstruction in [0, 1] (B, 3, H, W));
        with residual stages codes (B, S, h, w), and the reconstruction from the first
        `stages` of them (default all).

        No straight-through term: exactly what decoding the codes gives.
        """
        indices = self.images_to_codes(images)
        return indices, self.codes_to_unit(indices, stages)

    def folded(self) -> VQVAE:
        """An eval-mode copy with weight norm folded into plain weights (self if it has none).

        Weight norm recomputes every conv's weight on each call (about a tenth of an encode on
        the CPU); the folded weights are the very tensors it computes, so outputs are identical.
        """
        if not any(parametrize.is_parametrized(m) for m in self.modules()):
            return self
        # A copy through the config and the state dict: deepcopy cannot copy a parametrized
        # module. Building draws an init that the state dict overwrites at once.
        with torch.random.fork_rng(devices=[]):
            plain = build_model(self.config)
        plain.load_state_dict(self.state_dict())
        plain.to(self.device).eval()
        for module in plain.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        return plain


def _convs(model: nn.Module) -> list[nn.Conv2d | nn.ConvTranspose2d]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def draw_kaiming(model: nn.Module) -> None:
    """Every conv and transposed conv: Kaiming normal weights for ReLU and zero biases."""
    for conv in _convs(model):
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)


def apply_weight_norm(model: nn.Module) -> None:
    """Weight norm on every conv and transposed conv, the 1x1 before the quantizer included.

    The parametrization starts g at each filter's norm, so the weights stay exactly the ones
    already drawn. That is why the seed's Kaiming init was a no-op: it drew Kaiming weights
    into `weight` *after* wrapping the conv, and weight norm recomputes `weight` from g and v
    at the first forward, so the seed trained weight norm over PyTorch's default init. It also
    meant every conv (its `self._conv3 = weight_norm(self._conv_3)` typo still wraps the
    encoder's third conv, in place) and left the default biases.
    """
    for conv in _convs(model):
        weight_norm(conv)


def build_model(cfg: ModelConfig) -> VQVAE:
    """A VQ-VAE for a model config; initialised from the global torch RNG."""
    return VQVAE(cfg)
