//! The cosine schedule of Nichol & Dhariwal (2021), `alpha = cos(theta)`, `sigma = sin(theta)`.

use ndm_api::registry::BuildCtx;
use ndm_api::{NdmError, NoiseSchedule, SchedulePoint};
use serde::{Deserialize, Serialize};

/// `schedule.cosine` config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CosineConfig {
    /// Offset `s` (0.008 in the paper): `theta(0) = s / (1 + s) * pi / 2`, so `sigma_0 > 0`.
    pub s: f64,
    /// Log-SNR at `t = 1`; the paper clips betas at 0.999 instead, which has no continuous form.
    pub log_snr_min: f64,
}

impl Default for CosineConfig {
    fn default() -> Self {
        CosineConfig {
            s: 0.008,
            log_snr_min: -20.0,
        }
    }
}

/// `theta(t) = theta_0 + t (theta_1 - theta_0)`, linear in `t`, computed in f64 (unlike a form that
/// divides integers, the betas it implies are never zero).
#[derive(Debug, Clone)]
pub struct Cosine {
    theta0: f64,
    theta1: f64,
}

impl Cosine {
    pub fn new(cfg: CosineConfig) -> ndm_api::Result<Self> {
        let theta0 = cfg.s / (1.0 + cfg.s) * std::f64::consts::FRAC_PI_2;
        let theta1 = (-cfg.log_snr_min / 2.0).exp().atan();
        if !(cfg.s > 0.0 && theta1 > theta0) {
            return Err(NdmError::invalid_param(
                "need s > 0 and log_snr_min below the log-SNR at t = 0",
            ));
        }
        Ok(Cosine { theta0, theta1 })
    }
}

impl NoiseSchedule for Cosine {
    fn point(&self, t: f64) -> SchedulePoint {
        let dth = self.theta1 - self.theta0;
        let th = self.theta0 + t * dth;
        let (s, c) = th.sin_cos();
        SchedulePoint {
            alpha: c,
            sigma: s,
            log_snr: 2.0 * (c / s).ln(),
            dlog_alpha: -th.tan() * dth,
            dalpha: -s * dth,
            dsigma2: 2.0 * s * c * dth,
        }
    }
}

ndm_api::register_plugin!(
    Schedule,
    "cosine",
    "Nichol & Dhariwal's cosine schedule (s = 0.008), truncated at log-SNR -20",
    CosineConfig,
    |cfg: CosineConfig, _ctx: &BuildCtx| Ok(Box::new(Cosine::new(cfg)?))
);
