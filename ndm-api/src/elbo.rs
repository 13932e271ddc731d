//! The negative ELBO of MATH.md, shared by the objectives and the evaluator:
//! `NELBO = L_prior + L_diff + L_rec`, every term per example (shape `[B]`, nats).

use crate::pipeline::{posterior_coeffs, Pipeline};
use crate::rng::{host_tensor, Rng};
use candle_core::{Result, Tensor};

/// The three NELBO terms per example.
#[derive(Debug, Clone)]
pub struct NelboTerms {
    pub l_prior: Tensor,
    pub l_diff: Tensor,
    pub l_rec: Tensor,
}

impl NelboTerms {
    /// `L_prior + L_diff + L_rec` per example.
    pub fn total(&self) -> Result<Tensor> {
        (&self.l_prior + &self.l_diff)? + &self.l_rec
    }
    /// Batch means of each term and the total, named for logs.
    pub fn means(&self) -> Result<Vec<(String, f64)>> {
        let m = |t: &Tensor| -> Result<f64> {
            t.mean_all()?.to_dtype(candle_core::DType::F64)?.to_scalar()
        };
        Ok(vec![
            ("nelbo".into(), m(&self.total()?)?),
            ("l_prior".into(), m(&self.l_prior)?),
            ("l_diff".into(), m(&self.l_diff)?),
            ("l_rec".into(), m(&self.l_rec)?),
        ])
    }
}

/// Sum of squares over all but the batch dimension.
pub fn sum_sq(t: &Tensor) -> Result<Tensor> {
    t.sqr()?.flatten_from(1)?.sum(1)
}

/// Standard normal noise shaped like `like`.
pub fn noise_like(like: &Tensor, rng: &mut Rng) -> Result<Tensor> {
    rng.normal_tensor(like.dims(), like.dtype(), like.device())
}

/// A `[B]` tensor from host values, in the pipeline's dtype and device.
fn col(pipe: &Pipeline, v: Vec<f64>) -> Result<Tensor> {
    let n = v.len();
    host_tensor(v, &[n], pipe.dtype, &pipe.device)
}

/// `L_prior = KL(q(z_end | x) || p(z_end))` at the prior's time.
pub fn prior_term(pipe: &Pipeline, x: &Tensor, rng: &mut Rng) -> Result<Tensor> {
    let n = x.dim(0)?;
    let t_end = pipe.t_end();
    let p = pipe.schedule.point(t_end);
    let mean = (pipe.f(x, &pipe.time_tensor(t_end, n)?)? * p.alpha)?;
    let z = (&mean + (noise_like(&mean, rng)? * p.sigma)?)?;
    let std = pipe.time_tensor(p.sigma, n)?;
    pipe.prior.prior_loss(&mean, &std, &z)
}

/// `L_rec = -log p(x | z_0)`, `z_0 ~ q(z_0 | x)`: the transform's decoder where it has one, else a
/// Gaussian decoder `N(x; xhat(z_0, 0), (sigma_0 / alpha_0)^2 I)` around the model's prediction.
pub fn rec_term(pipe: &Pipeline, x: &Tensor, rng: &mut Rng) -> Result<Tensor> {
    let n = x.dim(0)?;
    let t0 = pipe.time_tensor(0.0, n)?;
    let p = pipe.schedule.point(0.0);
    let f0 = pipe.f(x, &t0)?;
    let z0 = ((&f0 * p.alpha)? + (noise_like(&f0, rng)? * p.sigma)?)?;
    if let Some(nll) = pipe.transform.reconstruction_nll(x, &z0)? {
        return Ok(nll);
    }
    let sb = pipe.schedule.batch(&t0)?;
    let xhat0 = pipe.xhat(&z0, &t0, &sb)?;
    let s = p.sigma / p.alpha;
    let d = x.elem_count() / n;
    let c = d as f64 * (s.ln() + 0.5 * (2.0 * std::f64::consts::PI).ln());
    sum_sq(&((x - xhat0)? / s)?)?.affine(0.5, c)
}

/// The discrete KL term `KL_{t_i}` (MATH.md eq. 9-10, `eta = 1`) for per-example grid indices
/// `idx[b]` in `1..=n` on a grid of `t_total` steps (`t_i = i / t_total`, `s = t_{i-1}`).
pub fn discrete_kl(
    pipe: &Pipeline,
    x: &Tensor,
    idx: &[usize],
    t_total: usize,
    rng: &mut Rng,
) -> Result<Tensor> {
    let tf = t_total as f64;
    let (mut a_t, mut s_t, mut a_s, mut k, mut inv2var, mut ts, mut ss) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for &i in idx {
        let (t, s) = (i as f64 / tf, (i - 1) as f64 / tf);
        let (pt, ps) = (pipe.schedule.point(t), pipe.schedule.point(s));
        let c = posterior_coeffs(&pt, &ps, 1.0);
        a_t.push(pt.alpha);
        s_t.push(pt.sigma);
        a_s.push(ps.alpha);
        k.push(c.k * pt.alpha);
        inv2var.push(0.5 / c.var);
        ts.push(t);
        ss.push(s);
    }
    let bc = |v: Vec<f64>| -> Result<Tensor> { pipe.per_example(&col(pipe, v)?) };
    let (t, s) = (col(pipe, ts)?, col(pipe, ss)?);
    let fx_t = pipe.f(x, &t)?;
    let z = (fx_t.broadcast_mul(&bc(a_t)?)? + noise_like(&fx_t, rng)?.broadcast_mul(&bc(s_t)?)?)?;
    let sb = pipe.schedule.batch(&t)?;
    let xhat = pipe.xhat(&z, &t, &sb)?;
    let (a_s, k_at) = (bc(a_s)?, bc(k)?);
    let diff = if pipe.transform.is_identity() {
        (&x.broadcast_mul(&(&a_s - &k_at)?)? - xhat.broadcast_mul(&(&a_s - &k_at)?)?)?
    } else {
        let ds = (pipe.f(x, &s)? - pipe.f(&xhat, &s)?)?;
        let dt = (fx_t - pipe.f(&xhat, &t)?)?;
        (ds.broadcast_mul(&a_s)? - dt.broadcast_mul(&k_at)?)?
    };
    sum_sq(&diff)? * col(pipe, inv2var)?
}

/// How the discrete `L_diff = sum_i KL_{t_i}` is estimated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffEstimate {
    /// One uniformly drawn `i` per example, times the number of steps (training).
    Sampled,
    /// Every `i`, summed (evaluation; `n` network evaluations per example).
    Exhaustive,
}

/// The discrete-time NELBO of a pipeline on a grid of `t_total` steps up to the prior's time.
pub fn discrete_nelbo(
    pipe: &Pipeline,
    x: &Tensor,
    t_total: usize,
    est: DiffEstimate,
    rng: &mut Rng,
) -> Result<NelboTerms> {
    let b = x.dim(0)?;
    let n = (pipe.t_end() * t_total as f64).round() as usize;
    let l_diff = match est {
        DiffEstimate::Sampled => {
            let idx: Vec<usize> = (0..b).map(|_| 1 + rng.below(n)).collect();
            (discrete_kl(pipe, x, &idx, t_total, rng)? * n as f64)?
        }
        DiffEstimate::Exhaustive => {
            let mut acc = discrete_kl(pipe, x, &vec![1; b], t_total, rng)?;
            for i in 2..=n {
                acc = (acc + discrete_kl(pipe, x, &vec![i; b], t_total, rng)?)?;
            }
            acc
        }
    };
    Ok(NelboTerms {
        l_prior: prior_term(pipe, x, rng)?,
        l_diff,
        l_rec: rec_term(pipe, x, rng)?,
    })
}
