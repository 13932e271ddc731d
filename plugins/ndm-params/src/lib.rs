//! Parameterizations (`docs/math.md`, "Parameterizations"): `param.eps`, `param.x0`, `param.v`,
//! `param.velocity`.

use ndm_api::candle_core::{Result, Tensor};
use ndm_api::registry::BuildCtx;
use ndm_api::registry::NoParams;
use ndm_api::{Coeffs, Parameterization};

/// Noise prediction: `xhat = (z - sigma epshat) / alpha`.
#[derive(Debug, Clone, Default)]
pub struct Eps;

impl Parameterization for Eps {
    fn predict_x(&self, raw: &Tensor, z: &Tensor, c: &Coeffs) -> Result<Tensor> {
        (z - raw.broadcast_mul(&c.sigma)?)?.broadcast_div(&c.alpha)
    }
    fn raw_from_x(&self, x: &Tensor, z: &Tensor, c: &Coeffs) -> Result<Tensor> {
        (z - x.broadcast_mul(&c.alpha)?)?.broadcast_div(&c.sigma)
    }
    fn target(&self, _x: &Tensor, eps: &Tensor, _c: &Coeffs) -> Result<Tensor> {
        Ok(eps.clone())
    }
}

/// Data prediction: `xhat = raw`.
#[derive(Debug, Clone, Default)]
pub struct X0;

impl Parameterization for X0 {
    fn predict_x(&self, raw: &Tensor, _z: &Tensor, _c: &Coeffs) -> Result<Tensor> {
        Ok(raw.clone())
    }
    fn raw_from_x(&self, x: &Tensor, _z: &Tensor, _c: &Coeffs) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn target(&self, x: &Tensor, _eps: &Tensor, _c: &Coeffs) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn finite_at_zero_alpha(&self) -> bool {
        true
    }
}

/// v-prediction (Salimans & Ho 2022): `v = alpha eps - sigma x`,
/// `xhat = (alpha z - sigma vhat) / (alpha^2 + sigma^2)` (exact for non-VP schedules too).
#[derive(Debug, Clone, Default)]
pub struct V;

impl Parameterization for V {
    fn predict_x(&self, raw: &Tensor, z: &Tensor, c: &Coeffs) -> Result<Tensor> {
        let norm = (c.alpha.sqr()? + c.sigma.sqr()?)?;
        (z.broadcast_mul(&c.alpha)? - raw.broadcast_mul(&c.sigma)?)?.broadcast_div(&norm)
    }
    fn raw_from_x(&self, x: &Tensor, z: &Tensor, c: &Coeffs) -> Result<Tensor> {
        let eps = Eps.raw_from_x(x, z, c)?;
        self.target(x, &eps, c)
    }
    fn target(&self, x: &Tensor, eps: &Tensor, c: &Coeffs) -> Result<Tensor> {
        eps.broadcast_mul(&c.alpha)? - x.broadcast_mul(&c.sigma)?
    }
    fn finite_at_zero_alpha(&self) -> bool {
        true
    }
}

/// Velocity prediction (flow matching): the network predicts `u = dz/dt = alpha' x + sigma' eps`,
/// the time derivative of the forward path at fixed `x` and `eps` (not v-prediction's
/// `alpha eps - sigma x`). `xhat = (sigma' z - sigma uhat) / (sigma' alpha - sigma alpha')`; the
/// denominator is 1 on the OT path and positive wherever the log-SNR decreases, `alpha = 0` included.
/// With it the probability-flow drift `alpha' xhat + sigma' epshat` is `uhat` itself.
#[derive(Debug, Clone, Default)]
pub struct Velocity;

impl Velocity {
    /// `sigma' alpha - sigma alpha'` (`= -alpha sigma lambda' / 2 > 0`).
    fn denominator(c: &Coeffs) -> Result<Tensor> {
        c.dsigma.mul(&c.alpha)? - c.sigma.mul(&c.dalpha)?
    }
}

impl Parameterization for Velocity {
    fn predict_x(&self, raw: &Tensor, z: &Tensor, c: &Coeffs) -> Result<Tensor> {
        (z.broadcast_mul(&c.dsigma)? - raw.broadcast_mul(&c.sigma)?)?
            .broadcast_div(&Self::denominator(c)?)
    }
    fn raw_from_x(&self, x: &Tensor, z: &Tensor, c: &Coeffs) -> Result<Tensor> {
        let eps = Eps.raw_from_x(x, z, c)?;
        self.target(x, &eps, c)
    }
    fn target(&self, x: &Tensor, eps: &Tensor, c: &Coeffs) -> Result<Tensor> {
        x.broadcast_mul(&c.dalpha)? + eps.broadcast_mul(&c.dsigma)?
    }
    fn finite_at_zero_alpha(&self) -> bool {
        true
    }
}

ndm_api::register_plugin!(
    Param,
    "eps",
    "noise prediction: xhat = (z - sigma eps) / alpha",
    NoParams,
    |_c: NoParams, _ctx: &BuildCtx| Ok(Box::new(Eps))
);
ndm_api::register_plugin!(
    Param,
    "x0",
    "data prediction: xhat = network output",
    NoParams,
    |_c: NoParams, _ctx: &BuildCtx| Ok(Box::new(X0))
);
ndm_api::register_plugin!(
    Param,
    "v",
    "v-prediction: v = alpha eps - sigma x",
    NoParams,
    |_c: NoParams, _ctx: &BuildCtx| Ok(Box::new(V))
);
ndm_api::register_plugin!(
    Param,
    "velocity",
    "velocity prediction (flow matching): u = dz/dt = alpha' x + sigma' eps",
    NoParams,
    |_c: NoParams, _ctx: &BuildCtx| Ok(Box::new(Velocity))
);
