//! The time embedding: sinusoids of `time_scale * t` (or of the scaled log-SNR) followed by a
//! 2-layer MLP.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};
use ndm_api::embedding::{sinusoidal_embedding, sinusoidal_embedding_with_dt};

use super::config::{TimeInput, LOG_SNR_MAX, LOG_SNR_SPAN};
use crate::kernels::KernelBackend;

/// `linear(silu(linear(sinusoidal(s))))`, with the shared [`sinusoidal_embedding`] of ndm-api and
/// `s = scale * t` or `s = scale * (20 - log_snr) / 40` ([`TimeInput`]).
#[derive(Debug, Clone)]
pub struct TimeEmbedding {
    dim: usize,
    scale: f64,
    input: TimeInput,
    l1: Linear,
    l2: Linear,
    backend: KernelBackend,
}

impl TimeEmbedding {
    /// Sinusoids of size `dim` (even) of `scale * t` (or of the mapped log-SNR), then
    /// `dim -> out -> out`.
    pub fn new(
        vb: VarBuilder,
        dim: usize,
        scale: f64,
        input: TimeInput,
        out: usize,
        backend: KernelBackend,
    ) -> Result<Self> {
        Ok(Self {
            dim,
            scale,
            input,
            l1: linear(dim, out, vb.pp("l1"))?,
            l2: linear(out, out, vb.pp("l2"))?,
            backend,
        })
    }

    /// What the sinusoids are of.
    pub fn input(&self) -> TimeInput {
        self.input
    }

    /// `t: [B]` (and for [`TimeInput::LogSnr`] `log_snr: [B]`, required) -> `[B, out]` in
    /// `dtype`.
    pub fn forward(&self, t: &Tensor, log_snr: Option<&Tensor>, dtype: DType) -> Result<Tensor> {
        let dtype = float_dtype(dtype);
        let s = match self.input {
            TimeInput::T => t.to_dtype(dtype)?,
            TimeInput::LogSnr => {
                let Some(l) = log_snr else {
                    candle_core::bail!(
                        "UNet: time_embedding = \"log-snr\" needs the log-SNR of every item"
                    );
                };
                // Clamped far outside every schedule's range but finite: flow matching's
                // log-SNR is -inf at t = 1 (alpha = 0).
                l.to_dtype(dtype)?
                    .clamp(-3.0 * LOG_SNR_MAX, 3.0 * LOG_SNR_MAX)?
                    .affine(-1.0 / LOG_SNR_SPAN, LOG_SNR_MAX / LOG_SNR_SPAN)?
            }
        };
        let e = sinusoidal_embedding(&s, self.dim, self.scale)?;
        self.l2.forward(&self.backend.silu(&self.l1.forward(&e)?)?)
    }

    /// [`Self::forward`] of `t` for [`TimeInput::T`] with its derivative in `t` (forward mode):
    /// `[B, out]` each. `None` for [`TimeInput::LogSnr`], whose input is not `t`.
    pub fn forward_with_dt(&self, t: &Tensor, dtype: DType) -> Result<Option<(Tensor, Tensor)>> {
        if self.input != TimeInput::T {
            return Ok(None);
        }
        let dtype = float_dtype(dtype);
        let (e, de) = sinusoidal_embedding_with_dt(&t.to_dtype(dtype)?, self.dim, self.scale)?;
        let u = self.l1.forward(&e)?;
        let du = de.matmul(&self.l1.weight().t()?)?;
        let a = self.backend.silu(&u)?;
        let da = self.backend.silu_tangent(&u, &du)?;
        let y = self.l2.forward(&a)?;
        let dy = da.matmul(&self.l2.weight().t()?)?;
        Ok(Some((y, dy)))
    }
}

/// The dtype the embedding is computed in: the network's for f32 and f64, else f32.
fn float_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F32 | DType::F64 => dtype,
        _ => DType::F32,
    }
}
