//! `schedule.vdm`: VDM's learned monotone `gamma(t)` (Kingma et al. 2021), `sigma^2 = sigmoid(gamma)`,
//! `alpha^2 = sigmoid(-gamma)`, `lambda = -gamma`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ndm_api::candle_core::{DType, Result, Tensor};
use ndm_api::candle_nn::{ops::sigmoid, Init, VarBuilder};
use ndm_api::registry::BuildCtx;
use ndm_api::{NdmError, NoiseSchedule, ScheduleBatch, SchedulePoint};
use serde::{Deserialize, Serialize};

/// `schedule.vdm` config. Defaults: VDM's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VdmConfig {
    /// Initial `gamma(0)` (learned): log-SNR `-gamma_0 = 13.3` at the data end.
    pub gamma_min: f64,
    /// Initial `gamma(1)` (learned).
    pub gamma_max: f64,
    /// Width of the monotone network's hidden layer.
    pub hidden: usize,
}

impl Default for VdmConfig {
    fn default() -> Self {
        VdmConfig {
            gamma_min: -13.3,
            gamma_max: 5.0,
            hidden: 1024,
        }
    }
}

/// `gamma(t) = gamma_0 + (gamma_1 - gamma_0) (gt(t) - gt(0)) / (gt(1) - gt(0))` with
/// `gt(t) = |w1| t + |w3| . phi(|w2| t + b2)`, `phi(h) = 2 (sigmoid(h) - 1/2)`: non-negative weights
/// and an increasing activation make `gt`, hence `gamma`, increasing, and `gamma'` has a closed
/// form through the same weights (no finite difference). The end points `gamma_0`, `gamma_1` are
/// learned scalars; the interior weights are the variance-trained ones
/// ([`NoiseSchedule::variance_trained_vars`]).
#[derive(Debug, Clone)]
pub struct Vdm {
    w1: Tensor,
    w2: Tensor,
    b2: Tensor,
    w3: Tensor,
    gamma0: Tensor,
    gamma1: Tensor,
    interior: Vec<String>,
    /// Points evaluated ahead for a solve ([`NoiseSchedule::prefetch_points`]), by `t`'s bits.
    prefetched: Arc<Mutex<HashMap<u64, SchedulePoint>>>,
}

/// `gt(t)` and `gt'(t)` for `t` of shape `[B, 1]`, as `[B, 1]` tensors.
fn gt(s: &Vdm, t: &Tensor) -> Result<(Tensor, Tensor)> {
    let (a1, a2, a3) = (s.w1.abs()?, s.w2.abs()?, s.w3.abs()?);
    // [B, 1] x [1, H] + [H] -> [B, H]
    let h = t.matmul(&a2.t()?)?.broadcast_add(&s.b2)?;
    let sg = sigmoid(&h)?;
    let phi = ((&sg - 0.5)? * 2.0)?;
    let value = (t.broadcast_mul(&a1)? + phi.matmul(&a3.t()?)?)?;
    // phi'(h) = 2 sig (1 - sig); dh/dt = |w2|.
    let dphi = ((&sg * (1.0 - &sg)?)? * 2.0)?.broadcast_mul(&a2.t()?)?;
    let slope = dphi.matmul(&a3.t()?)?.broadcast_add(&a1)?;
    Ok((value, slope))
}

impl Vdm {
    pub fn new(cfg: VdmConfig, vb: VarBuilder) -> ndm_api::Result<Self> {
        if !(cfg.gamma_min < cfg.gamma_max
            && cfg.gamma_min.is_finite()
            && cfg.gamma_max.is_finite())
        {
            return Err(NdmError::invalid_param(format!(
                "need gamma_min < gamma_max, got {} and {}",
                cfg.gamma_min, cfg.gamma_max
            )));
        }
        if cfg.hidden == 0 {
            return Err(NdmError::invalid_param("hidden must be at least 1"));
        }
        let h = cfg.hidden;
        let net = vb.pp("net");
        let normal = |std: f64| Init::Randn {
            mean: 0.0,
            stdev: std,
        };
        let w1 = net.get_with_hints((1, 1), "l1.weight", Init::Const(1.0))?;
        let w2 = net.get_with_hints((h, 1), "l2.weight", normal(1.0))?;
        let b2 = net.get_with_hints(h, "l2.bias", normal(1.0))?;
        let w3 = net.get_with_hints((1, h), "l3.weight", normal(1.0 / (h as f64).sqrt()))?;
        let gamma0 = vb.get_with_hints(1, "gamma0", Init::Const(cfg.gamma_min))?;
        let gamma1 = vb.get_with_hints(1, "gamma1", Init::Const(cfg.gamma_max))?;
        let interior = ["l1.weight", "l2.weight", "l2.bias", "l3.weight"]
            .iter()
            .map(|n| format!("{}.{n}", net.prefix()))
            .collect();
        Ok(Vdm {
            w1,
            w2,
            b2,
            w3,
            gamma0,
            gamma1,
            interior,
            prefetched: Arc::default(),
        })
    }

    /// `gamma(t)` and `gamma'(t)` for `t` of shape `[B]`, as `[B]` tensors with gradients into
    /// every weight.
    pub fn gamma(&self, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let b = t.dim(0)?;
        let tc = t.reshape((b, 1))?.to_dtype(self.w1.dtype())?;
        let ends = Tensor::new(&[[0f64], [1f64]], t.device())?.to_dtype(self.w1.dtype())?;
        let (g, dg) = gt(self, &tc)?;
        let (ge, _) = gt(self, &ends)?;
        let (g_at0, g_at1) = (ge.narrow(0, 0, 1)?, ge.narrow(0, 1, 1)?);
        let span = (&self.gamma1 - &self.gamma0)?.reshape((1, 1))?;
        let scale = span.broadcast_div(&(&g_at1 - &g_at0)?)?;
        let gamma = g
            .broadcast_sub(&g_at0)?
            .broadcast_mul(&scale)?
            .broadcast_add(&self.gamma0.reshape((1, 1))?)?;
        let dgamma = dg.broadcast_mul(&scale)?;
        Ok((
            gamma.reshape(b)?.to_dtype(t.dtype())?,
            dgamma.reshape(b)?.to_dtype(t.dtype())?,
        ))
    }
}

impl Vdm {
    /// `(gamma, gamma')` at host times, with the weights in f64 so that host formulas keep their
    /// precision: one evaluation and one read for all of them.
    fn host_gamma(&self, ts: &[f64]) -> Result<Vec<(f64, f64)>> {
        let f = |w: &Tensor| w.to_dtype(DType::F64);
        let wide = Vdm {
            w1: f(&self.w1)?,
            w2: f(&self.w2)?,
            b2: f(&self.b2)?,
            w3: f(&self.w3)?,
            gamma0: f(&self.gamma0)?,
            gamma1: f(&self.gamma1)?,
            interior: Vec::new(),
            prefetched: Arc::default(),
        };
        let (g, d) = wide.gamma(&Tensor::new(ts, self.w1.device())?)?;
        let both = Tensor::stack(&[g, d], 0)?.to_vec2::<f64>()?;
        Ok(both[0]
            .iter()
            .copied()
            .zip(both[1].iter().copied())
            .collect())
    }
}

impl NoiseSchedule for Vdm {
    fn point(&self, t: f64) -> SchedulePoint {
        if let Some(p) = self
            .prefetched
            .lock()
            .ok()
            .and_then(|m| m.get(&t.to_bits()).copied())
        {
            return p;
        }
        // Evaluating tensors this schedule made itself fails only through a bug; NaN then makes
        // every caller's finiteness check say so.
        let (g, dg) = self
            .host_gamma(&[t])
            .ok()
            .and_then(|v| v.first().copied())
            .unwrap_or((f64::NAN, f64::NAN));
        point_from_gamma(g, dg)
    }

    fn prefetch_points(&self, ts: &[f64]) {
        // On failure nothing is kept and `point` evaluates each time as before.
        if let (Ok(gd), Ok(mut m)) = (self.host_gamma(ts), self.prefetched.lock()) {
            m.clear();
            for (&t, &(g, dg)) in ts.iter().zip(&gd) {
                m.insert(t.to_bits(), point_from_gamma(g, dg));
            }
        }
    }

    fn forget_points(&self) {
        if let Ok(mut m) = self.prefetched.lock() {
            m.clear();
        }
    }

    fn batch(&self, t: &Tensor) -> Result<ScheduleBatch> {
        let (g, dg) = self.gamma(t)?;
        let s2 = sigmoid(&g)?; // sigma^2
        let a2 = (1.0 - &s2)?; // alpha^2 = sigmoid(-gamma)
        let alpha = a2.sqrt()?;
        let dlog_alpha = ((&s2 * &dg)? * -0.5)?;
        Ok(ScheduleBatch {
            dalpha: (&alpha * &dlog_alpha)?,
            alpha,
            sigma: s2.sqrt()?,
            log_snr: g.neg()?,
            dlog_alpha,
            dsigma2: ((&s2 * &a2)? * &dg)?,
        })
    }

    fn is_trainable(&self) -> bool {
        true
    }

    fn variance_trained_vars(&self) -> Vec<String> {
        self.interior.clone()
    }
}

/// The schedule point of `gamma` and `gamma'`, in f64: `sigma^2 = sigmoid(gamma)`,
/// `d log alpha / dt = -sigma^2 gamma' / 2`, `d sigma^2 / dt = sigma^2 alpha^2 gamma'`.
pub fn point_from_gamma(g: f64, dg: f64) -> SchedulePoint {
    let s2 = 1.0 / (1.0 + (-g).exp());
    let a2 = 1.0 / (1.0 + g.exp());
    let alpha = a2.sqrt();
    let dlog_alpha = -0.5 * s2 * dg;
    SchedulePoint {
        alpha,
        sigma: s2.sqrt(),
        log_snr: -g,
        dlog_alpha,
        dalpha: alpha * dlog_alpha,
        dsigma2: s2 * a2 * dg,
    }
}

ndm_api::register_plugin!(
    Schedule,
    "vdm",
    "VDM's learned monotone gamma(t): sigma^2 = sigmoid(gamma), end points learned (init -13.3, 5), interior trained for low variance",
    VdmConfig,
    |cfg: VdmConfig, ctx: &BuildCtx| Ok(Box::new(Vdm::new(cfg, ctx.vb.clone())?))
);

#[cfg(test)]
mod tests {
    use super::*;
    use ndm_api::candle_core::Device;
    use ndm_api::candle_nn::VarMap;

    /// Points evaluated ahead in one batch are the points evaluated one by one, and are kept
    /// only until they are forgotten.
    #[test]
    fn prefetched_points_are_the_points() {
        let vm = VarMap::new();
        let vb = ndm_api::vars::seeded_var_builder(&vm, 3, DType::F32, &Device::Cpu);
        let cfg = VdmConfig {
            hidden: 16,
            ..VdmConfig::default()
        };
        let s = Vdm::new(cfg, vb.pp("schedule")).unwrap();
        let ts: Vec<f64> = (0..=20).map(|i| i as f64 / 20.0).collect();
        let one_by_one: Vec<SchedulePoint> = ts.iter().map(|&t| s.point(t)).collect();
        s.prefetch_points(&ts);
        assert_eq!(s.prefetched.lock().unwrap().len(), ts.len());
        for (&t, p) in ts.iter().zip(&one_by_one) {
            let q = s.point(t);
            for (a, b) in p.fields().iter().zip(q.fields()) {
                assert!(
                    (a - b).abs() <= 1e-12 * (1.0 + a.abs()),
                    "t = {t}: {a} vs {b}"
                );
            }
        }
        s.forget_points();
        assert!(s.prefetched.lock().unwrap().is_empty());
    }
}
