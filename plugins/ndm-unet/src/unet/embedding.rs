//! The time embedding: sinusoids of `time_scale * t` followed by a 2-layer MLP.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};
use ndm_api::embedding::sinusoidal_embedding;

use crate::kernels::KernelBackend;

/// `linear(silu(linear(sinusoidal(t))))`, with the shared [`sinusoidal_embedding`] of ndm-api.
#[derive(Debug, Clone)]
pub struct TimeEmbedding {
    dim: usize,
    scale: f64,
    l1: Linear,
    l2: Linear,
    backend: KernelBackend,
}

impl TimeEmbedding {
    /// Sinusoids of size `dim` (even) of `scale * t`, then `dim -> out -> out`.
    pub fn new(
        vb: VarBuilder,
        dim: usize,
        scale: f64,
        out: usize,
        backend: KernelBackend,
    ) -> Result<Self> {
        Ok(Self {
            dim,
            scale,
            l1: linear(dim, out, vb.pp("l1"))?,
            l2: linear(out, out, vb.pp("l2"))?,
            backend,
        })
    }

    /// `t: [B]` -> `[B, out]`.
    pub fn forward(&self, t: &Tensor) -> Result<Tensor> {
        let t = match t.dtype() {
            DType::F32 | DType::F64 => t.clone(),
            _ => t.to_dtype(DType::F32)?,
        };
        let e = sinusoidal_embedding(&t, self.dim, self.scale)?;
        self.l2.forward(&self.backend.silu(&self.l1.forward(&e)?)?)
    }
}
