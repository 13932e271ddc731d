//! Negative log-likelihood of data under the probability-flow ODE of a composed pipeline.
//!
//! `x` enters the ODE at `t = 0` as `z_0 = alpha_0 F(x, 0)`; the augmented ODE
//! `d/dt [z, delta] = [f(z, t), div_z f(z, t)]` runs from 0 to the prior's time `t_end` with RK45,
//! and `log p_0(z_0) = log p_end(z_end) + delta(t_end)`. Then
//! `-log p(x) = -log p_end(z_end) - delta - D log alpha_0` (the change of variables `x -> alpha_0 x`).
//!
//! What this is a likelihood of: when `F(., 0)` is the identity (the identity transform, and
//! `transform.learned`, whose `F(x, 0) = x` by construction), `p_0` is the model's density of
//! `alpha_0 x` and the result is an exact model NLL of `x` (up to RK45's tolerance and, with
//! Hutchinson's estimator, an unbiased estimate of it). Since `sigma_0 > 0`, `p_0` models data
//! blurred by `N(0, sigma_0^2 / alpha_0^2)`: for 2-D data with `sigma_0 = 0.01` this differs from the
//! unblurred density by about `sigma_0^2 / (2 Var)` nats per dimension. For transforms whose `F(., 0)`
//! is not the identity (a VAE encoder, a blur at `t = 0`) the ODE gives the density of the latent,
//! not of `x`: [`ode_nll`] refuses them and the NELBO is the number to report.
//!
//! Divergence: the exact trace (one backward pass per dimension) for small data, or Hutchinson's
//! estimator `v^T (df/dz) v` with a Rademacher or Gaussian probe `v` fixed over one solve.
//! Images would need uniform dequantization and the `[-1, 1]` offset; ndm has no image data set
//! yet, so there is no such path.

use crate::ode::{dopri5, OdeStats, Tolerance};
use crate::pipeline::Pipeline;
use crate::rng::Rng;
use crate::{NdmError, Result};
use candle_core::{DType, Tensor, Var};

/// How the divergence of the drift is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trace {
    /// Exact: one backward pass per data dimension.
    Exact,
    /// Hutchinson with Rademacher probes.
    Rademacher,
    /// Hutchinson with Gaussian probes.
    Gaussian,
}

/// Options of [`ode_nll`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NllOptions {
    pub trace: Trace,
    /// Independent probes (solves) averaged by Hutchinson's estimator.
    pub probes: usize,
    pub tol: Tolerance,
}

impl NllOptions {
    /// Exact trace up to 16 dimensions, otherwise one Rademacher probe; rtol = atol = 1e-5.
    pub fn default_for(dims: usize) -> Self {
        NllOptions {
            trace: if dims <= 16 {
                Trace::Exact
            } else {
                Trace::Rademacher
            },
            probes: 1,
            tol: Tolerance::default(),
        }
    }
}

/// Per-example NLL and what the solves cost.
#[derive(Debug, Clone)]
pub struct NllResult {
    /// `-log p(x)` per example, nats.
    pub nll: Vec<f64>,
    /// Where each example lands at `t_end` (the ODE's encoding of `x`; of the last probe's solve).
    pub z_end: Tensor,
    pub stats: OdeStats,
}

/// The probability-flow drift at `(z, t)` and its divergence `div_z f` per example (exact, or
/// `v^T (df/dz) v` for the probe `v`), both detached.
pub fn divergence(
    pipe: &Pipeline,
    z: &Tensor,
    t: f64,
    trace: Trace,
    probe: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let var = Var::from_tensor(&z.detach())?;
    let zt = var.as_tensor();
    let f = pipe.ode_drift(zt, t)?;
    let b = z.dim(0)?;
    let div = match (trace, probe) {
        (Trace::Exact, _) => {
            let flat = f.flatten_from(1)?;
            let d = flat.dim(1)?;
            let mut cols = Vec::with_capacity(d);
            for i in 0..d {
                let g = flat.narrow(1, i, 1)?.sum_all()?.backward()?;
                let gz = g
                    .get(zt)
                    .ok_or_else(|| NdmError::Spec("the drift does not depend on z".into()))?;
                cols.push(gz.flatten_from(1)?.narrow(1, i, 1)?);
            }
            Tensor::cat(&cols, 1)?.sum(1)?
        }
        (_, Some(v)) => {
            let g = (&f * v)?.sum_all()?.backward()?;
            let gz = g
                .get(zt)
                .ok_or_else(|| NdmError::Spec("the drift does not depend on z".into()))?;
            (gz * v)?.flatten_from(1)?.sum(1)?
        }
        (_, None) => {
            return Err(NdmError::Spec(
                "Hutchinson's estimator needs a probe".into(),
            ))
        }
    };
    debug_assert_eq!(div.dims(), &[b]);
    Ok((f.detach(), div.detach()))
}

/// The NLL of `x` (shape `[B, ..D]`) under the pipeline's probability-flow ODE, in nats per example.
pub fn ode_nll(pipe: &Pipeline, x: &Tensor, opts: &NllOptions, rng: &mut Rng) -> Result<NllResult> {
    let identity_at_zero = pipe.transform.is_identity() || pipe.transform.identity_at_zero();
    if !identity_at_zero || pipe.latent_shape != pipe.data_shape {
        return Err(NdmError::Incompatible(format!(
            "transform {} is not the identity at t = 0, so the ODE gives the density of its latent, not of x; report the NELBO (runner eval)",
            pipe.spec.transform.kind
        )));
    }
    let b = x.dim(0)?;
    let dims = x.elem_count() / b;
    // From the process's lowest time (0 except for rectified flow, see `NoiseSchedule::t_min`).
    let t0 = pipe.t_min();
    let p0 = pipe.schedule.point(t0);
    let t_end = pipe.t_end();
    let z0 = (x.to_dtype(pipe.dtype)? * p0.alpha)?;
    let probes = if opts.trace == Trace::Exact {
        1
    } else {
        opts.probes.max(1)
    };
    let mut total = vec![0.0; b];
    let mut stats = OdeStats::default();
    let mut z_end = z0.clone();
    for _ in 0..probes {
        let probe = match opts.trace {
            Trace::Exact => None,
            Trace::Rademacher => {
                Some(rng.rademacher_tensor(z0.dims(), pipe.dtype, &pipe.device)?)
            }
            Trace::Gaussian => Some(rng.normal_tensor(z0.dims(), pipe.dtype, &pipe.device)?),
        };
        let delta0 = Tensor::zeros(b, pipe.dtype, &pipe.device)?;
        let mut rhs = |t: f64, y: &Vec<Tensor>| -> Result<Vec<Tensor>> {
            let (f, div) = divergence(pipe, &y[0], t, opts.trace, probe.as_ref())?;
            Ok(vec![f, div])
        };
        let (y, s) = dopri5(&mut rhs, vec![z0.clone(), delta0], t0, t_end, &opts.tol)?;
        stats.accepted += s.accepted;
        stats.rejected += s.rejected;
        stats.nfe += s.nfe;
        let log_prior = pipe
            .prior
            .log_prob(&y[0])?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        let delta = y[1].to_dtype(DType::F64)?.to_vec1::<f64>()?;
        z_end = y[0].clone();
        for i in 0..b {
            let nll = -(log_prior[i] + delta[i]) - dims as f64 * p0.alpha.ln();
            total[i] += nll / probes as f64;
        }
    }
    if total.iter().any(|v| !v.is_finite()) {
        return Err(NdmError::NonFinite(
            "the ODE likelihood is not finite".into(),
        ));
    }
    Ok(NllResult {
        nll: total,
        z_end,
        stats,
    })
}
