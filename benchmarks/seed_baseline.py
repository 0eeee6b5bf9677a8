"""The seed's training recipe (swasun/VQ-VAE-Images, EMA + Kaiming), rebuilt as a yardstick.

Written from the seed's code as published, defects included, because the benchmark
measures how fast *that* recipe trains: the residual stack repeats one module object
(`[Residual(...)] * n`, so its layers share weights); its Kaiming draw comes after weight norm
and is undone at the first forward (weight norm over the default init); the EMA quantizer
builds a dense one-hot matrix and re-creates its `nn.Parameter`s every step; images are PIL
images turned into tensors one at a time (ToTensor, Normalize to [-1, 1]) by a DataLoader with
2 worker processes; every step reads its loss and perplexity back with `.item()`. Nothing in
vqtool imports this module.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms


def _kaiming_weight_norm(conv: nn.Module) -> nn.Module:
    # The seed wraps with the old hook-based weight_norm, then initialises the weight.
    conv = nn.utils.weight_norm(conv)
    nn.init.kaiming_normal_(conv.weight)
    return conv


class SeedResidual(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(True),
            _kaiming_weight_norm(nn.Conv2d(channels, hidden, 3, padding=1, bias=False)),
            nn.ReLU(True),
            _kaiming_weight_norm(nn.Conv2d(hidden, channels, 1, bias=False)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class SeedResidualStack(nn.Module):
    def __init__(self, channels: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.n = layers
        # The seed's defect: one module object repeated, so every layer shares its weights.
        self.layers = nn.ModuleList([SeedResidual(channels, hidden)] * layers)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(self.n):
            x = self.layers[i](x)
        return F.relu(x)


class SeedEncoder(nn.Module):
    def __init__(self, h: int, res_h: int, layers: int) -> None:
        super().__init__()
        self.conv1 = _kaiming_weight_norm(nn.Conv2d(3, h // 2, 4, stride=2, padding=1))
        self.conv2 = _kaiming_weight_norm(nn.Conv2d(h // 2, h, 4, stride=2, padding=1))
        # The seed's typo `self._conv3 = weight_norm(self._conv_3)` is harmless: the old
        # weight_norm wraps the module in place, so the third conv has weight norm too.
        self.conv3 = _kaiming_weight_norm(nn.Conv2d(h, h, 3, padding=1))
        self.residual = SeedResidualStack(h, res_h, layers)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.residual(self.conv3(x))


class SeedDecoder(nn.Module):
    def __init__(self, d: int, h: int, res_h: int, layers: int) -> None:
        super().__init__()
        self.conv1 = _kaiming_weight_norm(nn.Conv2d(d, h, 3, padding=1))
        self.residual = SeedResidualStack(h, res_h, layers)
        self.up1 = _kaiming_weight_norm(nn.ConvTranspose2d(h, h // 2, 4, stride=2, padding=1))
        self.up2 = _kaiming_weight_norm(nn.ConvTranspose2d(h // 2, 3, 4, stride=2, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.residual(self.conv1(x))
        return self.up2(F.relu(self.up1(x)))


class SeedVectorQuantizerEMA(nn.Module):
    """Dense one-hot assignments; the EMA state re-created as new Parameters every step."""

    def __init__(self, k: int, d: int, commitment: float, decay: float, device: torch.device):
        super().__init__()
        self.k, self.d, self.commitment, self.decay, self.eps = k, d, commitment, decay, 1e-5
        self.device = device
        self.embedding = nn.Embedding(k, d)
        self.embedding.weight.data.normal_()
        self.register_buffer("ema_cluster_size", torch.zeros(k))
        self.ema_w = nn.Parameter(torch.empty(k, d).normal_())

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        inputs = inputs.permute(0, 2, 3, 1).contiguous()
        shape = inputs.shape
        flat = inputs.view(-1, self.d)
        distances = (
            flat.pow(2).sum(1, keepdim=True)
            + self.embedding.weight.pow(2).sum(1)
            - 2 * torch.matmul(flat, self.embedding.weight.t())
        )
        idx = distances.argmin(1).unsqueeze(1)
        encodings = torch.zeros(idx.shape[0], self.k, device=self.device)
        encodings.scatter_(1, idx, 1)
        if self.training:
            self.ema_cluster_size = self.ema_cluster_size * self.decay + (
                1 - self.decay
            ) * encodings.sum(0)
            n = self.ema_cluster_size.data.sum()
            self.ema_cluster_size = (self.ema_cluster_size + self.eps) / (n + self.k * self.eps) * n
            dw = torch.matmul(encodings.t(), flat)
            self.ema_w = nn.Parameter(self.ema_w * self.decay + (1 - self.decay) * dw)
            self.embedding.weight = nn.Parameter(self.ema_w / self.ema_cluster_size.unsqueeze(1))
        quantized = torch.matmul(encodings, self.embedding.weight).view(shape)
        loss = self.commitment * F.mse_loss(quantized.detach(), inputs)
        quantized = inputs + (quantized - inputs).detach()
        probs = encodings.mean(0)
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        return loss, quantized.permute(0, 3, 1, 2).contiguous(), perplexity


class SeedAutoEncoder(nn.Module):
    """The seed's defaults: 128 hiddens, 32 residual hiddens, 2 layers, 512 x 64 codebook."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.encoder = SeedEncoder(128, 32, 2)
        self.pre_vq = _kaiming_weight_norm(nn.Conv2d(128, 64, 1))
        self.vq = SeedVectorQuantizerEMA(512, 64, 0.25, 0.99, device)
        self.decoder = SeedDecoder(64, 128, 32, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        loss, quantized, perplexity = self.vq(self.pre_vq(self.encoder(x)))
        return loss, self.decoder(quantized), perplexity


class PilCifar(Dataset[tuple[Tensor, int]]):
    """Like torchvision's CIFAR10: HWC uint8 rows, a PIL image per item, then the transform."""

    def __init__(self, images: Tensor) -> None:
        self.data = images.permute(0, 2, 3, 1).contiguous().numpy()  # (N, 32, 32, 3)
        self.transform = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
        )

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform(Image.fromarray(self.data[i])), 0


def _cycle(loader: DataLoader[tuple[Tensor, int]]) -> Iterator[tuple[Tensor, int]]:
    while True:
        yield from loader


class SeedTrainer:
    """The seed's loop at batch `batch_size`: Adam (amsgrad, lr 3e-4), loss = NMSE + VQ loss."""

    def __init__(self, images: Tensor, batch_size: int, device: torch.device, seed: int = 0):
        torch.manual_seed(seed)
        self.device = device
        self.batch_size = batch_size
        self.model = SeedAutoEncoder(device).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=3e-4, amsgrad=True)
        # The seed's own variance: of [0, 1] pixels, although its data is in [-1, 1].
        self.variance = float(np.var(images.numpy() / 255.0))
        self.loader = DataLoader(
            PilCifar(images),
            batch_size=batch_size,
            shuffle=True,
            num_workers=2,
            pin_memory=device.type == "cuda",
        )
        self.batches = _cycle(self.loader)
        self.model.train()

    def step(self) -> tuple[float, float]:
        data, _ = next(self.batches)
        data = data.to(self.device)
        self.optimizer.zero_grad()
        vq_loss, recon, perplexity = self.model(data)
        recon_error = torch.mean((recon - data) ** 2) / self.variance
        (recon_error + vq_loss).backward()
        self.optimizer.step()
        return recon_error.item(), perplexity.item()

    def images_per_s(self, steps: int, warmup: int = 10) -> float:
        """Images per second over `steps` steps, after `warmup` steps (worker start-up).

        The loader's worker processes start with each call and stop at its end, so that they
        take no CPU from whatever the benchmark measures next."""
        self.batches = _cycle(self.loader)
        try:
            return self._images_per_s(steps, warmup)
        finally:
            self.batches.close()  # ends the loader's iterator: its workers exit

    def _images_per_s(self, steps: int, warmup: int) -> float:
        for _ in range(warmup):
            self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return steps * self.batch_size / (time.perf_counter() - start)
