//! Priors: `prior.gaussian` (`N(0, I)` at `t = 1`).

use ndm_api::candle_core::{DType, Device, Result, Tensor};
use ndm_api::elbo::sum_sq;
use ndm_api::registry::BuildCtx;
use ndm_api::registry::NoParams;
use ndm_api::{Prior, Rng};

/// The standard normal prior at `t = 1`.
#[derive(Debug, Clone, Default)]
pub struct StandardGaussian;

const HALF_LN_2PI: f64 = 0.918_938_533_204_672_8;

impl Prior for StandardGaussian {
    fn sample(
        &self,
        shape: &[usize],
        rng: &mut Rng,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        rng.normal_tensor(shape, dtype, device)
    }
    fn log_prob(&self, z: &Tensor) -> Result<Tensor> {
        let d = (z.elem_count() / z.dim(0)?) as f64;
        sum_sq(z)?.affine(-0.5, -d * HALF_LN_2PI)
    }
    /// `KL(N(m, s^2 I) || N(0, I)) = 1/2 (|m|^2 + D (s^2 - 1 - 2 ln s))`.
    fn prior_loss(&self, mean: &Tensor, std: &Tensor, _z: &Tensor) -> Result<Tensor> {
        let d = (mean.elem_count() / mean.dim(0)?) as f64;
        let per_dim = ((std.sqr()? - 1.0)? - (std.log()? * 2.0)?)?;
        (sum_sq(mean)? + (per_dim * d)?)? * 0.5
    }
}

ndm_api::register_plugin!(
    Prior,
    "gaussian",
    "standard normal N(0, I) at t = 1",
    NoParams,
    |_c: NoParams, _ctx: &BuildCtx| Ok(Box::new(StandardGaussian))
);
