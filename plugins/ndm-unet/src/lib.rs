//! The `backbone.unet` plugin and the fused CPU kernels it runs on.
//!
//! * [`kernels`]: fused CPU conv2d, GroupNorm(+SiLU), SiLU, 2x upsampling, softmax and the
//!   multi-head attention core as candle CustomOps with their own backward, behind
//!   device-dispatching functions and the [`KernelBackend`] switch (fused CPU kernels or candle's
//!   ops).
//! * [`layers`]: `Conv2d` and `GroupNorm` (optionally fused with SiLU) built from a `VarBuilder`.
//! * [`unet`]: the reference DDPM/ADM-style U-Net with self-attention ([`unet::UNet`],
//!   [`unet::UNetConfig`]).
//! * [`plugin`]: the U-Net registered as `backbone.unet` for image data `[C, H, W]`.
//!
//! Kernels run on contiguous f32/f64 CPU tensors, parallel over batch items and channel groups
//! with rayon, with GEMMs through the `gemm` crate and long sums accumulated in f64.

pub mod kernels;
pub mod layers;
pub mod plugin;
pub mod unet;

pub use kernels::{
    attention, conv2d, group_norm, group_norm_silu, silu, softmax_last_dim, upsample_nearest2x,
    KernelBackend,
};
