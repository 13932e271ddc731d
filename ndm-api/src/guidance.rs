//! Class-conditional sampling and classifier-free guidance (Ho & Salimans 2022) as a reverse
//! process: solvers see one more [`ReverseProcess`] and work unchanged.

use crate::pipeline::Pipeline;
use crate::reverse::{Gaussian, ReverseProcess};
use crate::schedule::SchedulePoint;
use crate::{NdmError, Result};
use candle_core::{DType, Device, Tensor};

/// What to sample: one class per sample and the guidance scale `w >= 0`.
#[derive(Debug, Clone, PartialEq)]
pub struct Conditioning {
    /// The class of every sample, in `0..K`.
    pub classes: Vec<u32>,
    /// `w` in `xhat = (1 + w) xhat(z, t | c) - w xhat(z, t)`: 0 is the conditional model, larger
    /// values push samples towards what distinguishes their class.
    pub guidance: f64,
}

impl Conditioning {
    /// Checks the classes and the scale against a pipeline, with one-line errors.
    pub fn check(&self, pipe: &Pipeline) -> Result<()> {
        let k = pipe.classes();
        if k == 0 {
            return Err(NdmError::Incompatible(
                "this model is not class-conditional (model.conditional = false): it takes no class or guidance".into(),
            ));
        }
        if let Some(c) = self.classes.iter().find(|&&c| c as usize >= k) {
            return Err(NdmError::InvalidArgument(format!(
                "class {c} is out of range: the model has {k} classes, 0..={}",
                k - 1
            )));
        }
        if !(self.guidance.is_finite() && self.guidance >= 0.0) {
            return Err(NdmError::InvalidArgument(format!(
                "the guidance scale must be a non-negative number, got {}",
                self.guidance
            )));
        }
        Ok(())
    }
}

/// A conditional pipeline's reverse process for given classes, with classifier-free guidance of
/// the prediction: `xhat = (1 + w) xhat(z, t | c) - w xhat(z, t | no class)`. For an `eps`- or
/// `v`-predicting network with the identity transform this is the usual guidance of the network
/// output, since `xhat` is affine in it at fixed `z`. Everything built from `xhat` (posterior,
/// score, SDE drift) goes through a conditional `F` with the requested classes. A guided
/// evaluation is one network call on the doubled batch `[z; z]` with `[c; no class]`, which
/// [`ReverseProcess::network_passes`] counts as two evaluations.
#[derive(Debug)]
pub struct Guided<'a> {
    pipe: &'a Pipeline,
    class: Tensor,
    /// `[c; no class]`, the classes of a guided evaluation's doubled batch, built once.
    class_and_none: Tensor,
    guidance: f64,
}

impl<'a> Guided<'a> {
    /// Checks `cond` against `pipe` ([`Conditioning::check`]).
    pub fn new(pipe: &'a Pipeline, cond: &Conditioning) -> Result<Self> {
        cond.check(pipe)?;
        let n = cond.classes.len();
        let class = Tensor::from_vec(cond.classes.clone(), n, &pipe.device)?;
        let none = Tensor::full(pipe.no_class(), n, &pipe.device)?;
        let class_and_none = Tensor::cat(&[&class, &none], 0)?;
        Ok(Guided {
            pipe,
            class,
            class_and_none,
            guidance: cond.guidance,
        })
    }

    fn with_class<T>(&self, f: impl FnOnce() -> candle_core::Result<T>) -> candle_core::Result<T> {
        let _c = self.pipe.conditioned(Some(self.class.clone()));
        f()
    }
}

impl ReverseProcess for Guided<'_> {
    fn latent_shape(&self) -> &[usize] {
        self.pipe.latent_shape()
    }
    fn device(&self) -> &Device {
        ReverseProcess::device(self.pipe)
    }
    fn dtype(&self) -> DType {
        ReverseProcess::dtype(self.pipe)
    }
    fn t_min(&self) -> f64 {
        self.pipe.t_min()
    }
    fn t_end(&self) -> f64 {
        ReverseProcess::t_end(self.pipe)
    }
    fn training_steps(&self) -> Option<usize> {
        self.pipe.training_steps()
    }
    fn schedule_point(&self, t: f64) -> SchedulePoint {
        self.pipe.schedule_point(t)
    }
    fn network_passes(&self) -> usize {
        if self.guidance == 0.0 {
            1
        } else {
            2
        }
    }
    fn predict_x(&self, z: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        if self.guidance == 0.0 {
            return self.with_class(|| self.pipe.predict_x(z, t));
        }
        let n = z.dim(0)?;
        let both = {
            let _c = self.pipe.conditioned(Some(self.class_and_none.clone()));
            self.pipe.predict_x(&Tensor::cat(&[z, z], 0)?, t)?
        };
        let (cond, uncond) = (both.narrow(0, 0, n)?, both.narrow(0, n, n)?);
        (cond * (1.0 + self.guidance))? - (uncond * self.guidance)?
    }
    fn posterior(
        &self,
        z_t: &Tensor,
        xhat: &Tensor,
        t: f64,
        s: f64,
        eta: f64,
    ) -> candle_core::Result<Gaussian> {
        self.with_class(|| self.pipe.posterior(z_t, xhat, t, s, eta))
    }
    fn score(&self, z: &Tensor, xhat: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        self.with_class(|| self.pipe.score(z, xhat, t))
    }
    fn reverse_sde(
        &self,
        z: &Tensor,
        xhat: &Tensor,
        t: f64,
        eta: f64,
    ) -> candle_core::Result<(Tensor, f64)> {
        self.with_class(|| self.pipe.reverse_sde(z, xhat, t, eta))
    }
}
