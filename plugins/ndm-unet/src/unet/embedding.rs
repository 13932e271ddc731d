//! Sinusoidal time embedding followed by a 2-layer MLP.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

use crate::kernels::KernelBackend;

/// `[B]` times in [0, 1] -> `[B, dim]` as `[sin(1000 t f_i), cos(1000 t f_i)]`,
/// `f_i = 10000^(-i / (dim/2))`.
pub fn sinusoidal_embedding(t: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f64> = (0..half)
        .map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp() * 1000.0)
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?.to_dtype(t.dtype())?;
    let args = t.reshape(((), 1))?.broadcast_mul(&freqs)?;
    Tensor::cat(&[args.sin()?, args.cos()?], 1)
}

/// `linear(silu(linear(sinusoidal(t))))`.
#[derive(Debug, Clone)]
pub struct TimeEmbedding {
    dim: usize,
    l1: Linear,
    l2: Linear,
    backend: KernelBackend,
}

impl TimeEmbedding {
    pub fn new(vb: VarBuilder, dim: usize, out: usize, backend: KernelBackend) -> Result<Self> {
        Ok(Self {
            dim,
            l1: linear(dim, out, vb.pp("l1"))?,
            l2: linear(out, out, vb.pp("l2"))?,
            backend,
        })
    }

    pub fn forward(&self, t: &Tensor) -> Result<Tensor> {
        let t = match t.dtype() {
            DType::F32 | DType::F64 => t.clone(),
            _ => t.to_dtype(DType::F32)?,
        };
        let e = sinusoidal_embedding(&t, self.dim)?;
        self.l2.forward(&self.backend.silu(&self.l1.forward(&e)?)?)
    }
}
