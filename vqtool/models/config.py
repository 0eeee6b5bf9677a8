"""The networks' configurations: the VQ-VAE's and the prior's sizes. Torch-free, so that profiles
load without importing torch; `vqtool.models.vqvae` and `vqtool.models.transformer` build the
networks from them. Values are checked where profiles are validated."""

from __future__ import annotations

import math
from dataclasses import dataclass

# The default factor: the encoder halves each side twice, so an H x W image has
# (H / 4) x (W / 4) codes. `ModelConfig.downsample` chooses another (what a code file's header
# names as "downsample").
DOWNSAMPLE = 4
DOWNSAMPLES = (2, 4, 8, 16)
ACTIVATIONS = ("relu", "silu")
# Entries a channel plan may have: the convolutions before the 3x3 one at factor 16.
MAX_CHANNEL_STAGES = 4


@dataclass(frozen=True)
class ModelConfig:
    """The VQ-VAE's sizes, its quantizer and how its weights and codebook start.

    With `quantizer = "fsq"` the code count is not free: `num_embeddings` is always the product
    of `levels` (set here, whatever value was given), so that everything downstream of the
    model (code files, priors, evaluation) reads K from one key for either quantizer.
    """

    # Channels at the latents' resolution: the encoder's last 3x3 convolution, the residual
    # blocks and the decoder's first convolution.
    num_hiddens: int = 128
    num_residual_hiddens: int = 32  # inside each residual block
    num_residual_layers: int = 2  # residual blocks in the encoder and in the decoder; 0 = none
    # The channel plan: the output channels of the encoder's convolutions before its 3x3 one,
    # one per halving of the sides from the image's resolution down (two at least: at factor 2
    # the second keeps the size). One plan serves every factor: a factor of fewer halvings
    # uses the first entries, one of more repeats the last. The decoder mirrors the plan from
    # num_hiddens up. () = the seed's plan, (num_hiddens // 2, num_hiddens): see
    # `stage_channels`.
    channels: tuple[int, ...] = ()
    # "relu" (the seed's) or "silu", after every convolution but the last of each network.
    activation: str = "relu"
    embedding_dim: int = 64
    num_embeddings: int = 512
    commitment_cost: float = 0.25
    decay: float = 0.99  # 0 = the paper's codebook loss, no EMA
    # Weight norm on every conv over PyTorch's default init: what the seed's "EMA + Kaiming"
    # actually trains (its Kaiming draw never takes effect, see `vqtool.models.vqvae`).
    weight_norm: bool = True
    # Kaiming normal (ReLU) weights and zero biases, drawn under weight norm: the init the seed
    # meant. Implies weight norm (checkpoints from before `weight_norm` existed rely on it).
    kaiming_init: bool = False
    # "seed": normal for EMA, uniform(-1/K, 1/K) without; "encoder": sampled encoder outputs of
    # the first batch; "kmeans": k-means++ on those outputs.
    codebook_init: str = "encoder"
    dead_code_steps: int = 300  # codes unused this many steps are re-seeded; 0 = off
    # "vq": a learnt codebook (VectorQuantizer); "fsq": finite scalar quantization (Mentzer et
    # al. 2023), a fixed grid of prod(levels) codes over len(levels) bounded, rounded channels.
    quantizer: str = "vq"
    levels: tuple[int, ...] = (8, 8, 8)  # fsq only: the values each channel is rounded to
    # Residual stages: each quantizes what the stages before it left, with codes of its own.
    stages: int = 1
    # stages > 1: each training step uses the first n stages, n drawn uniformly from 1..stages,
    # so that every prefix of the stages decodes well (quantizer dropout).
    stage_dropout: bool = True
    # vq: how the decoder's gradient passes the quantizer to the encoder: "straight-through"
    # (van den Oord et al.) or "rotation" (the rotation trick, Fifty et al. 2024).
    gradient: str = "straight-through"
    # Each side of the code grid is this many times smaller than the image's (2, 4, 8 or 16):
    # tokens per image, (H / downsample) x (W / downsample) per stage.
    downsample: int = DOWNSAMPLE

    def __post_init__(self) -> None:
        if self.quantizer == "fsq":
            # Frozen: the derived K is set the one way a frozen dataclass allows.
            object.__setattr__(self, "num_embeddings", math.prod(self.levels))

    @property
    def has_weight_norm(self) -> bool:
        return self.weight_norm or self.kaiming_init

    @property
    def halvings(self) -> int:
        """How many times the encoder halves each side: log2 of downsample (1 to 4)."""
        return int(math.log2(self.downsample))

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """The channel plan at this factor: the output channels of the encoder's first
        max(2, halvings) convolutions, `channels` cut or its last entry repeated."""
        plan = self.channels or (self.num_hiddens // 2, self.num_hiddens)
        count = max(2, self.halvings)
        return (plan + plan[-1:] * count)[:count]


@dataclass(frozen=True)
class PriorConfig:
    """A causal transformer over the raster order of a grid of code indices."""

    layers: int = 4  # pre-norm transformer blocks
    width: int = 192  # size of every token's vector (embeddings, attention, residual stream)
    heads: int = 4  # attention heads; each has width // heads channels
    mlp_ratio: int = 4  # hidden size of each block's MLP, as a multiple of width
    dropout: float = 0.0  # on embeddings, attention weights and residual branches, training only
    conditional: bool = False  # add a learned class embedding to the start token
    num_classes: int = 10  # labels a conditional prior knows (CIFAR-10's ten)
    # (h, w): train on windows of this many codes cut from each grid, and code grids of any
    # size window by window (vqtool.models.windows); (0, 0): the VQ run's whole grid.
    window: tuple[int, int] = (0, 0)
