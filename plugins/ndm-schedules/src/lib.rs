//! Noise schedules: `schedule.vp-linear` (DDPM's linear betas, discrete or continuous form) and
//! `schedule.cosine` (Nichol & Dhariwal's cosine, truncated in log-SNR).

mod cosine;
mod vp_linear;

pub use cosine::{Cosine, CosineConfig};
pub use vp_linear::{VpForm, VpLinear, VpLinearConfig};
