//! The reference DDPM-style U-Net (Ho et al. 2020, with the zero-initialised output layers and
//! multi-head attention of Nichol & Dhariwal 2021): GroupNorm+SiLU residual blocks with a time
//! embedding and dropout, self-attention at chosen resolutions, stride-2 conv downsampling,
//! nearest upsampling + conv, and concatenated skips.

mod attention;
mod block;
mod config;
mod embedding;
mod net;

pub use attention::AttentionBlock;
pub use block::ResBlock;
pub use config::{AttentionResolutions, TimeInput, UNetConfig, LOG_SNR_MAX, LOG_SNR_SPAN};
pub use embedding::TimeEmbedding;
pub use net::UNet;
