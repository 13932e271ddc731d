//! Normalizing flows ([`glow`]) and the plugins built on them: `prior.glow`, DiNof's flow prior
//! at `t_m` (Zand et al., "Diffusion models with deterministic normalizing flow priors"), and
//! `transform.glow`, a time-independent invertible `F` whose log-determinant enters `L_rec`
//! (INDM-style).
//!
//! With `prior.glow` the forward process stops at `t_m`: the flow models `q(z_{t_m})`, the
//! pipeline's `t_end` becomes `t_m` (training times, the NELBO's diffusion terms and every solver
//! stay on `[0, t_m]`), sampling draws `z_{t_m}` through the inverse flow, and
//! `L_prior = E_q[-log p_flow(z_{t_m})] - H(q(z_{t_m} | x))` (`docs/math.md`, "DiNof") trains the
//! flow through any objective that has the term.

pub mod glow;

use glow::{Glow, GlowSize};
use ndm_api::candle_core::{DType, Device, Result, Tensor};
use ndm_api::registry::BuildCtx;
use ndm_api::{NdmError, Prior, Rng, Transform};
use serde::{Deserialize, Serialize};

/// `prior.glow` config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GlowPriorConfig {
    /// The time `t_m` in `(0, 1]` where the flow takes over; on a discrete model's grid.
    pub t_m: f64,
    /// `L`: multi-scale levels for images (the side must be divisible by `2^L`); flat data has one.
    pub levels: usize,
    /// `K`: flow steps per level.
    pub steps: usize,
    /// Hidden channels (images) or units (flat data) of each coupling's network.
    pub hidden: usize,
}

impl Default for GlowPriorConfig {
    fn default() -> Self {
        GlowPriorConfig {
            t_m: 0.6,
            levels: 2,
            steps: 4,
            hidden: 64,
        }
    }
}

/// DiNof's prior: a Glow flow over `z_{t_m}`.
#[derive(Debug)]
pub struct GlowPrior {
    t_m: f64,
    flow: Glow,
}

impl GlowPrior {
    pub fn new(cfg: GlowPriorConfig, ctx: &BuildCtx) -> ndm_api::Result<Self> {
        if !(cfg.t_m > 0.0 && cfg.t_m <= 1.0) {
            return Err(NdmError::invalid_param(format!(
                "t_m must lie in (0, 1], got {}",
                cfg.t_m
            )));
        }
        let size = GlowSize {
            levels: cfg.levels,
            steps: cfg.steps,
            hidden: cfg.hidden,
        };
        Ok(GlowPrior {
            t_m: cfg.t_m,
            flow: Glow::new(ctx.vb.clone(), ctx.shape, size)?,
        })
    }
}

impl Prior for GlowPrior {
    fn t_end(&self) -> f64 {
        self.t_m
    }

    fn sample(
        &self,
        shape: &[usize],
        rng: &mut Rng,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        if shape.get(1..) != Some(self.flow.shape()) {
            ndm_api::candle_core::bail!(
                "prior glow was built for latents of shape {:?}, asked for {shape:?}",
                self.flow.shape()
            );
        }
        self.flow.sample(shape[0], rng, dtype, device)
    }

    fn log_prob(&self, z: &Tensor) -> Result<Tensor> {
        self.flow.log_prob(z)
    }

    /// `-log p_flow(z) - H(N(mean, std^2 I))`, `H = D (1/2 ln(2 pi e) + ln std)`: one Monte
    /// Carlo draw of `KL(q || p_flow)`.
    fn prior_loss(&self, mean: &Tensor, std: &Tensor, z: &Tensor) -> Result<Tensor> {
        let d = (mean.elem_count() / mean.dim(0)?) as f64;
        let entropy = ndm_api::elbo::gaussian_entropy(&(std.log()? * d)?, d)?;
        self.flow.log_prob(z)?.neg()? - entropy.to_dtype(z.dtype())?
    }

    fn is_trainable(&self) -> bool {
        true
    }

    fn needs_data_init(&self) -> bool {
        true
    }

    fn data_init(&self, z: &Tensor) -> Result<()> {
        self.flow.data_init(z)
    }
}

ndm_api::register_plugin!(
    Prior,
    "glow",
    "Glow flow at t_m (DiNof): multi-scale for images, MLP couplings for flat data; L_prior = flow NLL - entropy of q(z_{t_m}|x)",
    GlowPriorConfig,
    |c: GlowPriorConfig, ctx: &BuildCtx| Ok(Box::new(GlowPrior::new(c, ctx)?))
);

/// `transform.glow` config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GlowTransformConfig {
    /// `L`: multi-scale levels for images (the side must be divisible by `2^L`); flat data has one.
    pub levels: usize,
    /// `K`: flow steps per level.
    pub steps: usize,
    /// Hidden channels (images) or units (flat data) of each coupling's network.
    pub hidden: usize,
}

impl Default for GlowTransformConfig {
    fn default() -> Self {
        GlowTransformConfig {
            levels: 1,
            steps: 4,
            hidden: 64,
        }
    }
}

/// `F(x, t) = f(x)` for a Glow flow `f` onto the data's own shape ([`Glow::map`]): time
/// independent (`dF/dt = 0`) and invertible, with `log|det df/dx|` in `L_rec`, so the diffusion
/// runs on `f(x)` and the NELBO stays a bound on `-log p(x)`. Its actnorms start at the identity
/// (a transform has no data-dependent initialisation).
#[derive(Debug)]
pub struct GlowTransform {
    flow: Glow,
}

impl GlowTransform {
    pub fn new(cfg: GlowTransformConfig, ctx: &BuildCtx) -> ndm_api::Result<Self> {
        let size = GlowSize {
            levels: cfg.levels,
            steps: cfg.steps,
            hidden: cfg.hidden,
        };
        Ok(GlowTransform {
            flow: Glow::new(ctx.vb.clone(), ctx.shape, size)?,
        })
    }

    /// `f^-1(y)`.
    pub fn inverse(&self, y: &Tensor) -> Result<Tensor> {
        self.flow.unmap(y)
    }
}

impl Transform for GlowTransform {
    fn forward(&self, x: &Tensor, _t: &Tensor) -> Result<Tensor> {
        Ok(self.flow.map(x)?.0)
    }

    fn is_time_independent(&self) -> bool {
        true
    }

    fn is_trainable(&self) -> bool {
        true
    }

    fn forward_log_det(&self, x: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        Ok(Some(self.flow.map(x)?))
    }
}

ndm_api::register_plugin!(
    Transform,
    "glow",
    "F(x, t) = f(x): a time-independent Glow flow with log|det df/dx| in L_rec (INDM-style)",
    GlowTransformConfig,
    |c: GlowTransformConfig, ctx: &BuildCtx| Ok(Box::new(GlowTransform::new(c, ctx)?))
);
