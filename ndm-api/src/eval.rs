//! Evaluation of a trained pipeline on held-out data: the NELBO split into its terms, and the
//! negative log-likelihood under the probability-flow ODE. Both report an [`Estimate`] (mean ±
//! standard error over examples) in nats per example and in bits per dimension.

use crate::elbo::{continuous_nelbo, discrete_nelbo, DiffEstimate, ImportanceTable, TimeSampling};
use crate::likelihood::{ode_nll, NllOptions, Trace};
use crate::pipeline::Pipeline;
use crate::rng::Rng;
use crate::stats::Estimate;
use crate::{Dataset, NdmError, Result, Split};
use candle_core::{DType, Tensor};
use serde::Serialize;

/// Stratified importance-sampled times per example when evaluating a continuous-time NELBO.
pub const CONTINUOUS_EVAL_TIMES: usize = 64;

/// A NELBO estimate on held-out data.
#[derive(Debug, Clone, Serialize)]
pub struct NelboReport {
    /// The NELBO per example, nats.
    pub nelbo: Estimate,
    /// The same in bits per dimension.
    pub bits_per_dim: Estimate,
    /// Means of the three terms, nats (they add up to `nelbo.mean`).
    pub l_prior: f64,
    pub l_diff: f64,
    pub l_rec: f64,
}

impl std::fmt::Display for NelboReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NELBO {} nats ({:.4} bits/dim) on {} held-out examples: L_prior {:.4}, L_diff {:.4}, L_rec {:.4}",
            self.nelbo, self.bits_per_dim.mean, self.nelbo.n, self.l_prior, self.l_diff, self.l_rec
        )
    }
}

fn to_f64s(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?)
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
    if n == 0 || batch == 0 {
        return Err(NdmError::InvalidArgument(
            "evaluation needs at least one example".into(),
        ));
    }
    let table = pipe
        .spec
        .steps
        .is_none()
        .then(|| ImportanceTable::new(pipe, 4096));
    let mut totals: Vec<f64> = Vec::with_capacity(n);
    let mut sums = [0.0f64; 3];
    for start in (0..n).step_by(batch) {
        let b = batch.min(n - start);
        let x = data.sample(b, Split::Test, rng, &pipe.device)?;
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
        let (p, d, r) = (
            to_f64s(&terms.l_prior)?,
            to_f64s(&terms.l_diff)?,
            to_f64s(&terms.l_rec)?,
        );
        for i in 0..b {
            sums[0] += p[i];
            sums[1] += d[i];
            sums[2] += r[i];
            totals.push(p[i] + d[i] + r[i]);
        }
    }
    let nelbo = Estimate::of(&totals).ok_or_else(|| NdmError::Spec("no examples".into()))?;
    if !nelbo.is_finite() {
        return Err(NdmError::NonFinite("the NELBO is not finite".into()));
    }
    let nf = n as f64;
    Ok(NelboReport {
        nelbo,
        bits_per_dim: nelbo.bits_per_dim(pipe.data_dims()),
        l_prior: sums[0] / nf,
        l_diff: sums[1] / nf,
        l_rec: sums[2] / nf,
    })
}

/// An ODE NLL estimate on held-out data.
#[derive(Debug, Clone, Serialize)]
pub struct NllReport {
    /// The NLL per example, nats.
    pub nll: Estimate,
    pub bits_per_dim: Estimate,
    /// How the divergence was computed and how many probes were averaged per example.
    pub trace: String,
    pub probes: usize,
    pub rtol: f64,
    pub atol: f64,
    /// Drift evaluations over all solves.
    pub nfe: usize,
}

impl std::fmt::Display for NllReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ODE NLL {} nats ({:.4} bits/dim) on {} held-out examples, trace {} x{}, rk45 NFE {}",
            self.nll, self.bits_per_dim.mean, self.nll.n, self.trace, self.probes, self.nfe
        )
    }
}

/// The ODE NLL of `n` held-out examples, solved `batch` examples at a time.
pub fn evaluate_ode_nll(
    pipe: &Pipeline,
    data: &dyn Dataset,
    n: usize,
    batch: usize,
    opts: &NllOptions,
    rng: &mut Rng,
) -> Result<NllReport> {
    if n == 0 || batch == 0 {
        return Err(NdmError::InvalidArgument(
            "evaluation needs at least one example".into(),
        ));
    }
    if opts.probes == 0 || !(opts.tol.rtol > 0.0 && opts.tol.atol > 0.0) {
        return Err(NdmError::InvalidArgument(
            "the ODE NLL needs at least one probe and positive rtol, atol".into(),
        ));
    }
    let x = data.sample(n, Split::Test, rng, &pipe.device)?;
    let mut all = Vec::with_capacity(n);
    let mut nfe = 0;
    for start in (0..n).step_by(batch) {
        let b = batch.min(n - start);
        let r = ode_nll(pipe, &x.narrow(0, start, b)?, opts, rng)?;
        all.extend(r.nll);
        nfe += r.stats.nfe;
    }
    let nll = Estimate::of(&all).ok_or_else(|| NdmError::Spec("no examples".into()))?;
    Ok(NllReport {
        nll,
        bits_per_dim: nll.bits_per_dim(pipe.data_dims()),
        trace: format!("{:?}", opts.trace).to_lowercase(),
        probes: if opts.trace == Trace::Exact {
            1
        } else {
            opts.probes
        },
        rtol: opts.tol.rtol,
        atol: opts.tol.atol,
        nfe,
    })
}
