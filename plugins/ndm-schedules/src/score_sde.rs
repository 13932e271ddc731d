//! The other two processes of score SDEs (Song et al. 2021): variance exploding (`schedule.ve`) and
//! sub-variance preserving (`schedule.sub-vp`).

use ndm_api::registry::BuildCtx;
use ndm_api::{NdmError, NoiseSchedule, SchedulePoint};
use serde::{Deserialize, Serialize};

/// `schedule.ve` config. Defaults: score_sde's CIFAR-10 values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VeConfig {
    /// `sigma` at `t = 0`.
    pub sigma_min: f64,
    /// `sigma` at `t = 1`: about the largest distance between two data points (Song & Ermon 2020);
    /// the prior must be `N(0, sigma_max^2 I)` (`prior.gaussian` with `scale = sigma_max`).
    pub sigma_max: f64,
}

impl Default for VeConfig {
    fn default() -> Self {
        VeConfig {
            sigma_min: 0.01,
            sigma_max: 50.0,
        }
    }
}

/// Variance exploding: `alpha = 1`, `sigma_t = sigma_min (sigma_max / sigma_min)^t`.
#[derive(Debug, Clone)]
pub struct Ve {
    ln_min: f64,
    ln_ratio: f64,
}

impl Ve {
    pub fn new(cfg: VeConfig) -> ndm_api::Result<Self> {
        if !(cfg.sigma_min > 0.0 && cfg.sigma_max > cfg.sigma_min && cfg.sigma_max.is_finite()) {
            return Err(NdmError::invalid_param(format!(
                "need 0 < sigma_min < sigma_max, got sigma_min = {}, sigma_max = {}",
                cfg.sigma_min, cfg.sigma_max
            )));
        }
        Ok(Ve {
            ln_min: cfg.sigma_min.ln(),
            ln_ratio: (cfg.sigma_max / cfg.sigma_min).ln(),
        })
    }
}

impl NoiseSchedule for Ve {
    fn point(&self, t: f64) -> SchedulePoint {
        let ln_sigma = self.ln_min + t * self.ln_ratio;
        let s2 = (2.0 * ln_sigma).exp();
        SchedulePoint {
            alpha: 1.0,
            sigma: ln_sigma.exp(),
            log_snr: -2.0 * ln_sigma,
            dlog_alpha: 0.0,
            dalpha: 0.0,
            dsigma2: 2.0 * self.ln_ratio * s2,
        }
    }
}

/// `schedule.sub-vp` config: the VP process's `beta(t)`, linear from `beta_min` to `beta_max`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubVpConfig {
    pub beta_min: f64,
    pub beta_max: f64,
    /// The lowest time of the process: `sigma_0 = 0`, so it must be positive (score_sde samples
    /// down to 1e-3).
    pub t_min: f64,
}

impl Default for SubVpConfig {
    fn default() -> Self {
        SubVpConfig {
            beta_min: 0.1,
            beta_max: 20.0,
            t_min: 1e-3,
        }
    }
}

/// Sub-VP, exactly score_sde's: with `B(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2`,
/// `alpha_t = exp(-B/2)` (VP's) and `sigma_t = 1 - exp(-B)`, below VP's `sqrt(1 - exp(-B))`.
#[derive(Debug, Clone)]
pub struct SubVp {
    cfg: SubVpConfig,
}

impl SubVp {
    pub fn new(cfg: SubVpConfig) -> ndm_api::Result<Self> {
        if !(cfg.beta_min > 0.0 && cfg.beta_max >= cfg.beta_min && cfg.beta_max.is_finite()) {
            return Err(NdmError::invalid_param(format!(
                "need 0 < beta_min <= beta_max, got beta_min = {}, beta_max = {}",
                cfg.beta_min, cfg.beta_max
            )));
        }
        if !(cfg.t_min > 0.0 && cfg.t_min < 0.5) {
            return Err(NdmError::invalid_param(format!(
                "t_min must be in (0, 0.5): sub-VP has no noise at t = 0; got {}",
                cfg.t_min
            )));
        }
        Ok(SubVp { cfg })
    }

    /// `B(t)` and `beta(t) = B'(t)`.
    fn integral(&self, t: f64) -> (f64, f64) {
        let (b0, b1) = (self.cfg.beta_min, self.cfg.beta_max);
        (b0 * t + 0.5 * (b1 - b0) * t * t, b0 + (b1 - b0) * t)
    }
}

impl NoiseSchedule for SubVp {
    fn point(&self, t: f64) -> SchedulePoint {
        let (big_b, beta) = self.integral(t);
        let abar = (-big_b).exp();
        let alpha = (-0.5 * big_b).exp();
        // 1 - exp(-B) through expm1, exact near t = 0.
        let sigma = -(-big_b).exp_m1();
        SchedulePoint {
            alpha,
            sigma,
            log_snr: -big_b - 2.0 * sigma.ln(),
            dlog_alpha: -0.5 * beta,
            dalpha: -0.5 * beta * alpha,
            // d sigma / dt = beta exp(-B).
            dsigma2: 2.0 * sigma * beta * abar,
        }
    }

    fn t_min(&self) -> f64 {
        self.cfg.t_min
    }
}

ndm_api::register_plugin!(
    Schedule,
    "ve",
    "score-SDE variance exploding: alpha = 1, sigma = sigma_min (sigma_max/sigma_min)^t (0.01..50); prior N(0, sigma_max^2)",
    VeConfig,
    |cfg: VeConfig, _ctx: &BuildCtx| Ok(Box::new(Ve::new(cfg)?))
);

ndm_api::register_plugin!(
    Schedule,
    "sub-vp",
    "score-SDE sub-VP: VP's alpha (beta 0.1..20), sigma = 1 - alpha^2, on [1e-3, 1]",
    SubVpConfig,
    |cfg: SubVpConfig, _ctx: &BuildCtx| Ok(Box::new(SubVp::new(cfg)?))
);
