//! Predictor-corrector sampling (Song et al. 2021), (`docs/math.md`, "Solvers").

use crate::noise_unless_last;
use crate::sde::em_step;
use ndm_api::candle_core::Tensor;
use ndm_api::registry::BuildCtx;
use ndm_api::{NdmError, ReverseProcess, Rng, SolveOutput, Solver, TimeGrid};
use serde::{Deserialize, Serialize};

/// The predictor of a PC step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Predictor {
    /// The discretised reverse diffusion. score_sde's VP rule
    /// `z - ((sqrt(1 - beta) - 1) z - beta score) + sqrt(beta) noise` is the DDPM posterior step for
    /// the identity transform; here it is NDM's posterior `q(z_s | z_t, xhat)` with eta = 1, which
    /// is that rule for every transform and schedule.
    #[default]
    ReverseDiffusion,
    /// Euler-Maruyama on the reverse SDE.
    EulerMaruyama,
}

/// `solver.pc` config. Defaults: snr 0.16, one corrector step (DiNof, score_sde).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PcConfig {
    pub predictor: Predictor,
    /// Signal-to-noise ratio of the Langevin corrector.
    pub snr: f64,
    /// Langevin steps per time step (0: predictor only).
    pub corrector_steps: usize,
}

impl Default for PcConfig {
    fn default() -> Self {
        PcConfig {
            predictor: Predictor::ReverseDiffusion,
            snr: 0.16,
            corrector_steps: 1,
        }
    }
}

/// At each time: `corrector_steps` Langevin steps at `t`, then the predictor to the next time.
/// The last predictor step returns its mean. NFE = steps * (1 + corrector_steps).
#[derive(Debug, Clone)]
pub struct PcSolver {
    pub cfg: PcConfig,
}

/// Mean over the batch of per-example L2 norms, a scalar tensor on `t`'s device.
fn mean_norm(t: &Tensor) -> ndm_api::candle_core::Result<Tensor> {
    t.sqr()?.flatten_from(1)?.sum(1)?.sqrt()?.mean_all()
}

impl PcSolver {
    /// Langevin: `z + step * score + sqrt(2 step) noise`, `step = 2 a (snr |noise| / |score|)^2`
    /// with `a = alpha_t^2 / alpha_s^2 = 1 - beta_i` (1 for VE schedules).
    fn correct(
        &self,
        rp: &dyn ReverseProcess,
        z: Tensor,
        t: f64,
        s: f64,
        rng: &mut Rng,
    ) -> ndm_api::Result<Tensor> {
        let (pt, ps) = (rp.schedule_point(t), rp.schedule_point(s));
        let a = (pt.alpha / ps.alpha).powi(2);
        let mut z = z;
        for _ in 0..self.cfg.corrector_steps {
            let xhat = rp.predict_x(&z, t)?;
            let score = rp.score(&z, &xhat, t)?;
            let noise = rng.normal_tensor(z.dims(), z.dtype(), z.device())?;
            // The step size stays on the device (no read per step); a zero or non-finite score
            // norm leaves z as it is.
            let (gn, nn) = (mean_norm(&score)?, mean_norm(&noise)?);
            let ok = gn.gt(0.0)?.mul(&gn.lt(f64::INFINITY)?)?;
            let step = ((nn / &gn)?.sqr()? * (2.0 * a * self.cfg.snr * self.cfg.snr))?;
            let root = (&step * 2.0)?.sqrt()?;
            let moved = ((&z + score.broadcast_mul(&step)?)? + noise.broadcast_mul(&root)?)?;
            z = ok.broadcast_as(z.shape())?.where_cond(&moved, &z)?;
        }
        Ok(z)
    }
}

impl Solver for PcSolver {
    fn check(&self, rp: &dyn ReverseProcess) -> ndm_api::Result<()> {
        match self.cfg.predictor {
            Predictor::EulerMaruyama => {
                ndm_api::solver::refuse_sde_at_zero_alpha(rp, "pc (euler-maruyama predictor)", 1.0)
            }
            Predictor::ReverseDiffusion => Ok(()),
        }
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
            z = self.correct(rp, z, t, s, rng)?;
            let (mean, std) = match self.cfg.predictor {
                Predictor::ReverseDiffusion => {
                    let xhat = rp.predict_x(&z, t)?;
                    let post = rp.posterior(&z, &xhat, t, s, 1.0)?;
                    (post.mean, post.std)
                }
                Predictor::EulerMaruyama => em_step(rp, &z, t, s, 1.0)?,
            };
            z = noise_unless_last(mean, std, k + 1 == last, rng)?;
        }
        Ok(SolveOutput {
            z,
            nfe: grid.steps() * (1 + self.cfg.corrector_steps),
        })
    }
}

ndm_api::register_plugin!(
    Solver,
    "pc",
    "predictor-corrector: Langevin corrector (snr 0.16) + reverse-diffusion (every process) or Euler-Maruyama predictor (not flow matching)",
    PcConfig,
    |c: PcConfig, _ctx: &BuildCtx| {
        if !(c.snr > 0.0 && c.snr.is_finite()) {
            return Err(NdmError::invalid_param(format!("snr must be positive, got {}", c.snr)));
        }
        Ok(Box::new(PcSolver { cfg: c }))
    }
);
