//! A residual MLP with a sinusoidal time embedding.

use ndm_api::candle_core::{Module, Result, Tensor};
use ndm_api::candle_nn::{linear, Linear, VarBuilder};
use ndm_api::embedding::{refuse_class, sinusoidal_embedding, ClassEmbedding};
use ndm_api::registry::BuildCtx;
use ndm_api::{Backbone, NdmError, NetInput};
use serde::{Deserialize, Serialize};

/// `backbone.mlp` config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    /// Width of the hidden layers.
    pub hidden: usize,
    /// Residual blocks (two linear layers each).
    pub blocks: usize,
    /// Size of the sinusoidal time embedding (even).
    pub time_dim: usize,
    /// Highest embedding frequency in radians per unit time. 1000 follows DDPM; a network whose
    /// time derivative matters (inside a learned transform, differentiated by a central difference
    /// with step 5e-3) needs a smooth one, e.g. 10.
    pub time_scale: f64,
    /// Fourier features of the input: `sin` and `cos` of `2^k pi z` for `k < input_fourier` per
    /// coordinate, appended to `z` (0: raw input only). They counter an MLP's bias towards smooth
    /// functions, which blurs sharp edges such as the checkerboard's.
    pub input_fourier: usize,
}

impl Default for MlpConfig {
    fn default() -> Self {
        MlpConfig {
            hidden: 128,
            blocks: 3,
            time_dim: 32,
            time_scale: 1000.0,
            input_fourier: 0,
        }
    }
}

#[derive(Debug, Clone)]
struct Block {
    l1: Linear,
    l2: Linear,
    temb: Linear,
}

/// `h -> h + W2 silu(W1 silu(h) + T(t))` blocks between an input and an output projection.
#[derive(Debug, Clone)]
pub struct Mlp {
    cfg: MlpConfig,
    dims: usize,
    input: Linear,
    time: Linear,
    /// A conditional network's class embedding, added to the time embedding.
    class: Option<ClassEmbedding>,
    blocks: Vec<Block>,
    output: Linear,
}

impl Mlp {
    /// An MLP for data of `shape`, class-conditional when `classes` is above 0.
    pub fn new(
        cfg: MlpConfig,
        shape: &[usize],
        classes: usize,
        vb: VarBuilder,
    ) -> ndm_api::Result<Self> {
        if cfg.hidden == 0 || cfg.time_dim == 0 || !cfg.time_dim.is_multiple_of(2) {
            return Err(NdmError::invalid_param(
                "hidden must be >= 1 and time_dim even and >= 2",
            ));
        }
        let dims: usize = shape.iter().product();
        let h = cfg.hidden;
        let input = linear(dims * (1 + 2 * cfg.input_fourier), h, vb.pp("input"))?;
        let time = linear(cfg.time_dim, h, vb.pp("time"))?;
        let class = (classes > 0)
            .then(|| ClassEmbedding::new(classes, h, vb.pp("class")))
            .transpose()?;
        let blocks = (0..cfg.blocks)
            .map(|i| {
                let b = vb.pp(format!("block{i}"));
                Ok(Block {
                    l1: linear(h, h, b.pp("l1"))?,
                    l2: linear(h, h, b.pp("l2"))?,
                    temb: linear(h, h, b.pp("temb"))?,
                })
            })
            .collect::<ndm_api::candle_core::Result<Vec<_>>>()?;
        let output = linear(h, dims, vb.pp("output"))?;
        Ok(Mlp {
            cfg,
            dims,
            input,
            time,
            class,
            blocks,
            output,
        })
    }
}

impl Mlp {
    /// `z` followed by its Fourier features.
    fn features(&self, z: &Tensor) -> Result<Tensor> {
        if self.cfg.input_fourier == 0 {
            return Ok(z.clone());
        }
        let mut parts = vec![z.clone()];
        for k in 0..self.cfg.input_fourier {
            let arg = (z * (std::f64::consts::PI * 2f64.powi(k as i32)))?;
            parts.push(arg.sin()?);
            parts.push(arg.cos()?);
        }
        Tensor::cat(&parts, 1)
    }
}

impl Backbone for Mlp {
    fn forward(&self, input: &NetInput) -> Result<Tensor> {
        let shape = input.z.dims().to_vec();
        let z = input.z.reshape((shape[0], self.dims))?;
        let mut temb = self.time.forward(&sinusoidal_embedding(
            input.t,
            self.cfg.time_dim,
            self.cfg.time_scale,
        )?)?;
        match &self.class {
            Some(c) => temb = (&temb + c.forward(input.class, shape[0], temb.dtype())?)?,
            None => refuse_class(input.class, "backbone.mlp")?,
        }
        let temb = temb.silu()?;
        let mut h = self.input.forward(&self.features(&z)?)?;
        for b in &self.blocks {
            let inner = (b.l1.forward(&h.silu()?)? + b.temb.forward(&temb)?)?;
            h = (h + b.l2.forward(&inner.silu()?)?)?;
        }
        self.output.forward(&h.silu()?)?.reshape(shape)
    }
}

ndm_api::register_plugin!(
    Backbone,
    "mlp",
    "residual MLP with sinusoidal time embedding (for 2-D and other flat data)",
    MlpConfig,
    |cfg: MlpConfig, ctx: &BuildCtx| Ok(Box::new(Mlp::new(
        cfg,
        ctx.shape,
        ctx.classes,
        ctx.vb.clone()
    )?))
);
