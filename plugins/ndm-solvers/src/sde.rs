//! Solvers of the reverse SDE / probability-flow ODE (`docs/math.md`).

use crate::noise_unless_last;
use ndm_api::candle_core::Tensor;
use ndm_api::registry::BuildCtx;
use ndm_api::registry::NoParams;
use ndm_api::{NdmError, ReverseProcess, Rng, SolveOutput, Solver, TimeGrid};
use serde::{Deserialize, Serialize};

/// `solver.euler-maruyama` config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EulerMaruyamaConfig {
    /// Noise scale of the reverse SDE in `[0, 1]`: 1 the reverse diffusion, 0 the probability-flow ODE.
    pub eta: f64,
}

impl Default for EulerMaruyamaConfig {
    fn default() -> Self {
        EulerMaruyamaConfig { eta: 1.0 }
    }
}

/// `z_s = z_t + f(z_t, t) (s - t) + g sqrt(t - s) noise`; the last step adds no noise (it returns
/// the mean, as score_sde's samplers do).
#[derive(Debug, Clone)]
pub struct EulerMaruyama {
    pub eta: f64,
}

/// One Euler-Maruyama step from `t` to `s`; returns the mean and the noise std.
pub fn em_step(
    rp: &dyn ReverseProcess,
    z: &Tensor,
    t: f64,
    s: f64,
    eta: f64,
) -> ndm_api::Result<(Tensor, f64)> {
    let xhat = rp.predict_x(z, t)?;
    let (drift, g) = rp.reverse_sde(z, &xhat, t, eta)?;
    let dt = s - t;
    Ok(((z + (drift * dt)?)?, g * (-dt).sqrt()))
}

impl Solver for EulerMaruyama {
    fn check(&self, rp: &dyn ReverseProcess) -> ndm_api::Result<()> {
        ndm_api::solver::refuse_sde_at_zero_alpha(rp, "euler-maruyama", self.eta)
    }

    fn sample(
        &self,
        rp: &dyn ReverseProcess,
        z_start: Tensor,
        grid: &TimeGrid,
        rng: &mut Rng,
    ) -> ndm_api::Result<SolveOutput> {
        let mut z = z_start;
        let last = grid.steps();
        for (k, (t, s)) in grid.intervals().enumerate() {
            let (mean, std) = em_step(rp, &z, t, s, self.eta)?;
            z = noise_unless_last(mean, std, k + 1 == last, rng)?;
        }
        Ok(SolveOutput {
            z,
            nfe: grid.steps(),
        })
    }
}

/// Heun's method (explicit trapezoid) on the probability-flow ODE: two evaluations per step.
#[derive(Debug, Clone, Default)]
pub struct Heun;

impl Solver for Heun {
    fn sample(
        &self,
        rp: &dyn ReverseProcess,
        z_start: Tensor,
        grid: &TimeGrid,
        _rng: &mut Rng,
    ) -> ndm_api::Result<SolveOutput> {
        let ode = |z: &Tensor, t: f64| rp.probability_flow(z, t);
        let mut z = z_start;
        for (t, s) in grid.intervals() {
            let dt = s - t;
            let d1 = ode(&z, t)?;
            let z_euler = (&z + (&d1 * dt)?)?;
            let d2 = ode(&z_euler, s)?;
            z = (z + ((d1 + d2)? * (dt / 2.0))?)?;
        }
        Ok(SolveOutput {
            z,
            nfe: 2 * grid.steps(),
        })
    }
}

ndm_api::register_plugin!(
    Solver,
    "euler-maruyama",
    "Euler-Maruyama on NDM's reverse SDE (eta = 1; eta = 0 is the probability-flow ODE); eta > 0 needs alpha > 0 at the prior (not flow matching)",
    EulerMaruyamaConfig,
    |c: EulerMaruyamaConfig, _ctx: &BuildCtx| {
        if !(0.0..=1.0).contains(&c.eta) {
            return Err(NdmError::invalid_param(format!(
                "eta must be in [0, 1], got {}",
                c.eta
            )));
        }
        Ok(Box::new(EulerMaruyama { eta: c.eta }))
    }
);
ndm_api::register_plugin!(
    Solver,
    "heun",
    "Heun's second-order method on the probability-flow ODE (2 NFE per step); runs every process",
    NoParams,
    |_c: NoParams, _ctx: &BuildCtx| Ok(Box::new(Heun))
);
