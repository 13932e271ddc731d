//! NDM's posterior step `q(z_s | z_t, xhat)`: `solver.ancestral` (eta = 1, DDPM) and `solver.ddim`
//! (eta = 0), on any sub-grid of the training grid.

use ndm_api::registry::BuildCtx;
use ndm_api::{NdmError, ReverseProcess, Rng, SolveOutput, Solver, TimeGrid};
use serde::{Deserialize, Serialize};

/// One network evaluation per step (`eta` 1: DDPM's ancestral sampler, 0: DDIM's deterministic one): `xhat = xhat(z_t, t)`, then `z_s ~ q(z_s | z_t, xhat)`.
#[derive(Debug, Clone)]
pub struct PosteriorSolver {
    pub eta: f64,
}

impl PosteriorSolver {
    pub fn new(name: &str, eta: f64) -> ndm_api::Result<Self> {
        if !(0.0..=1.0).contains(&eta) {
            return Err(NdmError::config(
                name,
                format!("eta must be in [0, 1], got {eta}"),
            ));
        }
        Ok(PosteriorSolver { eta })
    }
}

impl Solver for PosteriorSolver {
    fn sample(
        &self,
        rp: &dyn ReverseProcess,
        z_start: ndm_api::candle_core::Tensor,
        grid: &TimeGrid,
        rng: &mut Rng,
    ) -> ndm_api::Result<SolveOutput> {
        let mut z = z_start;
        let mut nfe = 0;
        for (t, s) in grid.intervals() {
            let xhat = rp.predict_x(&z, t)?;
            nfe += 1;
            let post = rp.posterior(&z, &xhat, t, s, self.eta)?;
            z = crate::add_noise(post.mean, post.std, rng)?;
        }
        Ok(SolveOutput { z, nfe })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AncestralConfig {
    /// Stochasticity in `[0, 1]` (default 1: DDPM).
    pub eta: f64,
}

impl Default for AncestralConfig {
    fn default() -> Self {
        AncestralConfig { eta: 1.0 }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DdimConfig {
    /// Stochasticity in `[0, 1]` (default 0: deterministic DDIM).
    pub eta: f64,
}

ndm_api::register_plugin!(
    Solver,
    "ancestral",
    "ancestral sampling with NDM's posterior (eta = 1: DDPM), any sub-grid; runs every process",
    AncestralConfig,
    |c: AncestralConfig, _ctx: &BuildCtx| Ok(Box::new(PosteriorSolver::new(
        "solver.ancestral",
        c.eta
    )?))
);
ndm_api::register_plugin!(
    Solver,
    "ddim",
    "DDIM: the posterior step with eta = 0 (deterministic), any sub-grid; runs every process",
    DdimConfig,
    |c: DdimConfig, _ctx: &BuildCtx| Ok(Box::new(PosteriorSolver::new("solver.ddim", c.eta)?))
);
