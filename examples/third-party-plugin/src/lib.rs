//! `schedule.edm-vp`: the noise levels of Karras et al. (2022, "EDM"),
//! `sigma_ve(t) = (sigma_min^(1/rho) + t (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho`,
//! in variance-preserving form: `alpha = 1 / sqrt(1 + sigma_ve^2)`, `sigma = sigma_ve alpha`, so that
//! it composes with every ndm transform, parameterization, prior and solver.

use ndm_api::registry::BuildCtx;
use ndm_api::{NdmError, NoiseSchedule, PluginInfo, SchedulePoint};
use serde::{Deserialize, Serialize};

/// `schedule.edm-vp` config; defaults are EDM's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdmVpConfig {
    /// Noise level at t = 0.
    pub sigma_min: f64,
    /// Noise level at t = 1.
    pub sigma_max: f64,
    /// Karras' rho: larger values spend more of [0, 1] at low noise.
    pub rho: f64,
}

impl Default for EdmVpConfig {
    fn default() -> Self {
        EdmVpConfig {
            sigma_min: 0.002,
            sigma_max: 80.0,
            rho: 7.0,
        }
    }
}

/// The schedule.
#[derive(Debug, Clone)]
pub struct EdmVp {
    cfg: EdmVpConfig,
}

impl EdmVp {
    pub fn new(cfg: EdmVpConfig) -> ndm_api::Result<Self> {
        if !(cfg.sigma_min > 0.0 && cfg.sigma_max > cfg.sigma_min && cfg.rho > 0.0) {
            return Err(NdmError::invalid_param(
                "need 0 < sigma_min < sigma_max and rho > 0",
            ));
        }
        Ok(EdmVp { cfg })
    }

    /// `sigma_ve(t)` and its derivative.
    fn sigma_ve(&self, t: f64) -> (f64, f64) {
        let EdmVpConfig {
            sigma_min,
            sigma_max,
            rho,
        } = self.cfg;
        let (a, b) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
        let base = a + t * (b - a);
        (base.powf(rho), rho * base.powf(rho - 1.0) * (b - a))
    }
}

impl NoiseSchedule for EdmVp {
    fn point(&self, t: f64) -> SchedulePoint {
        let (s, ds) = self.sigma_ve(t);
        let one_plus = 1.0 + s * s;
        let alpha = one_plus.sqrt().recip();
        SchedulePoint {
            alpha,
            sigma: s * alpha,
            log_snr: -2.0 * s.ln(),
            dlog_alpha: -s * ds / one_plus,
            dalpha: -alpha * s * ds / one_plus,
            dsigma2: 2.0 * s * ds / (one_plus * one_plus),
        }
    }
}

/// The plugin, usable statically (`inventory`, below) and from the shared library (`export_plugins!`).
pub const EDM_VP: PluginInfo = ndm_api::plugin_info!(
    Schedule,
    "edm-vp",
    "Karras et al.'s EDM noise levels (sigma 0.002..80, rho 7) in variance-preserving form",
    EdmVpConfig,
    |cfg: EdmVpConfig, _ctx: &BuildCtx| Ok(Box::new(EdmVp::new(cfg)?))
);

// Dynamic loading: the cdylib's entry points, behind a feature because the symbols are unmangled
// and two plugin crates linked into one binary would clash.
#[cfg(feature = "dylib")]
ndm_api::export_plugins!("third-party-plugin", [EDM_VP]);
