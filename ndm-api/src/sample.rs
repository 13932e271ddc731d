//! Sampling from a pipeline: prior draw, solver, decoder.

use crate::guidance::{Conditioning, Guided};
use crate::pipeline::Pipeline;
use crate::reverse::{MapPrediction, ReverseProcess};
use crate::rng::Rng;
use crate::solver::{Solver, TimeGrid};
use crate::{NdmError, Result};
use candle_core::{DType, Tensor};

/// Samples and what they cost.
#[derive(Debug, Clone)]
pub struct Samples {
    /// Decoded samples, `[n, ..D]`.
    pub x: Tensor,
    /// The prior draw they started from, `[n, ..L]`.
    pub z_start: Tensor,
    /// Network evaluations per sample (the final decode included; a guided evaluation counts
    /// two, see [`ReverseProcess::network_passes`]).
    pub nfe: usize,
}

/// Draws `n` samples: prior at `t_end`, the solver down the grid, then the decoder.
pub fn sample(
    pipe: &Pipeline,
    solver: &dyn Solver,
    grid: &TimeGrid,
    n: usize,
    rng: &mut Rng,
) -> Result<Samples> {
    sample_clipped(pipe, solver, grid, n, None, None, rng)
}

/// [`sample`] with the prediction `xhat` clamped to `clip = (lo, hi)` at every step and in the
/// final decode (see [`MapPrediction::clipped`]; behind an encoder, whose predictions are
/// latents, only the decoded samples), and for a conditional model, of the classes
/// of `cond` (one per sample, so `n` must be their number) with its guidance scale. Without
/// `cond` a conditional model samples unconditionally (its "no class" entry).
pub fn sample_clipped(
    pipe: &Pipeline,
    solver: &dyn Solver,
    grid: &TimeGrid,
    n: usize,
    clip: Option<(f64, f64)>,
    cond: Option<&Conditioning>,
    rng: &mut Rng,
) -> Result<Samples> {
    if n == 0 {
        return Err(NdmError::InvalidArgument(
            "the number of samples must be at least 1".into(),
        ));
    }
    if let Some(c) = cond {
        if c.classes.len() != n {
            return Err(NdmError::InvalidArgument(format!(
                "{} classes for {n} samples: give one class per sample",
                c.classes.len()
            )));
        }
    }
    let mut shape = vec![n];
    shape.extend(&pipe.latent_shape);
    let z_start = pipe.prior.sample(&shape, rng, pipe.dtype, &pipe.device)?;
    let guided = cond.map(|c| Guided::new(pipe, c)).transpose()?;
    let base: &dyn ReverseProcess = match &guided {
        Some(g) => g,
        None => pipe,
    };
    // Behind an encoder (LSGM) the predictions are latents: the clamp applies to the decoded data.
    let encoded = pipe.transform.encoder().is_some();
    let clipped;
    let rp: &dyn ReverseProcess = match clip.filter(|_| !encoded) {
        Some((lo, hi)) => {
            clipped = MapPrediction::clipped(base, lo, hi);
            &clipped
        }
        None => base,
    };
    solver.check(rp)?;
    // A learned schedule evaluates the grid's points in one read, not one per step; forgotten
    // after the solve, whatever its outcome.
    pipe.schedule.prefetch_points(grid.times());
    let out = solver.sample(rp, z_start.clone(), grid, rng);
    pipe.schedule.forget_points();
    let out = out?;
    let t_min = grid.end();
    // The decoder mean at t_min (clamped like every prediction), through the transform's decoder.
    let xhat = rp.predict_x(&out.z, t_min)?;
    let x = {
        // A conditional transform's decoder (when it has one) decodes with the samples' classes.
        let _c = pipe.conditioned(
            cond.map(|c| Tensor::from_vec(c.classes.clone(), n, &pipe.device))
                .transpose()?,
        );
        let x = pipe.transform.decode(&xhat)?.unwrap_or(xhat);
        match clip.filter(|_| encoded) {
            Some((lo, hi)) => x.clamp(lo, hi)?,
            None => x,
        }
    };
    let finite = x
        .to_dtype(DType::F64)?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()?
        .is_finite();
    if !finite {
        return Err(NdmError::NonFinite(
            "the samples contain NaN or infinity".into(),
        ));
    }
    Ok(Samples {
        x,
        z_start,
        nfe: (out.nfe + 1) * rp.network_passes(),
    })
}

/// Solver steps when a sampler spec names none: continuous-time models take this many.
pub const DEFAULT_CONTINUOUS_STEPS: usize = 100;

impl crate::spec::SamplerSpec {
    /// The number of solver steps: the spec's, else the training grid (discrete-time models), else
    /// [`DEFAULT_CONTINUOUS_STEPS`].
    pub fn steps_for(&self, pipe: &Pipeline) -> usize {
        self.steps
            .or(pipe.spec.steps)
            .unwrap_or(DEFAULT_CONTINUOUS_STEPS)
    }

    /// The time grid this spec asks for on `pipe`.
    pub fn grid(&self, pipe: &Pipeline) -> Result<TimeGrid> {
        TimeGrid::for_process(self.steps_for(pipe), self.spacing, pipe)
    }
}

/// Draws `n` samples the way a sampler spec says (its solver, steps and spacing), with `xhat`
/// clamped to `clip` when given, of the classes of `cond` (see [`sample_clipped`]).
pub fn sample_with(
    pipe: &Pipeline,
    sampler: &crate::spec::SamplerSpec,
    plugins: &crate::PluginRegistry,
    n: usize,
    clip: Option<(f64, f64)>,
    cond: Option<&Conditioning>,
    rng: &mut Rng,
) -> Result<(Samples, TimeGrid)> {
    let solver = plugins.build_solver(
        &sampler.solver,
        &crate::BuildCtx::without_weights(&pipe.device, plugins),
    )?;
    let grid = sampler.grid(pipe)?;
    Ok((
        sample_clipped(pipe, solver.as_ref(), &grid, n, clip, cond, rng)?,
        grid,
    ))
}
