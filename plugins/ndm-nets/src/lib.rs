//! Backbones: `backbone.mlp` (2-D data) and `backbone.gaussian-oracle` (the exact denoiser of a
//! Gaussian data set, the reference for testing objectives and solvers).

mod mlp;
mod oracle;

pub use mlp::{Mlp, MlpConfig};
pub use oracle::{GaussianOracle, OracleConfig};

use ndm_api::candle_core::{Result, Tensor};

/// Sinusoidal embedding of times `t` (shape `[B]`, in `[0, 1]`) multiplied by `scale` (1000 in
/// DDPM, whose times are integers), `dim` even: frequencies from `scale` down to `scale / 10^4`.
pub fn sinusoidal_embedding(t: &Tensor, dim: usize, scale: f64) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|k| ((-(10000f64.ln()) * k as f64 / half as f64).exp() * scale) as f32)
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?.to_dtype(t.dtype())?;
    let args = t.unsqueeze(1)?.broadcast_mul(&freqs)?;
    Tensor::cat(&[args.sin()?, args.cos()?], 1)
}
