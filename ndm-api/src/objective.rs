//! Training objectives over the composed pipeline.

use crate::pipeline::Pipeline;
use crate::rng::Rng;
use candle_core::{Result, Tensor};

/// One batch's loss: the scalar to minimise and named per-term batch means for logs.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// Scalar loss (mean over the batch) with gradients into every trainable part.
    pub loss: Tensor,
    /// Named terms (batch means), e.g. `l_diff`, `l_prior`, `l_rec`, for progress and metrics.
    pub terms: Vec<(String, f64)>,
    /// The batch mean of the squared per-example diffusion loss (up to a positive constant
    /// factor, which Adam's per-weight normalisation ignores), when the schedule names weights
    /// trained on the estimate's variance ([`crate::NoiseSchedule::variance_trained_vars`]): those
    /// weights take their gradient from this tensor, every other weight from `loss`.
    pub variance: Option<Tensor>,
}

impl LossOutput {
    /// A loss whose gradient trains every weight.
    pub fn new(loss: Tensor, terms: Vec<(String, f64)>) -> Self {
        LossOutput {
            loss,
            terms,
            variance: None,
        }
    }
}

/// A loss over a data batch for a composed pipeline.
///
/// - eps-mse (DDPM's simple loss): regresses the parameterization's target; refuses a trainable
///   transform (`F` would collapse to 0, NDM sec. 6) in [`Objective::check`].
/// - ndm-elbo-discrete / ndm-elbo-continuous: the NELBO of `docs/math.md` ("NELBO"), gradients into the backbone,
///   transform, a learned schedule (VDM: its interior from `LossOutput::variance`) and (planned) a flow prior,
///   through [`crate::elbo`].
/// - planned: a flow prior's NLL is the prior's `prior_loss`, so it will be part of the NELBO
///   objectives rather than an objective of its own.
pub trait Objective: Send + Sync + std::fmt::Debug {
    /// Refuses parts this objective cannot train, with a sentence that says why.
    fn check(&self, _pipe: &Pipeline) -> crate::Result<()> {
        Ok(())
    }
    /// The loss for data `x` (shape `[B, ..D]`).
    fn loss(&self, pipe: &Pipeline, x: &Tensor, rng: &mut Rng) -> Result<LossOutput>;
}
