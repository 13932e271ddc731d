//! Fused CPU kernels for the U-Net's hot ops, as candle CustomOps with their own backward.
//!
//! The public, device-dispatching functions (`conv2d`, `group_norm`, `group_norm_silu`, `silu`,
//! `softmax_last_dim`, `attention`, `upsample_nearest2x`) and the [`KernelBackend`] switch (fused CPU kernels
//! or candle's ops) live here; [`profile`] is opt-in per-kernel timing. Kernels run on f32/f64 CPU tensors, parallel over
//! batch items and channel groups with rayon, with GEMMs through the `gemm` crate and long sums
//! accumulated in f64.

mod attention;
mod conv;
mod float;
mod gemm;
mod group_norm;
mod ops;
pub mod profile;
mod silu;
mod softmax;
mod upsample;

pub use ops::{
    attention, conv2d, group_norm, group_norm_silu, silu, softmax_last_dim, upsample_nearest2x,
    KernelBackend,
};
