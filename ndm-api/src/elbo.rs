//! The negative ELBO of `docs/math.md` ("NELBO", "Continuous-time loss"), shared by the objectives and the evaluator:
//! `NELBO = L_prior + L_diff + L_rec`, every term per example (shape `[B]`, nats).

use crate::pipeline::{posterior_coeffs, Pipeline};
use crate::rng::{host_tensor, Rng};
use crate::spec::Decoder;
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
    /// Batch means of each term and the total, named for logs (scalar tensors, read by the
    /// caller: [`crate::objective::read_terms`]).
    pub fn means(&self) -> Result<Vec<(String, Tensor)>> {
        let m = |t: &Tensor| t.mean_all();
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

/// Standard normal noise for `b` latents.
pub fn latent_noise(pipe: &Pipeline, b: usize, rng: &mut Rng) -> Result<Tensor> {
    let mut shape = vec![b];
    shape.extend(&pipe.latent_shape);
    rng.normal_tensor(&shape, pipe.dtype, &pipe.device)
}

/// A `[B]` tensor from host values, in the pipeline's dtype and device.
fn col(pipe: &Pipeline, v: Vec<f64>) -> Result<Tensor> {
    let n = v.len();
    host_tensor(v, &[n], pipe.dtype, &pipe.device)
}

/// `ln(2 pi) / 2`, the normal density's log normaliser per dimension.
pub const HALF_LN_2PI: f64 = 0.918_938_533_204_672_8;

/// `-log N(x; mean, s^2 I)` per example for a scalar width `s`.
pub fn gaussian_nll(x: &Tensor, mean: &Tensor, s: f64) -> Result<Tensor> {
    let d = (x.elem_count() / x.dim(0)?) as f64;
    sum_sq(&((x - mean)? / s)?)?.affine(0.5, d * (s.ln() + HALF_LN_2PI))
}

/// The entropy of a diagonal Gaussian in `dims` dimensions from the per-example sum of its log
/// standard deviations: `sum log std + dims (1 + ln(2 pi)) / 2`.
pub fn gaussian_entropy(sum_log_std: &Tensor, dims: f64) -> Result<Tensor> {
    sum_log_std.affine(1.0, dims * (0.5 + HALF_LN_2PI))
}

/// One reparameterized draw `z = mean + std eps` of an encoder's `q(z | x)`: `(mean, log_std, z)`.
pub fn posterior_draw(
    enc: &dyn crate::Encoder,
    x: &Tensor,
    rng: &mut Rng,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (mean, log_std) = enc.posterior(x)?;
    let z = (&mean + noise_like(&mean, rng)?.mul(&log_std.exp()?)?)?;
    Ok((mean, log_std, z))
}

/// The data the diffusion models: `x` itself, or for a transform with an [`crate::Encoder`]
/// (LSGM's VAE) one draw `z_0 = mean + std eps` of `q(z_0 | x)` per example, with the encoder's
/// terms `E_q[-log p(x | z_0)] - H(q(z_0 | x))` per example (one draw for the first, the entropy
/// `sum(log std) + D/2 ln(2 pi e)` in closed form). Every NELBO term after it sees the same draw.
pub fn encode(pipe: &Pipeline, x: &Tensor, rng: &mut Rng) -> Result<(Tensor, Option<Tensor>)> {
    let Some(enc) = pipe.transform.encoder() else {
        return Ok((x.clone(), None));
    };
    let (mean, log_std, z) = posterior_draw(enc, x, rng)?;
    let d = (mean.elem_count() / mean.dim(0)?) as f64;
    let entropy = gaussian_entropy(&log_std.flatten_from(1)?.sum(1)?, d)?;
    let terms = (enc.decoder_nll(x, &z, pipe.spec.decoder)? - entropy)?;
    Ok((z, Some(terms)))
}

fn with_encoder_terms(l_rec: Tensor, l_enc: Option<Tensor>) -> Result<Tensor> {
    match l_enc {
        Some(e) => l_rec + e,
        None => Ok(l_rec),
    }
}

/// One draw `z ~ q(z_end | x)` at the prior's time, with its mean and its std (shape `[B]`):
/// `(mean, std, z)`.
pub fn end_latent(pipe: &Pipeline, x: &Tensor, rng: &mut Rng) -> Result<(Tensor, Tensor, Tensor)> {
    let n = x.dim(0)?;
    let t_end = pipe.t_end();
    let tt = pipe.times(t_end, n)?;
    let fx = pipe.f(x, tt.tensor())?;
    if pipe.schedule.is_trainable() {
        // A learned schedule (VDM) trains its end point gamma_1 through L_prior: tensors.
        let sb = pipe.schedule.batch_at(&tt)?;
        let c = pipe.coeffs(&sb)?;
        let mean = fx.broadcast_mul(&c.alpha)?;
        let z = (&mean + noise_like(&mean, rng)?.broadcast_mul(&c.sigma)?)?;
        return Ok((mean, sb.sigma, z));
    }
    let p = pipe.schedule.point(t_end);
    let mean = (fx * p.alpha)?;
    let z = (&mean + (noise_like(&mean, rng)? * p.sigma)?)?;
    let std = pipe.time_tensor(p.sigma, n)?;
    Ok((mean, std, z))
}

/// `L_prior = KL(q(z_end | x) || p(z_end))` at the prior's time.
pub fn prior_term(pipe: &Pipeline, x: &Tensor, rng: &mut Rng) -> Result<Tensor> {
    let (mean, std, z) = end_latent(pipe, x, rng)?;
    pipe.prior.prior_loss(&mean, &std, &z)
}

/// `L_rec = -log p(x | z_0)`, `z_0 ~ q(z_0 | x)`: the transform's decoder where it has one, else a
/// Gaussian decoder `N(x; xhat(z_0, 0), (sigma_0 / alpha_0)^2 I)` around the model's prediction.
/// "0" is the process's lowest time, [`Pipeline::t_min`] (0 except for rectified flow).
pub fn rec_term(pipe: &Pipeline, x: &Tensor, rng: &mut Rng) -> Result<Tensor> {
    let n = x.dim(0)?;
    let t_min = pipe.t_min();
    let times0 = pipe.times(t_min, n)?;
    let t0 = times0.tensor();
    let p = pipe.schedule.point(t_min);
    // An invertible F gives F(x) and its log-det in one pass.
    let (f0, log_det) = match pipe.transform.forward_log_det(x)? {
        Some((f0, log_det)) => (f0, Some(log_det)),
        // F(x, 0) = x exactly (NDM's learned F): no pass through F's network.
        None if t_min == 0.0 && pipe.transform.identity_at_zero() => (x.clone(), None),
        None => (pipe.f(x, t0)?, None),
    };
    let eps = noise_like(&f0, rng)?;
    let z0 = p.noised(&f0, &eps)?;
    if let Some(nll) = pipe.transform.reconstruction_nll(x, &z0)? {
        return Ok(nll);
    }
    let sb = pipe.schedule.batch_at(&times0)?;
    if let Some(log_det) = log_det {
        // An invertible F (INDM-style): p(x | z_0) = N(F(x); F(xhat_0), s^2 I) |det dF/dx|.
        if pipe.spec.decoder != Decoder::Gaussian {
            candle_core::bail!(
                "transform {} scores x through its change of variables and needs the gaussian \
                 decoder (dequantized data), not {:?}",
                pipe.spec.transform.kind,
                pipe.spec.decoder
            );
        }
        let xhat0 = pipe.xhat(&z0, t0, &sb)?;
        let fhat0 = pipe.f(&xhat0, t0)?;
        return gaussian_nll(&f0, &fhat0, p.sigma / p.alpha)? - log_det;
    }
    if pipe.schedule.is_trainable() && pipe.spec.decoder == Decoder::Gaussian {
        // A learned schedule (VDM) trains its end point gamma_0 through this term: z_0 and the
        // decoder's width sigma_0 / alpha_0 as tensors.
        let c = pipe.coeffs(&sb)?;
        let z0 = c.noised(&f0, &eps)?;
        let xhat0 = pipe.xhat(&z0, t0, &sb)?;
        let s = (&sb.sigma / &sb.alpha)?;
        let d = (x.elem_count() / n) as f64;
        let sq = sum_sq(&(x - xhat0)?.broadcast_div(&pipe.per_example(&s)?)?)?;
        let log_norm = ((s.log()? + HALF_LN_2PI)? * d)?;
        return (sq * 0.5)? + log_norm;
    }
    let xhat0 = pipe.xhat(&z0, t0, &sb)?;
    let s = p.sigma / p.alpha;
    // Behind an encoder the diffusion's data are continuous latents: always the Gaussian decoder.
    let decoder = match pipe.transform.encoder() {
        Some(_) => Decoder::Gaussian,
        None => pipe.spec.decoder,
    };
    match decoder {
        Decoder::Gaussian => gaussian_nll(x, &xhat0, s),
        Decoder::Discretized => discretized_nll(x, &xhat0, s, 256),
    }
}

/// `-log P(x)` per example of values `x` at the centres of `levels` equal cells of `[-1, 1]` under
/// `N(mean, s^2)` per dimension: the Gaussian's mass on each value's cell, the first and last
/// cells open to -inf and +inf.
pub fn discretized_nll(x: &Tensor, mean: &Tensor, s: f64, levels: u32) -> Result<Tensor> {
    let half = 1.0 / levels as f64;
    let cdf = |v: &Tensor| -> Result<Tensor> {
        // Phi(v) = (1 + erf(v / sqrt 2)) / 2
        ((v - mean)? / (s * std::f64::consts::SQRT_2))?
            .erf()?
            .affine(0.5, 0.5)
    };
    let upper = cdf(&x.affine(1.0, half)?)?;
    let lower = cdf(&x.affine(1.0, -half)?)?;
    // End cells: P(v < upper) at the bottom, P(v > lower) at the top.
    let first = x.lt(-1.0 + 2.0 * half)?;
    let last = x.gt(1.0 - 2.0 * half)?;
    let upper = last.where_cond(&upper.ones_like()?, &upper)?;
    let lower = first.where_cond(&lower.zeros_like()?, &lower)?;
    let mass = (upper - lower)?.clamp(1e-12, 1.0)?;
    let n = x.dim(0)?;
    mass.log()?.reshape((n, ()))?.sum(1)?.neg()
}

/// `-log P(x)` per example of values `x` at the centres of `levels` equal cells of `[-1, 1]` under
/// a logistic per dimension with `mean` and `log_scale` (broadcast against `x`), the first and last
/// cells open to -inf and +inf: PixelCNN++'s discretized logistic with one component (Salimans et
/// al. 2017). Where a cell's mass is below 1e-5 (a mean far away, or a tiny scale), the log of the
/// density at the centre times the cell's width stands in for it, so that gradients do not vanish.
pub fn discretized_logistic_nll(
    x: &Tensor,
    mean: &Tensor,
    log_scale: &Tensor,
    levels: u32,
) -> Result<Tensor> {
    let half = 1.0 / levels as f64;
    let inv = log_scale.neg()?.exp()?;
    let c = x.broadcast_sub(mean)?.broadcast_mul(&inv)?;
    let h = (inv * half)?;
    let (plus, minus) = (c.broadcast_add(&h)?, c.broadcast_sub(&h)?);
    // softplus(u) = max(u, 0) + ln(1 + e^-|u|)
    let softplus =
        |u: &Tensor| -> Result<Tensor> { u.relu()? + (u.abs()?.neg()?.exp()? + 1.0)?.log()? };
    let log_cdf_plus = softplus(&plus.neg()?)?.neg()?;
    let log_sf_minus = softplus(&minus)?.neg()?;
    let delta = (candle_nn::ops::sigmoid(&plus)? - candle_nn::ops::sigmoid(&minus)?)?;
    let log_mid = ((c.broadcast_sub(log_scale)? - (softplus(&c)? * 2.0)?)? + (2.0 * half).ln())?;
    let interior = delta
        .gt(1e-5)?
        .where_cond(&delta.clamp(1e-12, 1.0)?.log()?, &log_mid)?;
    let first = x.lt(-1.0 + 2.0 * half)?;
    let last = x.gt(1.0 - 2.0 * half)?;
    let log_p = first.where_cond(&log_cdf_plus, &last.where_cond(&log_sf_minus, &interior)?)?;
    let n = x.dim(0)?;
    log_p.reshape((n, ()))?.sum(1)?.neg()
}

/// The discrete KL term `KL_{t_i}` (`docs/math.md`, "NELBO", `eta = 1`) for per-example grid indices
/// `idx[b]` in `1..=n` on a grid of `t_total` steps (`t_i = i / t_total`, `s = t_{i-1}`), with
/// `z_t = alpha_t F(x, t) + sigma_t eps` for the given noise `eps` (shaped like `F(x, t)`).
pub fn discrete_kl(
    pipe: &Pipeline,
    x: &Tensor,
    idx: &[usize],
    t_total: usize,
    eps: &Tensor,
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
    let (times, s) = (pipe.times_from(ts)?, col(pipe, ss)?);
    let t = times.tensor();
    let fx_t = pipe.f(x, t)?;
    let z = (fx_t.broadcast_mul(&bc(a_t)?)? + eps.broadcast_mul(&bc(s_t)?)?)?;
    let sb = pipe.schedule.batch_at(&times)?;
    let xhat = pipe.xhat(&z, t, &sb)?;
    let (a_s, k_at) = (bc(a_s)?, bc(k)?);
    let diff = if pipe.transform.is_identity() {
        (&x.broadcast_mul(&(&a_s - &k_at)?)? - xhat.broadcast_mul(&(&a_s - &k_at)?)?)?
    } else {
        let ds = (pipe.f(x, &s)? - pipe.f(&xhat, &s)?)?;
        let dt = (fx_t - pipe.f(&xhat, t)?)?;
        (ds.broadcast_mul(&a_s)? - dt.broadcast_mul(&k_at)?)?
    };
    sum_sq(&diff)? * col(pipe, inv2var)?
}

/// How the discrete `L_diff = sum_i KL_{t_i}` is estimated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffEstimate {
    /// One uniformly drawn `i` per example, times the number of steps (training).
    Sampled,
    /// Every `i`, summed (evaluation; `n` network evaluations per example; detached, no gradients).
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
    let (latent, l_enc) = encode(pipe, x, rng)?;
    let x = &latent;
    let b = x.dim(0)?;
    let n = crate::solver::grid_index(pipe.t_end(), t_total);
    let l_diff = match est {
        DiffEstimate::Sampled => {
            let idx: Vec<usize> = (0..b).map(|_| 1 + rng.below(n)).collect();
            let eps = latent_noise(pipe, b, rng)?;
            (discrete_kl(pipe, x, &idx, t_total, &eps)? * n as f64)?
        }
        DiffEstimate::Exhaustive => {
            let mut acc = discrete_kl(pipe, x, &vec![1; b], t_total, &latent_noise(pipe, b, rng)?)?;
            for i in 2..=n {
                let eps = latent_noise(pipe, b, rng)?;
                // Evaluation only: detach so the sum does not keep T autograd graphs alive.
                acc = (acc.detach() + discrete_kl(pipe, x, &vec![i; b], t_total, &eps)?.detach())?;
            }
            acc
        }
    };
    Ok(NelboTerms {
        l_prior: prior_term(pipe, x, rng)?,
        l_diff,
        l_rec: with_encoder_terms(rec_term(pipe, x, rng)?, l_enc)?,
    })
}

/// The continuous-time diffusion loss (`docs/math.md`, "Continuous-time loss") per example, before weighting:
/// `||alpha (Fdot(x,t) - Fdot(xhat,t)) - c/2 (s(x,z,t) - s(xhat,z,t))||^2 / g^2` with `eta = 1`
/// (so `c/2 = g^2` and `c/2 (s(x) - s(xhat)) = -lambda' alpha (F(x,t) - F(xhat,t))`), at times `t`
/// (`[B]`) and noise `eps`. Schedule quantities stay tensors, so a learned schedule gets gradients.
/// `L_diff = 1/2 E_t[...]`; the caller applies the `1/2` and the sampling weight `1/p(t)`.
pub fn continuous_diff_integrand(
    pipe: &Pipeline,
    x: &Tensor,
    times: &crate::Times,
    eps: &Tensor,
) -> Result<Tensor> {
    let sb = pipe.schedule.batch_at(times)?;
    let t = times.tensor();
    let s2 = sb.sigma.sqr()?;
    // lambda' = 2 r - dsigma2 / sigma^2; g^2 = -lambda' sigma^2.
    let dlambda = sb.dlog_snr()?;
    let g2 = (dlambda.neg()? * &s2)?;
    let (fx, dfx) = pipe.f_and_dot(x, t)?;
    let c = pipe.coeffs(&sb)?;
    let z = c.noised(&fx, eps)?;
    let xhat = pipe.xhat(&z, t, &sb)?;
    let lam_alpha = pipe.per_example(&(&dlambda * &sb.alpha)?)?;
    // With a time-independent F (the identity: F(xhat) = xhat) the dF/dt terms are zero.
    let (fh, dfh) = pipe.f_and_dot(&xhat, t)?;
    let mut diff = (fx - fh)?.broadcast_mul(&lam_alpha)?;
    if let (Some(dfx), Some(dfh)) = (dfx, dfh) {
        diff = ((dfx - dfh)?.broadcast_mul(&c.alpha)? + diff)?;
    }
    sum_sq(&diff)? / g2
}

/// How training times are drawn in continuous time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TimeSampling {
    /// `t ~ U[t_min, t_end]`, weight `t_end - t_min`.
    Uniform,
    /// `p(t)` proportional to `1 / g^2(t)` (NDM sec. 3.2), weight `1 / p(t)`.
    #[default]
    Importance,
    /// Uniform times spread evenly over the batch (VDM's low-discrepancy sampler): one `u ~ U[0, 1)`
    /// per batch and `t_i = t_min + (t_end - t_min) ((u + i / B) mod 1)`; each `t_i` is uniform, so
    /// the estimate stays unbiased, with less variance across batches.
    Antithetic,
}

/// A piecewise-constant density on `[t_min, t_end]` proportional to `1 / g^2(t)` at cell midpoints.
/// Sampling is exact for this density and the weight is `1 / p(t)`, so the estimate is unbiased
/// whatever the resolution; the resolution only controls how close `p` is to `1 / g^2`.
#[derive(Debug, Clone)]
pub struct ImportanceTable {
    t_min: f64,
    t_end: f64,
    /// Cumulative mass at cell edges, `cdf[0] = 0`, `cdf[m] = 1`.
    cdf: Vec<f64>,
}

impl ImportanceTable {
    pub fn new(pipe: &Pipeline, cells: usize) -> Self {
        Self::defensive(pipe, cells, 0.0)
    }

    /// The density `(1 - uniform) p_{1/g^2} + uniform / (t_end - t_min)`: a defensive mixture
    /// whose weights `1 / p(t)` never exceed `(t_end - t_min) / uniform`, so the estimate's
    /// variance stays within `1 / uniform` times the uniform sampler's wherever `1 / g^2` is a poor
    /// guide to the integrand (VE and sub-VP, whose estimates under pure `1 / g^2` sampling are
    /// heavy-tailed). Evaluation uses `uniform = 0.5`.
    pub fn defensive(pipe: &Pipeline, cells: usize, uniform: f64) -> Self {
        let (t_min, t_end) = (pipe.t_min(), pipe.t_end());
        let h = (t_end - t_min) / cells as f64;
        let mids: Vec<f64> = (0..cells).map(|j| t_min + (j as f64 + 0.5) * h).collect();
        let w: Vec<f64> = match Self::learned_weights(pipe, &mids) {
            Some(w) => w,
            None => mids
                .iter()
                .map(|&t| {
                    let p = pipe.schedule.point(t);
                    1.0 / ((-p.dlog_snr()) * p.sigma * p.sigma)
                })
                .collect(),
        };
        let total: f64 = w.iter().sum();
        let mut cdf = Vec::with_capacity(cells + 1);
        cdf.push(0.0);
        let mut acc = 0.0;
        for wj in &w {
            acc += (1.0 - uniform) * wj / total + uniform / cells as f64;
            cdf.push(acc);
        }
        if let Some(last) = cdf.last_mut() {
            *last = 1.0;
        }
        ImportanceTable { t_min, t_end, cdf }
    }

    /// A learned schedule's `1 / g^2` at the cell midpoints from its batch form on the device, in
    /// one read (its `point` would read its weights back at every midpoint). `None` for a fixed
    /// schedule, whose `f64` points are exact, or if the batch form fails (then `point` answers).
    fn learned_weights(pipe: &Pipeline, mids: &[f64]) -> Option<Vec<f64>> {
        if !pipe.schedule.is_trainable() {
            return None;
        }
        let w = (|| -> Result<Vec<f64>> {
            let sb = pipe.schedule.batch_at(&pipe.times_from(mids.to_vec())?)?;
            // 1 / g^2 with g^2 = -lambda' sigma^2, as for a fixed schedule's points below.
            let g2 = (sb.dlog_snr()?.neg()? * sb.sigma.sqr()?)?;
            g2.detach()
                .recip()?
                .to_dtype(candle_core::DType::F64)?
                .to_vec1()
        })();
        w.ok()
    }

    /// The time at quantile `u` in `[0, 1)` and its weight `1 / p(t)`.
    pub fn quantile(&self, u: f64) -> (f64, f64) {
        let m = self.cdf.len() - 1;
        let j = self.cdf.partition_point(|&c| c <= u).clamp(1, m) - 1;
        let mass = self.cdf[j + 1] - self.cdf[j];
        let h = (self.t_end - self.t_min) / m as f64;
        let frac = if mass > 0.0 {
            (u - self.cdf[j]) / mass
        } else {
            0.5
        };
        (self.t_min + (j as f64 + frac.clamp(0.0, 1.0)) * h, h / mass)
    }
}

/// Draws times and their weights `1 / p(t)`: `quantiles` in `[0, 1)` mapped by the sampling rule.
pub fn times_and_weights(
    pipe: &Pipeline,
    rule: TimeSampling,
    table: Option<&ImportanceTable>,
    quantiles: &[f64],
) -> Result<(crate::Times, Tensor)> {
    let (t_min, t_end) = (pipe.t_min(), pipe.t_end());
    let span = t_end - t_min;
    let (ts, ws): (Vec<f64>, Vec<f64>) = match (rule, table) {
        (TimeSampling::Importance, Some(tab)) => quantiles.iter().map(|&u| tab.quantile(u)).unzip(),
        _ => quantiles.iter().map(|&u| (t_min + span * u, span)).unzip(),
    };
    Ok((pipe.times_from(ts)?, col(pipe, ws)?))
}

/// The continuous-time `L_diff` per example, averaged over `k` stratified times per example
/// (with `k > 1` the result is detached: an evaluation estimate, not a training loss).
pub fn continuous_diff(
    pipe: &Pipeline,
    x: &Tensor,
    rule: TimeSampling,
    table: Option<&ImportanceTable>,
    k: usize,
    rng: &mut Rng,
) -> Result<Tensor> {
    let b = x.dim(0)?;
    let k = k.max(1);
    let mut acc: Option<Tensor> = None;
    for j in 0..k {
        let q: Vec<f64> = match rule {
            TimeSampling::Antithetic => {
                let u = rng.uniform();
                (0..b)
                    .map(|i| (j as f64 + (u + i as f64 / b as f64).fract()) / k as f64)
                    .collect()
            }
            _ => (0..b)
                .map(|_| (j as f64 + rng.uniform()) / k as f64)
                .collect(),
        };
        let (t, w) = times_and_weights(pipe, rule, table, &q)?;
        let eps = latent_noise(pipe, b, rng)?;
        let mut term = (continuous_diff_integrand(pipe, x, &t, &eps)? * w)?;
        if k > 1 {
            // Several times per example are for evaluation: no gradients, no graphs kept alive.
            term = term.detach();
        }
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    match acc {
        Some(a) => a * (0.5 / k as f64),
        None => candle_core::bail!("no time samples"),
    }
}

/// Which examples of a batch evaluate the boundary terms `L_prior` and `L_rec`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BoundaryTerms {
    /// Every example: the NELBO of each example, exactly as written.
    Every,
    /// `m = ceil(share B)` examples drawn without replacement (`0 < share < 1`): their terms
    /// times `B / m`, zero for the others. Each example's expected term is its own, so the batch
    /// mean stays unbiased; it costs `L_rec`'s denoiser pass and `L_prior`'s pass through `F` on
    /// `m` examples instead of `B`, for more variance in those two terms.
    Share(f64),
}

/// The continuous-time NELBO: `L_prior + L_diff + L_rec` with `k` stratified times per example,
/// the boundary terms on the examples `boundary` says.
pub fn continuous_nelbo(
    pipe: &Pipeline,
    x: &Tensor,
    rule: TimeSampling,
    table: Option<&ImportanceTable>,
    k: usize,
    boundary: BoundaryTerms,
    rng: &mut Rng,
) -> Result<NelboTerms> {
    let (latent, l_enc) = encode(pipe, x, rng)?;
    let x = &latent;
    let b = x.dim(0)?;
    let rows = match boundary {
        BoundaryTerms::Share(share) if share > 0.0 && share < 1.0 => {
            let m = ((share * b as f64).ceil() as usize).clamp(1, b);
            (m < b).then(|| draw_rows(b, m, rng))
        }
        _ => None,
    };
    let Some(rows) = rows else {
        return Ok(NelboTerms {
            l_prior: prior_term(pipe, x, rng)?,
            l_diff: continuous_diff(pipe, x, rule, table, k, rng)?,
            l_rec: with_encoder_terms(rec_term(pipe, x, rng)?, l_enc)?,
        });
    };
    let m = rows.len();
    let idx = Tensor::from_vec(rows, m, x.device())?;
    let (l_prior, l_rec) = {
        let xs = x.index_select(&idx, 0)?;
        let _rows = pipe.condition_rows(&idx)?;
        (prior_term(pipe, &xs, rng)?, rec_term(pipe, &xs, rng)?)
    };
    let spread = |sub: Tensor| -> Result<Tensor> {
        let sub = (sub * (b as f64 / m as f64))?;
        Tensor::zeros(b, sub.dtype(), sub.device())?.index_add(&idx, &sub, 0)
    };
    Ok(NelboTerms {
        l_prior: spread(l_prior)?,
        l_diff: continuous_diff(pipe, x, rule, table, k, rng)?,
        l_rec: with_encoder_terms(spread(l_rec)?, l_enc)?,
    })
}

/// `m` distinct indices of `0..n` drawn uniformly (a partial Fisher-Yates shuffle), ascending.
fn draw_rows(n: usize, m: usize, rng: &mut Rng) -> Vec<u32> {
    let mut all: Vec<u32> = (0..n as u32).collect();
    for i in 0..m {
        let j = i + rng.below(n - i);
        all.swap(i, j);
    }
    let mut rows = all[..m].to_vec();
    rows.sort_unstable();
    rows
}

#[cfg(test)]
mod decoder_tests {
    use super::{discretized_logistic_nll, discretized_nll};
    use candle_core::{DType, Device, Tensor};

    fn col(v: &[f64]) -> Tensor {
        Tensor::from_vec(v.to_vec(), (v.len(), 1), &Device::Cpu).unwrap()
    }

    /// The discretized decoder's masses over the 256 cells add up to 1 for any mean and width,
    /// and a narrow Gaussian on a cell's centre puts (almost) all its mass there.
    #[test]
    fn discretized_masses_sum_to_one() {
        let centres: Vec<f64> = (0..256).map(|p| (p as f64 + 0.5) / 128.0 - 1.0).collect();
        let x = col(&centres);
        for (mean, s) in [(0.0, 0.01), (0.93, 0.05), (-1.4, 0.3), (0.2, 2.0)] {
            let m = Tensor::full(mean, (256, 1), &Device::Cpu).unwrap();
            let nll: Vec<f64> = discretized_nll(&x, &m, s, 256)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1()
                .unwrap();
            let total: f64 = nll.iter().map(|v| (-v).exp()).sum();
            assert!(
                (total - 1.0).abs() < 1e-9,
                "mean {mean}, s {s}: total {total}"
            );
        }
        let at = col(&[centres[77]]);
        let nll = discretized_nll(&at, &at, 1e-4, 256).unwrap();
        let v: Vec<f64> = nll.to_vec1().unwrap();
        assert!(v[0].abs() < 1e-9, "{v:?}");
    }

    /// The same for the discretized logistic, in f32 as the VAE runs it: its masses add up to 1
    /// (to the fallback's accuracy in the far tails) and a narrow logistic on a cell's centre puts
    /// nearly all its mass there; its NLL is finite and its gradient nonzero however far the mean.
    #[test]
    fn discretized_logistic_masses_sum_to_one() {
        let centres: Vec<f64> = (0..256).map(|p| (p as f64 + 0.5) / 128.0 - 1.0).collect();
        let x = col(&centres).to_dtype(DType::F32).unwrap();
        for (mean, s) in [
            (0.0f64, 0.01f64),
            (0.93, 0.05),
            (-1.4, 0.3),
            (0.2, 2.0),
            (0.5, 0.001),
        ] {
            let m = Tensor::full(mean as f32, (256, 1), &Device::Cpu).unwrap();
            let ls = Tensor::full(s.ln() as f32, (1, 1), &Device::Cpu).unwrap();
            let nll: Vec<f32> = discretized_logistic_nll(&x, &m, &ls, 256)
                .unwrap()
                .to_vec1()
                .unwrap();
            let total: f64 = nll.iter().map(|v| (-*v as f64).exp()).sum();
            assert!(
                (total - 1.0).abs() < 1e-4,
                "mean {mean}, s {s}: total {total}"
            );
        }
        let at = col(&[centres[77]]).to_dtype(DType::F32).unwrap();
        let ls = Tensor::full((1e-4f32).ln(), (1, 1), &Device::Cpu).unwrap();
        let v: Vec<f32> = discretized_logistic_nll(&at, &at, &ls, 256)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(v[0].abs() < 1e-4, "{v:?}");
        // A mean 30 scales away from an interior value: finite NLL, a gradient pulling it closer.
        let mean =
            candle_core::Var::from_tensor(&col(&[0.3]).to_dtype(DType::F32).unwrap()).unwrap();
        let ls = Tensor::full((0.01f32).ln(), (1, 1), &Device::Cpu).unwrap();
        let nll = discretized_logistic_nll(&at, mean.as_tensor(), &ls, 256).unwrap();
        let v: Vec<f32> = nll.to_vec1().unwrap();
        assert!(v[0].is_finite() && v[0] > 20.0, "{v:?}");
        let g = nll.sum_all().unwrap().backward().unwrap();
        let gm: Vec<f32> = g
            .get(&mean)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            gm[0] > 1.0,
            "d nll / d mean = {gm:?} should push the mean down"
        );
    }
}
