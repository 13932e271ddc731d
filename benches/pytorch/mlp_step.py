"""The PyTorch reference for `benches/mlp_step.rs`: the `ddpm` preset's MLP (residual blocks
`h + W2 silu(W1 silu(h) + T(silu(time)))`, 4 input Fourier octaves, a 32-wide sinusoidal time
embedding at scale 1000, hidden 128, 3 blocks: 155,522 parameters), one DDPM training step on
2-D points (batch 512: noising on the 1000-step linear-beta grid, eps-MSE, backward, global-norm
clipping at 1, AdamW, an EMA of the weights) and one ancestral sampling step on 10,000 points.
Medians of the timed repetitions, in ms. Not a dependency of the project: a yardstick, run by
hand in a virtual environment with PyTorch installed.

    python3 benches/pytorch/mlp_step.py [--threads N] [--iters N]
"""

import argparse
import copy
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as fn


def sinusoidal(t, dim, scale):
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32)
    freqs = torch.exp(-math.log(10000.0) * k / half) * scale
    args = t[:, None] * freqs[None, :]
    return torch.cat([args.sin(), args.cos()], dim=1)


class Block(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.l1 = nn.Linear(h, h)
        self.l2 = nn.Linear(h, h)
        self.temb = nn.Linear(h, h)

    def forward(self, h, temb):
        inner = self.l1(fn.silu(h)) + self.temb(temb)
        return h + self.l2(fn.silu(inner))


class Mlp(nn.Module):
    def __init__(self, dims=2, hidden=128, blocks=3, time_dim=32, time_scale=1000.0, fourier=4):
        super().__init__()
        self.time_dim, self.time_scale, self.fourier = time_dim, time_scale, fourier
        self.input = nn.Linear(dims * (1 + 2 * fourier), hidden)
        self.time = nn.Linear(time_dim, hidden)
        self.blocks = nn.ModuleList([Block(hidden) for _ in range(blocks)])
        self.output = nn.Linear(hidden, dims)

    def forward(self, z, t):
        parts = [z]
        for k in range(self.fourier):
            arg = z * (math.pi * 2.0**k)
            parts += [arg.sin(), arg.cos()]
        h = self.input(torch.cat(parts, dim=1))
        temb = fn.silu(self.time(sinusoidal(t, self.time_dim, self.time_scale)))
        for b in self.blocks:
            h = b(h, temb)
        return self.output(fn.silu(h))


def checkerboard(n, gen):
    """Points uniform on the black squares of a 4 x 4 board on [-2, 2]^2."""
    x = torch.rand(n, generator=gen) * 4 - 2
    y = torch.rand(n, generator=gen) * 2
    y = y - 2 + 2 * ((torch.floor(x) + torch.floor(torch.rand(n, generator=gen) * 2) * 2) % 2)
    return torch.stack([x, y], dim=1)


def median_ms(f, iters, warmup=3):
    for _ in range(warmup):
        f()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        f()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)

    steps = 1000
    betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0).float()

    net = Mlp()
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    params = sum(p.numel() for p in net.parameters())
    batch = 512

    def train_step():
        x = checkerboard(batch, gen)
        i = torch.randint(0, steps, (batch,), generator=gen)
        ab = alpha_bar[i][:, None]
        eps = torch.randn(x.shape, generator=gen)
        z = ab.sqrt() * x + (1 - ab).sqrt() * eps
        loss = fn.mse_loss(net(z, (i + 1).float() / steps), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1 - 0.995)

    n = 10_000
    zs = torch.randn(n, 2, generator=gen)
    i = 500
    t = torch.full((n,), (i + 1) / steps)
    ab_t, ab_s = alpha_bar[i], alpha_bar[i - 1]
    beta = 1 - ab_t / ab_s

    @torch.no_grad()
    def sample_step():
        eps = ema(zs, t)
        xhat = (zs - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
        mean = (ab_s.sqrt() * beta / (1 - ab_t)) * xhat + ((1 - beta).sqrt() * (1 - ab_s) / (1 - ab_t)) * zs
        var = beta * (1 - ab_s) / (1 - ab_t)
        return mean + var.sqrt() * torch.randn(zs.shape, generator=gen)

    @torch.no_grad()
    def network_only():
        ema(zs, t)

    train = median_ms(train_step, args.iters)
    sample = median_ms(sample_step, args.iters)
    net_ms = median_ms(network_only, args.iters)
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads, MLP {params} params, {args.iters} timed repetitions")
    print("| work | median ms |")
    print("|---|---|")
    print(f"| training step, batch {batch} (data, noising, loss, backward, clip, AdamW, EMA) | {train:.2f} |")
    print(f"| sampling step, {n} points (ancestral) | {sample:.2f} |")
    print(f"| network forward, {n} points | {net_ms:.2f} |")


if __name__ == "__main__":
    main()
