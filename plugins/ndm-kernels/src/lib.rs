//! Fused CPU kernels for the U-Net's hot ops, as candle CustomOps with their own backward.
//!
//! * [`ops`]: device-dispatching functions (`conv2d`, `group_norm`, `group_norm_silu`, `silu`,
//!   `upsample_nearest2x`) and the [`KernelBackend`] switch (fused CPU kernels or candle's ops).
//! * [`layers`]: `Conv2d` and `GroupNorm` (optionally fused with SiLU) built from a `VarBuilder`.
//! * [`unet`]: the reference DDPM-style U-Net ([`unet::UNet`], [`unet::UNetConfig`]).
//! * [`profile`]: opt-in per-kernel timing.
//!
//! Kernels run on contiguous f32/f64 CPU tensors, parallel over batch items and channel groups
//! with rayon, with GEMMs through the `gemm` crate and long sums accumulated in f64.

mod conv;
mod float;
mod gemm;
mod group_norm;
pub mod layers;
pub mod ops;
pub mod profile;
pub mod rng;
mod silu;
pub mod unet;
mod upsample;

pub use ops::{conv2d, group_norm, group_norm_silu, silu, upsample_nearest2x, KernelBackend};
