//! `schedule.fm-ot`: the conditional optimal-transport path of flow matching (Lipman et al. 2023),
//! in this code base's time direction (data at `t = 0`).

use ndm_api::registry::BuildCtx;
use ndm_api::{NdmError, NoiseSchedule, SchedulePoint};
use serde::{Deserialize, Serialize};

/// `schedule.fm-ot` config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FmOtConfig {
    /// The noise left at the data end, `sigma_0`; 0 is rectified flow (Liu et al. 2023).
    pub sigma_min: f64,
    /// The lowest time of the process. With `sigma_min = 0` the path is noise-free at `t = 0`, where
    /// no density and no ODE drift exist, so it must be positive (rectified-flow codes stop at 1e-3).
    pub t_min: f64,
}

impl Default for FmOtConfig {
    fn default() -> Self {
        FmOtConfig {
            sigma_min: 1e-4,
            t_min: 0.0,
        }
    }
}

/// `alpha_t = 1 - t`, `sigma_t = sigma_min + (1 - sigma_min) t`: `alpha_1 = 0` and `sigma_1 = 1`,
/// so the prior at `t = 1` is exactly `N(0, I)` and `lambda_1 = -inf`.
#[derive(Debug, Clone)]
pub struct FmOt {
    cfg: FmOtConfig,
}

impl FmOt {
    pub fn new(cfg: FmOtConfig) -> ndm_api::Result<Self> {
        if !(0.0..1.0).contains(&cfg.sigma_min) {
            return Err(NdmError::invalid_param(format!(
                "sigma_min must be in [0, 1), got {}",
                cfg.sigma_min
            )));
        }
        if !(0.0..0.5).contains(&cfg.t_min) {
            return Err(NdmError::invalid_param(format!(
                "t_min must be in [0, 0.5), got {}",
                cfg.t_min
            )));
        }
        if cfg.sigma_min == 0.0 && cfg.t_min == 0.0 {
            return Err(NdmError::invalid_param(
                "sigma_min = 0 (rectified flow) leaves no noise at t = 0: set t_min > 0 (e.g. 1e-3)",
            ));
        }
        Ok(FmOt { cfg })
    }
}

impl NoiseSchedule for FmOt {
    fn point(&self, t: f64) -> SchedulePoint {
        let ds = 1.0 - self.cfg.sigma_min;
        let (alpha, sigma) = (1.0 - t, self.cfg.sigma_min + ds * t);
        SchedulePoint {
            alpha,
            sigma,
            // ln 0 = -inf at t = 1, as the schedule contract says.
            log_snr: 2.0 * (alpha.ln() - sigma.ln()),
            dlog_alpha: -1.0 / alpha,
            dalpha: -1.0,
            dsigma2: 2.0 * sigma * ds,
        }
    }

    fn t_min(&self) -> f64 {
        self.cfg.t_min
    }
}

ndm_api::register_plugin!(
    Schedule,
    "fm-ot",
    "flow matching's OT path: alpha = 1 - t, sigma = sigma_min + (1 - sigma_min) t (sigma_min 1e-4; 0 = rectified flow, with t_min > 0)",
    FmOtConfig,
    |cfg: FmOtConfig, _ctx: &BuildCtx| Ok(Box::new(FmOt::new(cfg)?))
);
