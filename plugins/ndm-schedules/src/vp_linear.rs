//! DDPM's variance-preserving schedule with linear betas.

use ndm_api::registry::BuildCtx;
use ndm_api::{NdmError, NoiseSchedule, SchedulePoint};
use serde::{Deserialize, Serialize};

/// Discrete betas (DDPM's product) or their continuous-time interpolant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VpForm {
    #[default]
    Discrete,
    Continuous,
}

/// `schedule.vp-linear` config. Defaults: DDPM (Ho et al. 2020), beta 1e-4 .. 0.02 over T = 1000.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VpLinearConfig {
    /// First beta.
    pub beta_start: f64,
    /// Last beta.
    pub beta_end: f64,
    /// Number of betas the linear ramp spans (DDPM's T).
    pub steps: usize,
    /// `discrete`: `alpha_{i/T}^2 = prod_{j=0..=i} (1 - beta_j)` exactly on the grid (log-linear in
    /// between); `continuous`: the smooth interpolant `log alpha_t^2 = -(beta_0 (1 + tT) +
    /// (beta_T - beta_0) t (tT + 1) / 2)`, the score-SDE VP with beta(t) = T beta_t.
    pub form: VpForm,
}

impl Default for VpLinearConfig {
    fn default() -> Self {
        VpLinearConfig {
            beta_start: 1e-4,
            beta_end: 0.02,
            steps: 1000,
            form: VpForm::Discrete,
        }
    }
}

/// The VP linear schedule. Index `i` of the ramp sits at `t = i / steps`, so `t = 0` already carries
/// DDPM's first noise level (`sigma_0^2 = beta_0`), which keeps the first KL and `L_rec` finite.
#[derive(Debug, Clone)]
pub struct VpLinear {
    cfg: VpLinearConfig,
    /// `log alpha^2` at `t_i = i / steps`, i = 0..=steps (discrete form).
    log_abar: Vec<f64>,
}

impl VpLinear {
    pub fn new(cfg: VpLinearConfig) -> ndm_api::Result<Self> {
        let ok = cfg.beta_start > 0.0
            && cfg.beta_end >= cfg.beta_start
            && cfg.beta_end < 1.0
            && cfg.steps > 0;
        if !ok {
            return Err(NdmError::invalid_param(
                "need 0 < beta_start <= beta_end < 1 and steps >= 1",
            ));
        }
        let n = cfg.steps;
        let mut acc = 0.0;
        let log_abar = (0..=n)
            .map(|j| {
                let beta = cfg.beta_start + (cfg.beta_end - cfg.beta_start) * j as f64 / n as f64;
                acc += (-beta).ln_1p();
                acc
            })
            .collect();
        Ok(VpLinear { cfg, log_abar })
    }

    /// `log alpha_t^2` and its time derivative.
    fn log_abar(&self, t: f64) -> (f64, f64) {
        let (b0, b1, n) = (
            self.cfg.beta_start,
            self.cfg.beta_end,
            self.cfg.steps as f64,
        );
        match self.cfg.form {
            VpForm::Continuous => {
                let v = -(b0 * (1.0 + t * n) + (b1 - b0) * t * (t * n + 1.0) / 2.0);
                let d = -(b0 * n + (b1 - b0) * (2.0 * t * n + 1.0) / 2.0);
                (v, d)
            }
            VpForm::Discrete => {
                let x = (t.clamp(0.0, 1.0) * n).max(0.0);
                // Segment [i, i+1] containing x; grid points belong to the segment on their left.
                let i = (x.ceil() as usize).clamp(1, self.cfg.steps) - 1;
                let (a, b) = (self.log_abar[i], self.log_abar[i + 1]);
                let slope = (b - a) * n;
                (a + (b - a) * (x - i as f64), slope)
            }
        }
    }
}

impl NoiseSchedule for VpLinear {
    fn point(&self, t: f64) -> SchedulePoint {
        let (la, dla) = self.log_abar(t);
        let abar = la.exp();
        let sig2 = -la.exp_m1();
        SchedulePoint {
            alpha: abar.sqrt(),
            sigma: sig2.sqrt(),
            log_snr: la - sig2.ln(),
            dlog_alpha: 0.5 * dla,
            dalpha: 0.5 * dla * abar.sqrt(),
            dsigma2: -abar * dla,
        }
    }
}

ndm_api::register_plugin!(
    Schedule,
    "vp-linear",
    "DDPM's VP schedule, linear betas (1e-4..0.02 over T=1000), discrete or continuous form",
    VpLinearConfig,
    |cfg: VpLinearConfig, _ctx: &BuildCtx| Ok(Box::new(VpLinear::new(cfg)?))
);
