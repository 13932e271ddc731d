//! Sampling and evaluation over a pipeline.

use crate::elbo::{continuous_nelbo, discrete_nelbo, DiffEstimate, ImportanceTable, TimeSampling};

/// Stratified importance-sampled times per example when evaluating a continuous-time NELBO.
pub const CONTINUOUS_EVAL_TIMES: usize = 64;
use crate::pipeline::Pipeline;
use crate::rng::Rng;
use crate::solver::{Solver, TimeGrid};
use crate::{Dataset, NdmError, Result};
use candle_core::{DType, Tensor};

/// Samples and what they cost.
#[derive(Debug, Clone)]
pub struct Samples {
    /// Decoded samples, `[n, ..D]`.
    pub x: Tensor,
    /// The prior draw they started from, `[n, ..L]`.
    pub z_start: Tensor,
    /// Network evaluations per sample (the final decode included).
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
    if n == 0 {
        return Err(NdmError::InvalidArgument(
            "the number of samples must be at least 1".into(),
        ));
    }
    let mut shape = vec![n];
    shape.extend(&pipe.latent_shape);
    let z_start = pipe.prior.sample(&shape, rng, pipe.dtype, &pipe.device)?;
    let out = solver.sample(pipe, z_start.clone(), grid, rng)?;
    let t_min = grid.end();
    let x = pipe.decode(&out.z, t_min)?;
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
        nfe: out.nfe + 1,
    })
}

/// A NELBO estimate on held-out data, in nats per example and bits per dimension.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NelboReport {
    pub examples: usize,
    pub nelbo_nats: f64,
    pub bits_per_dim: f64,
    pub l_prior: f64,
    pub l_diff: f64,
    pub l_rec: f64,
    /// Standard error of the NELBO mean.
    pub stderr_nats: f64,
}

/// The NELBO of `n` held-out examples (the `Test` split), in batches of `batch`. Discrete-time
/// models sum every KL term of their grid; continuous-time models average the diffusion loss over
/// [`CONTINUOUS_EVAL_TIMES`] stratified, importance-sampled times per example.
pub fn evaluate_nelbo(
    pipe: &Pipeline,
    data: &dyn Dataset,
    n: usize,
    batch: usize,
    rng: &mut Rng,
) -> Result<NelboReport> {
    let table = pipe
        .spec
        .steps
        .is_none()
        .then(|| ImportanceTable::new(pipe, 4096));
    if n == 0 || batch == 0 {
        return Err(NdmError::InvalidArgument(
            "evaluation needs at least one example".into(),
        ));
    }
    let mut totals: Vec<f64> = Vec::with_capacity(n);
    let mut sums = [0.0f64; 3];
    let mut done = 0;
    while done < n {
        let b = batch.min(n - done);
        let x = data.sample(b, crate::Split::Test, rng, &pipe.device)?;
        let terms = match pipe.spec.steps {
            Some(t_total) => discrete_nelbo(pipe, &x, t_total, DiffEstimate::Exhaustive, rng)?,
            None => continuous_nelbo(
                pipe,
                &x,
                TimeSampling::Importance,
                table.as_ref(),
                CONTINUOUS_EVAL_TIMES,
                rng,
            )?,
        };
        let v = |t: &Tensor| -> Result<Vec<f64>> { Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?) };
        let (p, d, r) = (v(&terms.l_prior)?, v(&terms.l_diff)?, v(&terms.l_rec)?);
        for i in 0..b {
            sums[0] += p[i];
            sums[1] += d[i];
            sums[2] += r[i];
            totals.push(p[i] + d[i] + r[i]);
        }
        done += b;
    }
    let nf = n as f64;
    let mean = totals.iter().sum::<f64>() / nf;
    let var = totals.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / (nf - 1.0).max(1.0);
    if !mean.is_finite() {
        return Err(NdmError::NonFinite("the NELBO is not finite".into()));
    }
    let dims: usize = pipe.data_shape.iter().product();
    Ok(NelboReport {
        examples: n,
        nelbo_nats: mean,
        bits_per_dim: mean / (dims as f64 * std::f64::consts::LN_2),
        l_prior: sums[0] / nf,
        l_diff: sums[1] / nf,
        l_rec: sums[2] / nf,
        stderr_nats: (var / nf).sqrt(),
    })
}
