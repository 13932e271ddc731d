//! Parameterizations: the network's raw output -> the prediction `xhat` (`docs/math.md`,
//! "Parameterizations").

use candle_core::{Result, Tensor};

/// Per-example schedule coefficients broadcast to the latent shape (`[B, 1, ..]`), the form in which
/// parameterizations and the pipeline combine them with latents.
#[derive(Debug, Clone)]
pub struct Coeffs {
    pub alpha: Tensor,
    pub sigma: Tensor,
    /// `d alpha / dt`.
    pub dalpha: Tensor,
    /// `d sigma / dt`.
    pub dsigma: Tensor,
}

impl Coeffs {
    /// The forward process `z_t = alpha_t F(x, t) + sigma_t eps`, given `F(x, t)` and `eps`.
    pub fn noised(&self, fx: &Tensor, eps: &Tensor) -> Result<Tensor> {
        fx.broadcast_mul(&self.alpha)? + eps.broadcast_mul(&self.sigma)?
    }
}

/// How the network's raw output relates to the data.
///
/// `z_t = alpha_t F(x, t) + sigma_t eps`. With a non-identity `F` the formulas give a prediction of
/// `F(x, t)`, which NDM uses as `xhat` (`docs/math.md`); the learned transform is then applied to `xhat`.
/// All three methods are elementwise and must satisfy the round trips
/// `predict_x(raw_from_x(x, z), z) = x` and `predict_x(target(x, eps), z) = x` for `z = alpha x + sigma eps`.
pub trait Parameterization: Send + Sync + std::fmt::Debug {
    /// `xhat` from the raw network output.
    fn predict_x(&self, raw: &Tensor, z: &Tensor, c: &Coeffs) -> Result<Tensor>;
    /// The raw output that yields `x` (the inverse of `predict_x`).
    fn raw_from_x(&self, x: &Tensor, z: &Tensor, c: &Coeffs) -> Result<Tensor>;
    /// The regression target of the simple losses, for `z = alpha x + sigma eps`.
    fn target(&self, x: &Tensor, eps: &Tensor, c: &Coeffs) -> Result<Tensor>;
    /// Whether `predict_x` stays finite where `alpha = 0` (flow matching's `t = 1`): false for
    /// noise prediction, which divides by `alpha`. A pipeline whose schedule reaches `alpha = 0`
    /// refuses a parameterization that says false.
    fn finite_at_zero_alpha(&self) -> bool {
        false
    }
}
