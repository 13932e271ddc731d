//! The one seam between models and solvers.

use crate::schedule::SchedulePoint;
use candle_core::{DType, Device, Result, Tensor};

/// A Gaussian `N(mean, std^2 I)` with one standard deviation for the whole batch (all examples of a
/// solver step share their times).
#[derive(Debug, Clone)]
pub struct Gaussian {
    pub mean: Tensor,
    pub std: f64,
}

/// The reverse process of a composed model, as solvers see it. Implemented by
/// [`crate::pipeline::Pipeline`]; a solver never sees the transform, schedule or prior behind it.
///
/// Times are scalars: one solver step moves the whole batch from `t` to `s < t`. The process runs
/// on `[t_min, t_end]`, where `t_end` is the prior's time (1 for the Gaussian prior; `t_m` for
/// DiNof's flow prior, planned) and latents have [`ReverseProcess::latent_shape`] (the data shape
/// today; a VAE transform's latent shape once it exists, planned). Every tensor it returns is
/// detached from the autograd graph: solvers never train, and a tracked result would chain each
/// step's graph to the next (memory grows with the number of steps).
pub trait ReverseProcess: Send + Sync + std::fmt::Debug {
    /// Shape of one latent, without the batch dimension.
    fn latent_shape(&self) -> &[usize];
    /// The device and dtype of latents.
    fn device(&self) -> &Device;
    fn dtype(&self) -> DType;
    /// The lowest time of the process (the reconstruction side).
    fn t_min(&self) -> f64 {
        0.0
    }
    /// The time where the prior sits.
    fn t_end(&self) -> f64;
    /// The training grid size `T` of a discrete-time model, `None` in continuous time.
    fn training_steps(&self) -> Option<usize>;
    /// The schedule at `t`, for solvers whose coefficients need it (DPM-Solver, VP predictors).
    fn schedule_point(&self, t: f64) -> SchedulePoint;
    /// The model's data prediction `xhat(z_t, t)`; one network evaluation. The result is detached
    /// from the autograd graph (solvers never train).
    fn predict_x(&self, z: &Tensor, t: f64) -> Result<Tensor>;
    /// NDM's posterior `q(z_s | z_t, xhat)` (`docs/math.md`, "Forward process and posterior") for a given `eta` in `[0, 1]`:
    /// `eta = 1` is DDPM's ancestral step, `eta = 0` DDIM's deterministic one.
    fn posterior(&self, z_t: &Tensor, xhat: &Tensor, t: f64, s: f64, eta: f64) -> Result<Gaussian>;
    /// The model's score `s(xhat, z, t) = (alpha_t F(xhat, t) - z) / sigma_t^2`.
    fn score(&self, z: &Tensor, xhat: &Tensor, t: f64) -> Result<Tensor>;
    /// The reverse-time SDE (`docs/math.md`, "Reverse SDE and probability-flow ODE") at `(z, t)` given the prediction `xhat`:
    /// `dz = [alpha Fdot(xhat, t) + r z - c/2 s(xhat, z, t)] dt + g dw_bar`, integrated from `t_end`
    /// down to `t_min`, with `g^2 = eta^2 (-dlambda/dt) sigma^2`; `eta = 0` is the probability-flow
    /// ODE. Returns the drift and `g`.
    fn reverse_sde(&self, z: &Tensor, xhat: &Tensor, t: f64, eta: f64) -> Result<(Tensor, f64)>;
    /// Network evaluations per [`ReverseProcess::predict_x`] and example: 1, or 2 for a guided
    /// process that also evaluates the unconditional model. Samplers multiply their count by it.
    fn network_passes(&self) -> usize {
        1
    }
    /// The probability-flow ODE's drift at `(z, t)` (the reverse SDE with `eta = 0` at the model's
    /// own prediction): one network evaluation, detached.
    fn probability_flow(&self, z: &Tensor, t: f64) -> Result<Tensor> {
        let xhat = self.predict_x(z, t)?;
        Ok(self.reverse_sde(z, &xhat, t, 0.0)?.0)
    }
}

/// A reverse process that passes every prediction `xhat` of another through `map` and delegates
/// everything else. Everything built from `xhat` (posterior mean, score, SDE drift, probability
/// flow) follows from the mapped prediction, so every solver works with it unchanged. Clipping to
/// the data range ([`MapPrediction::clipped`]) is one use; counting network evaluations is another.
pub struct MapPrediction<'a, F> {
    pub inner: &'a dyn ReverseProcess,
    pub map: F,
}

impl<'a> MapPrediction<'a, Box<dyn Fn(Tensor) -> Result<Tensor> + Send + Sync>> {
    /// Predictions clamped to `[lo, hi]` (the data's range: what diffusers calls `clip_sample`).
    pub fn clipped(inner: &'a dyn ReverseProcess, lo: f64, hi: f64) -> Self {
        MapPrediction {
            inner,
            map: Box::new(move |x: Tensor| x.clamp(lo, hi)),
        }
    }
}

impl<F> std::fmt::Debug for MapPrediction<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapPrediction")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<F> ReverseProcess for MapPrediction<'_, F>
where
    F: Fn(Tensor) -> Result<Tensor> + Send + Sync,
{
    fn latent_shape(&self) -> &[usize] {
        self.inner.latent_shape()
    }
    fn device(&self) -> &Device {
        self.inner.device()
    }
    fn dtype(&self) -> DType {
        self.inner.dtype()
    }
    fn t_min(&self) -> f64 {
        self.inner.t_min()
    }
    fn t_end(&self) -> f64 {
        self.inner.t_end()
    }
    fn training_steps(&self) -> Option<usize> {
        self.inner.training_steps()
    }
    fn schedule_point(&self, t: f64) -> SchedulePoint {
        self.inner.schedule_point(t)
    }
    fn network_passes(&self) -> usize {
        self.inner.network_passes()
    }
    fn predict_x(&self, z: &Tensor, t: f64) -> Result<Tensor> {
        (self.map)(self.inner.predict_x(z, t)?)
    }
    fn posterior(&self, z_t: &Tensor, xhat: &Tensor, t: f64, s: f64, eta: f64) -> Result<Gaussian> {
        self.inner.posterior(z_t, xhat, t, s, eta)
    }
    fn score(&self, z: &Tensor, xhat: &Tensor, t: f64) -> Result<Tensor> {
        self.inner.score(z, xhat, t)
    }
    fn reverse_sde(&self, z: &Tensor, xhat: &Tensor, t: f64, eta: f64) -> Result<(Tensor, f64)> {
        self.inner.reverse_sde(z, xhat, t, eta)
    }
}
