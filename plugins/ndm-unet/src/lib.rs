//! The `backbone.unet` plugin.
//!
//! * [`kernels`]: `ndm_api::kernels`, re-exported: the fused CPU kernels the U-Net runs on
//!   (conv2d, GroupNorm(+SiLU), SiLU, 2x upsampling, softmax, the attention core) behind
//!   device-dispatching functions and the [`KernelBackend`] switch.
//! * [`layers`]: `Conv2d` and `GroupNorm` (optionally fused with SiLU) built from a `VarBuilder`.
//! * [`unet`]: the reference DDPM/ADM-style U-Net with self-attention ([`unet::UNet`],
//!   [`unet::UNetConfig`]).
//! * [`plugin`]: the U-Net registered as `backbone.unet` for image data `[C, H, W]`.

pub use ndm_api::kernels;
pub mod layers;
pub mod plugin;
pub mod unet;

pub use kernels::{
    attention, conv2d, group_norm, group_norm_silu, silu, softmax_last_dim, upsample_nearest2x,
    KernelBackend,
};
