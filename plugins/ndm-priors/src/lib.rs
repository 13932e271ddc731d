//! Priors: `prior.gaussian` (`N(0, scale^2 I)` at `t = 1`; `scale = 1` except for VE schedules).

use ndm_api::candle_core::{DType, Device, Result, Tensor};
use ndm_api::elbo::{sum_sq, HALF_LN_2PI};
use ndm_api::registry::BuildCtx;
use ndm_api::{NdmError, Prior, Rng};
use serde::{Deserialize, Serialize};

/// `prior.gaussian` config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GaussianConfig {
    /// The standard deviation: 1 for VP, sub-VP and flow matching; `sigma_max` for `schedule.ve`.
    pub scale: f64,
}

impl Default for GaussianConfig {
    fn default() -> Self {
        GaussianConfig { scale: 1.0 }
    }
}

/// The normal prior `N(0, scale^2 I)` at `t = 1`.
#[derive(Debug, Clone)]
pub struct StandardGaussian {
    scale: f64,
}

impl Default for StandardGaussian {
    fn default() -> Self {
        StandardGaussian { scale: 1.0 }
    }
}

impl StandardGaussian {
    pub fn new(cfg: GaussianConfig) -> ndm_api::Result<Self> {
        if !(cfg.scale > 0.0 && cfg.scale.is_finite()) {
            return Err(NdmError::invalid_param(format!(
                "scale must be positive and finite, got {}",
                cfg.scale
            )));
        }
        Ok(StandardGaussian { scale: cfg.scale })
    }
}

impl Prior for StandardGaussian {
    fn sample(
        &self,
        shape: &[usize],
        rng: &mut Rng,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        rng.normal_tensor(shape, dtype, device)? * self.scale
    }
    fn log_prob(&self, z: &Tensor) -> Result<Tensor> {
        let d = (z.elem_count() / z.dim(0)?) as f64;
        let c = self.scale;
        sum_sq(z)?.affine(-0.5 / (c * c), -d * (HALF_LN_2PI + c.ln()))
    }
    /// `KL(N(m, s^2 I) || N(0, c^2 I)) = 1/2 (|m|^2 / c^2 + D (s^2 / c^2 - 1 - 2 ln(s / c)))`.
    fn prior_loss(&self, mean: &Tensor, std: &Tensor, _z: &Tensor) -> Result<Tensor> {
        let d = (mean.elem_count() / mean.dim(0)?) as f64;
        let r = (std / self.scale)?;
        let per_dim = ((r.sqr()? - 1.0)? - (r.log()? * 2.0)?)?;
        ((sum_sq(mean)? / (self.scale * self.scale))? + (per_dim * d)?)? * 0.5
    }
}

ndm_api::register_plugin!(
    Prior,
    "gaussian",
    "normal N(0, scale^2 I) at t = 1 (scale 1; sigma_max for VE)",
    GaussianConfig,
    |c: GaussianConfig, _ctx: &BuildCtx| Ok(Box::new(StandardGaussian::new(c)?))
);
