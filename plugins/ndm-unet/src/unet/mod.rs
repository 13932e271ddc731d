//! The reference DDPM-style U-Net: GroupNorm+SiLU residual blocks with a time embedding,
//! stride-2 conv downsampling, nearest upsampling + conv, and concatenated skips.

mod block;
mod config;
mod embedding;
mod net;

pub use block::ResBlock;
pub use config::UNetConfig;
pub use embedding::TimeEmbedding;
pub use net::UNet;
