//! The exact denoiser of Gaussian data under the identity transform.

use ndm_api::candle_core::{Result, Tensor};
use ndm_api::linalg::GaussianModel;
use ndm_api::registry::BuildCtx;
use ndm_api::{Backbone, NdmError, NetInput};
use serde::{Deserialize, Serialize};

/// `backbone.gaussian-oracle` config: the data distribution `N(mean, cov)`. Defaults match the
/// `gaussian` data set's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OracleConfig {
    pub mean: Vec<f64>,
    pub cov: Vec<Vec<f64>>,
}

impl Default for OracleConfig {
    fn default() -> Self {
        OracleConfig {
            mean: vec![0.5, -0.3],
            cov: vec![vec![1.0, 0.6], vec![0.6, 0.8]],
        }
    }
}

/// `E[x | z_t] = mu + Sigma alpha (alpha^2 Sigma + sigma^2 I)^-1 (z - alpha mu)`, evaluated in the
/// eigenbasis of `Sigma`: `mu + Q diag(alpha l_k / (alpha^2 l_k + sigma^2)) Q^T (z - alpha mu)`.
/// Exact for the identity transform; it has no weights and outputs `xhat` directly.
#[derive(Debug, Clone)]
pub struct GaussianOracle {
    mean: Tensor,
    /// `Q`, `[d, d]`.
    q: Tensor,
    /// Eigenvalues, `[1, d]`.
    lambda: Tensor,
}

impl GaussianOracle {
    pub fn new(cfg: OracleConfig, ctx: &BuildCtx) -> ndm_api::Result<Self> {
        if ctx.classes > 0 {
            return Err(NdmError::Incompatible(
                "the Gaussian oracle is the denoiser of one Gaussian: it cannot be class-conditional".into(),
            ));
        }
        let g = GaussianModel::new(cfg.mean, cfg.cov).map_err(NdmError::invalid_param)?;
        let d = g.dim();
        let dims: usize = ctx.shape.iter().product();
        if dims != d {
            return Err(NdmError::invalid_param(format!(
                "the data have {dims} dimensions but the oracle's Gaussian has {d}"
            )));
        }
        let t = |v: Vec<f64>, s: &[usize]| ndm_api::rng::host_tensor(v, s, ctx.dtype, ctx.device);
        Ok(GaussianOracle {
            mean: t(g.mean.clone(), &[1, d])?,
            q: t(g.eigvecs.clone(), &[d, d])?,
            lambda: t(g.eigvals.clone(), &[1, d])?,
        })
    }
}

impl Backbone for GaussianOracle {
    fn forward(&self, input: &NetInput) -> Result<Tensor> {
        ndm_api::embedding::refuse_class(input.class, "backbone.gaussian-oracle")?;
        let shape = input.z.dims().to_vec();
        let (b, d) = (shape[0], self.lambda.dim(1)?);
        let z = input.z.reshape((b, d))?;
        let a = input.alpha.reshape((b, 1))?;
        let s2 = input.sigma.sqr()?.reshape((b, 1))?;
        let centered = (z - self.mean.broadcast_mul(&a)?)?;
        let proj = centered.matmul(&self.q)?;
        let al = self.lambda.broadcast_mul(&a)?;
        let gain = al.broadcast_div(&(al.broadcast_mul(&a)?.broadcast_add(&s2))?)?;
        let out = (proj * gain)?
            .matmul(&self.q.t()?)?
            .broadcast_add(&self.mean)?;
        out.reshape(shape)
    }
    fn predicts_data(&self) -> bool {
        true
    }
}

ndm_api::register_plugin!(
    Backbone,
    "gaussian-oracle",
    "exact denoiser E[x | z_t] of Gaussian data N(mean, cov), no weights (reference for tests)",
    OracleConfig,
    |cfg: OracleConfig, ctx: &BuildCtx| Ok(Box::new(GaussianOracle::new(cfg, ctx)?))
);
