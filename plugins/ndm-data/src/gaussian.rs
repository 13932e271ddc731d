//! A Gaussian data set with a known density: the reference for likelihood and solver tests.

use crate::generate;
use ndm_api::candle_core::{DType, Device, Result, Tensor};
use ndm_api::linalg::GaussianModel;
use ndm_api::registry::BuildCtx;
use ndm_api::{Dataset, NdmError, Rng, Split};
use serde::{Deserialize, Serialize};

/// `dataset.gaussian` config: `N(mean, cov)`; defaults match `backbone.gaussian-oracle`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GaussianDataConfig {
    pub mean: Vec<f64>,
    pub cov: Vec<Vec<f64>>,
}

impl Default for GaussianDataConfig {
    fn default() -> Self {
        GaussianDataConfig {
            mean: vec![0.5, -0.3],
            cov: vec![vec![1.0, 0.6], vec![0.6, 0.8]],
        }
    }
}

/// Draws `mean + Q sqrt(Lambda) eps`.
#[derive(Debug, Clone)]
pub struct GaussianData {
    pub model: GaussianModel,
}

impl Dataset for GaussianData {
    fn data_shape(&self) -> Vec<usize> {
        vec![self.model.dim()]
    }
    fn sample(&self, n: usize, _split: Split, rng: &mut Rng, device: &Device) -> Result<Tensor> {
        let d = self.model.dim();
        generate(n, d, device, |v| {
            v.extend(self.model.transform_noise(&rng.normal_vec(d)))
        })
    }
    fn log_density(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let p = x.to_dtype(DType::F64)?.flatten_from(1)?.to_vec2::<f64>()?;
        let v: Vec<f64> = p.iter().map(|q| self.model.log_density(q)).collect();
        Ok(Some(Tensor::new(v, x.device())?.to_dtype(x.dtype())?))
    }
    fn entropy(&self) -> Option<f64> {
        Some(self.model.entropy())
    }
    fn sample_metrics(&self, samples: &Tensor) -> Result<Vec<(String, f64)>> {
        let p = samples
            .to_dtype(DType::F64)?
            .flatten_from(1)?
            .to_vec2::<f64>()?;
        let (n, d) = (p.len() as f64, self.model.dim());
        let mean: Vec<f64> = (0..d)
            .map(|i| p.iter().map(|q| q[i]).sum::<f64>() / n)
            .collect();
        let mean_err = (0..d)
            .map(|i| (mean[i] - self.model.mean[i]).powi(2))
            .sum::<f64>()
            .sqrt();
        let mut cov_err = 0.0;
        for i in 0..d {
            for j in 0..d {
                let c = p
                    .iter()
                    .map(|q| (q[i] - mean[i]) * (q[j] - mean[j]))
                    .sum::<f64>()
                    / (n - 1.0);
                cov_err += (c - self.model.cov[i * d + j]).powi(2);
            }
        }
        Ok(vec![
            ("mean_error".into(), mean_err),
            ("cov_error".into(), cov_err.sqrt()),
        ])
    }
}

ndm_api::register_plugin!(
    Dataset,
    "gaussian",
    "Gaussian N(mean, cov) in any dimension, exact density known",
    GaussianDataConfig,
    |c: GaussianDataConfig, _ctx: &BuildCtx| {
        let model = GaussianModel::new(c.mean, c.cov).map_err(NdmError::invalid_param)?;
        Ok(Box::new(GaussianData { model }))
    }
);
