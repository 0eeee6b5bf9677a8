"""What this CPU can do for the seed's network at batch 32, whatever the implementation.

    python benchmarks/cpu_ceiling.py [--seed-images-per-s F] [--threads N]
    python benchmarks/cpu_ceiling.py --bare fp32|bf16 [--steps N]   # one figure, as JSON

Prints the CPU's matmul throughput in fp32 and bf16 (the best case for convolutions too), the
training FLOPs per image of the seed's network (forward multiply-adds counted layer by layer,
times 6: forward, input gradients and weight gradients), and the images/s of the bare network
(its convolutions and ReLUs only: no weight norm, no quantizer, no data loading) trained with
fused Adam, in fp32 and bf16, NCHW and channels_last. With --seed-images-per-s it also says how
many GFLOP/s a multiple of 3 of that figure would take: if that exceeds the fp32 matmul peak,
no fp32 implementation of the network can reach it on this machine.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import Tensor, nn

BATCH = 32


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(128, 32, 3, padding=1, bias=False)
        self.b = nn.Conv2d(32, 128, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.b(torch.relu(self.a(torch.relu(x))))


def bare_network() -> nn.Sequential:
    """The seed's encoder, 1x1 pre-quantizer conv and decoder, with nothing else."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 4, 2, 1), nn.ReLU(),
        nn.Conv2d(64, 128, 4, 2, 1), nn.ReLU(),
        nn.Conv2d(128, 128, 3, 1, 1), _Residual(), _Residual(), nn.ReLU(),
        nn.Conv2d(128, 64, 1),
        nn.Conv2d(64, 128, 3, 1, 1), _Residual(), _Residual(), nn.ReLU(),
        nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.ReLU(),
        nn.ConvTranspose2d(64, 3, 4, 2, 1),
    )  # fmt: skip


def forward_macs(net: nn.Module) -> int:
    """Multiply-adds of one image's forward pass through the convolutions."""
    total = 0

    def count(module: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.ConvTranspose2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += inputs[0][0].numel() * module.out_channels * k
        elif isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += out[0].numel() * module.in_channels * k

    hooks = [m.register_forward_hook(count) for m in net.modules()]
    with torch.no_grad():
        net(torch.zeros(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    return total


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 20) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def bare_training_images_per_s(bf16: bool, channels_last: bool, steps: int = 60) -> float:
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    net = bare_network().to(memory_format=layout)
    optimizer = torch.optim.Adam(net.parameters(), fused=True)
    x = torch.randn(BATCH, 3, 32, 32).contiguous(memory_format=layout)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = net(x)
        loss = (y.float() - x).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(10):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return BATCH * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed-images-per-s", type=float, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bare", choices=["fp32", "bf16"], default=None, help="one figure")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.bare:  # the bare network alone, channels_last, as a JSON line (bench_train.py)
        ips = bare_training_images_per_s(args.bare == "bf16", True, args.steps)
        print(json.dumps({"images_per_s": ips}))
        return
    flops = 6 * forward_macs(bare_network())
    fp32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    print(f"CPU ceiling, {torch.get_num_threads()} torch threads:")
    print(f"  matmul 2048x2048: fp32 {fp32:,.0f} GFLOP/s, bf16 {bf16:,.0f} GFLOP/s")
    print(f"  the seed's network: {flops / 1e6:.0f} MFLOP per training image")
    for bf, cl in ((False, False), (False, True), (True, True)):
        ips = bare_training_images_per_s(bf, cl)
        layout = "channels_last" if cl else "NCHW"
        print(
            f"  bare network (convolutions and ReLUs only), batch {BATCH}, "
            f"{'bf16' if bf else 'fp32'}, {layout}: {ips:,.0f} images/s "
            f"({ips * flops / 1e9:,.0f} GFLOP/s)"
        )
    if args.seed_images_per_s:
        need = 3 * args.seed_images_per_s
        gflops = need * flops / 1e9
        verdict = "above" if gflops > fp32 else "within"
        print(
            f"  3x the seed's {args.seed_images_per_s:,.0f} images/s = {need:,.0f} images/s "
            f"= {gflops:,.0f} GFLOP/s: {verdict} this CPU's fp32 matmul peak"
        )


if __name__ == "__main__":
    main()
