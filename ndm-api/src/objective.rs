//! Training objectives over the composed pipeline.

use crate::pipeline::Pipeline;
use crate::rng::Rng;
use candle_core::{Result, Tensor};

/// One batch's loss: the scalar to minimise and named per-term batch means for logs.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// Scalar loss (mean over the batch) with gradients into every trainable part.
    pub loss: Tensor,
    /// Named terms (batch means, scalar tensors, detached or not), e.g. `l_diff`, `l_prior`,
    /// `l_rec`, for progress and metrics. They stay on the device: the trainer reads them with the
    /// loss and the gradient norm in one copy per step ([`read_scalars`]).
    pub terms: Vec<(String, Tensor)>,
    /// The batch mean of the squared per-example diffusion loss (up to a positive constant
    /// factor, which Adam's per-weight normalisation ignores), when the schedule names weights
    /// trained on the estimate's variance ([`crate::NoiseSchedule::variance_trained_vars`]): those
    /// weights take their gradient from this tensor, every other weight from `loss`.
    pub variance: Option<Tensor>,
}

impl LossOutput {
    /// A loss whose gradient trains every weight.
    pub fn new(loss: Tensor, terms: Vec<(String, Tensor)>) -> Self {
        LossOutput {
            loss,
            terms,
            variance: None,
        }
    }
}

/// The values of scalar tensors (any dtype, one device), read back in one copy: the one device
/// read of a training step.
pub fn read_scalars(ts: &[&Tensor]) -> Result<Vec<f64>> {
    if ts.is_empty() {
        return Ok(Vec::new());
    }
    let flat = ts
        .iter()
        .map(|t| t.detach().to_dtype(candle_core::DType::F64)?.reshape(1))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&flat, 0)?.to_vec1()
}

/// Named scalar tensors read back in one copy ([`read_scalars`]).
pub fn read_terms(terms: &[(String, Tensor)]) -> Result<Vec<(String, f64)>> {
    let vals = read_scalars(&terms.iter().map(|(_, t)| t).collect::<Vec<_>>())?;
    Ok(terms.iter().map(|(n, _)| n.clone()).zip(vals).collect())
}

/// A loss over a data batch for a composed pipeline.
///
/// - eps-mse (DDPM's simple loss): regresses the parameterization's target; refuses a trainable
///   transform (`F` would collapse to 0, NDM sec. 6) in [`Objective::check`].
/// - ndm-elbo-discrete / ndm-elbo-continuous: the NELBO of `docs/math.md` ("NELBO"), gradients into the backbone,
///   transform, a learned schedule (VDM: its interior from `LossOutput::variance`) and a learned
///   prior, through [`crate::elbo`].
/// - a learned prior's NLL (DiNof's flow) is the prior's `prior_loss`, part of every objective
///   rather than an objective of its own.
pub trait Objective: Send + Sync + std::fmt::Debug {
    /// Refuses parts this objective cannot train, with a sentence that says why.
    fn check(&self, _pipe: &Pipeline) -> crate::Result<()> {
        Ok(())
    }
    /// The loss for data `x` (shape `[B, ..D]`).
    fn loss(&self, pipe: &Pipeline, x: &Tensor, rng: &mut Rng) -> Result<LossOutput>;
}
