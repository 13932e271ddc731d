"""The PyTorch reference for `plugins/ndm-unet/benches/unet_step.rs`: the reference U-Net with the
`backbone.unet` defaults (DDPM layout: 3 levels of 32/64/64 channels, one residual block per level
on the way down and two on the way up, concatenated skips, GroupNorm(8)+SiLU residual blocks with a
per-block projection of the time embedding added after the first conv, dropout 0, stride-2 conv
downsampling, nearest 2x upsampling + conv, 4-head self-attention at the lowest resolution (in the
last level and after the first middle block), a 32-wide sinusoidal embedding of `1000 t` through a
32 -> 128 -> 128 MLP, zero-initialised attention output projections and output conv: 1,112,801
parameters for 1 channel, 1,113,955 for 3) and one training step: forward on x_t and t, eps-MSE
loss, backward, AdamW (lr 1e-3, weight decay 0.01: candle_nn's defaults otherwise), on a batch of
28x28x1 and of 32x32x3 images noised on the cosine schedule (`--batch`, 64 for both by default; the
Rust bench's defaults are 64 and 32, so compare with `NDM_BENCH_BATCH=64`). Medians of the timed
steps, in ms, after 2 warm-up steps; the full step is the median of the sums of the three parts,
as in the Rust bench. Not a dependency of the project: a yardstick, run by hand in a virtual
environment with PyTorch installed.

    python3 benches/pytorch/unet_step.py [--threads N] [--iters N] [--batch N]
"""

import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as fn

# The `backbone.unet` defaults (`UNetConfig::default()`).
BASE_CHANNELS = 32
CHANNEL_MULTS = (1, 2, 2)
BLOCKS_PER_LEVEL = 1
GROUPS = 8
TIME_EMBED_DIM = 128
TIME_SCALE = 1000.0
ATTENTION_HEADS = 4
DROPOUT = 0.0


def sinusoidal(t, dim, scale):
    """`[B, dim]`: sin(scale f_k t) then cos(scale f_k t), f_k = 10000^(-k / (dim / 2))."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float64)
    freqs = (torch.exp(-math.log(10000.0) * k / half) * scale).to(t.dtype)
    args = t[:, None] * freqs[None, :]
    return torch.cat([args.sin(), args.cos()], dim=1)


def zero_conv(cin, cout, kernel, padding):
    conv = nn.Conv2d(cin, cout, kernel, padding=padding)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ResBlock(nn.Module):
    """GN+SiLU -> conv3x3 (+ time projection) -> GN+SiLU -> dropout -> conv3x3, plus the skip (a
    1x1 conv when the channel count changes)."""

    def __init__(self, cin, cout, temb_dim, groups, dropout):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb_dim, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-5)
        self.dropout = dropout
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb_act):
        h = self.conv1(fn.silu(self.norm1(x))) + self.temb(temb_act)[:, :, None, None]
        h = fn.silu(self.norm2(h))
        if self.dropout > 0.0:
            h = fn.dropout(h, self.dropout, self.training)
        h = self.conv2(h)
        return h + (self.skip(x) if self.skip is not None else x)


class AttentionBlock(nn.Module):
    """`x + proj(attention(qkv(GroupNorm(x))))` over the H*W positions; qkv channel
    `part * C + head * (C / heads) + c`; the 1x1 output projection starts at zero."""

    def __init__(self, channels, heads, groups):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels, eps=1e-5)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_conv(channels, channels, 1, 0)

    def forward(self, x):
        b, c, h, w = x.shape
        d = c // self.heads
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, d, h * w).transpose(3, 4)
        q, k, v = qkv.unbind(1)  # each [B, heads, N, d]
        out = fn.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        out = out.transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj(out)


class Stage(nn.Module):
    """A residual block, followed by self-attention at the levels that have it."""

    def __init__(self, cin, cout, attn):
        super().__init__()
        self.res = ResBlock(cin, cout, TIME_EMBED_DIM, GROUPS, DROPOUT)
        self.attn = AttentionBlock(cout, ATTENTION_HEADS, GROUPS) if attn else None

    def forward(self, x, temb_act):
        h = self.res(x, temb_act)
        return self.attn(h) if self.attn is not None else h


class UNet(nn.Module):
    def __init__(self, in_channels, out_channels, size):
        super().__init__()
        ch = [m * BASE_CHANNELS for m in CHANNEL_MULTS]
        levels = len(ch)
        # attention_resolutions = "lowest": the last level (and the first middle block).
        attention = [i == levels - 1 for i in range(levels)]
        self.time_l1 = nn.Linear(BASE_CHANNELS, TIME_EMBED_DIM)
        self.time_l2 = nn.Linear(TIME_EMBED_DIM, TIME_EMBED_DIM)
        self.conv_in = nn.Conv2d(in_channels, ch[0], 3, padding=1)
        skips = [ch[0]]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        prev = ch[0]
        for i, c in enumerate(ch):
            stages = nn.ModuleList()
            for _ in range(BLOCKS_PER_LEVEL):
                stages.append(Stage(prev, c, attention[i]))
                prev = c
                skips.append(c)
            self.down.append(stages)
            if i + 1 < levels:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = nn.ModuleList([Stage(prev, prev, attention[-1]), Stage(prev, prev, False)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(levels)):
            c = ch[i]
            stages = nn.ModuleList()
            for _ in range(BLOCKS_PER_LEVEL + 1):
                stages.append(Stage(prev + skips.pop(), c, attention[i]))
                prev = c
            self.up.append(stages)
            if i > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        assert not skips
        self.norm_out = nn.GroupNorm(GROUPS, ch[0], eps=1e-5)
        self.conv_out = zero_conv(ch[0], out_channels, 3, 1)
        self.size = size

    def forward(self, x, t):
        emb = self.time_l2(fn.silu(self.time_l1(sinusoidal(t, BASE_CHANNELS, TIME_SCALE))))
        temb = fn.silu(emb)
        h = self.conv_in(x)
        skips = [h]
        for i, level in enumerate(self.down):
            for s in level:
                h = s(h, temb)
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)
        for s in self.mid:
            h = s(h, temb)
        for j, level in enumerate(self.up):
            for s in level:
                h = s(torch.cat([h, skips.pop()], dim=1), temb)
            if j < len(self.upsample):
                h = self.upsample[j](fn.interpolate(h, scale_factor=2, mode="nearest"))
        return self.conv_out(fn.silu(self.norm_out(h)))


def make_batch(batch, channels, size, gen):
    """x_t of uniform [-1, 1] images on the cosine schedule (alpha_bar = cos^2(pi t / 2)), t, noise."""
    x0 = torch.rand(batch, channels, size, size, generator=gen) * 2 - 1
    noise = torch.randn(batch, channels, size, size, generator=gen)
    t = torch.rand(batch, generator=gen)
    a = torch.cos(0.5 * math.pi * t)[:, None, None, None]
    xt = a * x0 + (1 - a * a).clamp(min=0).sqrt() * noise
    return xt, t, noise


def forward_gflop(net, xt, t):
    """Convolution and matmul GFLOP of one forward (PyTorch's counter), or None."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(xt, t)
    return counter.get_total_flops() / 1e9


def run_case(channels, size, batch, iters, gen):
    net = UNet(channels, channels, (size, size))
    params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    xt, t, noise = make_batch(batch, channels, size, gen)
    gflop = forward_gflop(net, xt, t)

    def step():
        t0 = time.perf_counter()
        loss = fn.mse_loss(net(xt, t), noise)
        loss.item()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        return [(t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3]

    for _ in range(2):
        step()
    samples = [step() for _ in range(iters)]
    split = [statistics.median(s[k] for s in samples) for k in range(3)]
    full = statistics.median(sum(s) for s in samples)
    return params, gflop, split, full


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=7)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)

    rows = []
    for channels, size in [(1, 28), (3, 32)]:
        params, gflop, split, full = run_case(channels, size, args.batch, args.iters, gen)
        shape = f"{size}x{size}x{channels} b{args.batch}"
        rows.append((shape, params, gflop, split, full))

    print(
        f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads, U-Net training step, "
        f"median of {args.iters} timed steps after 2 warm-up steps (ms)"
    )
    print("| shape | parameters | forward GFLOP | forward (incl. loss) | backward | AdamW | **full step** |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for shape, params, gflop, split, full in rows:
        g = "-" if gflop is None else f"{gflop:.2f}"
        print(f"| {shape} | {params:,} | {g} | {split[0]:.1f} | {split[1]:.1f} | {split[2]:.1f} | **{full:.1f}** |")


if __name__ == "__main__":
    main()
