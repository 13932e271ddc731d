//! Noise schedules: `alpha_t`, `sigma_t` and their time derivatives (`docs/math.md`, "Conventions").

use crate::rng::host_tensor;
use candle_core::{DType, Device, Result, Tensor};

/// The schedule at one time, in `f64`: everything the formulas of `docs/math.md` need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedulePoint {
    /// `alpha_t`.
    pub alpha: f64,
    /// `sigma_t > 0`.
    pub sigma: f64,
    /// `lambda_t = log(alpha^2 / sigma^2)`.
    pub log_snr: f64,
    /// `r(t) = d log(alpha_t) / dt` (`-inf` where `alpha_t = 0`).
    pub dlog_alpha: f64,
    /// `d alpha_t / dt`, finite also where `alpha_t = 0` (flow matching's `t = 1`), where
    /// `alpha * dlog_alpha` is not a number.
    pub dalpha: f64,
    /// `d(sigma_t^2) / dt`.
    pub dsigma2: f64,
}

/// A `[B]` tensor of per-example values reshaped to `[B, 1, .., 1]` (`rank` dimensions in all), to
/// broadcast against a batch of rank `rank`.
pub fn per_example(v: &Tensor, rank: usize) -> candle_core::Result<Tensor> {
    let mut shape = vec![v.dim(0)?];
    shape.extend(std::iter::repeat_n(1, rank.saturating_sub(1)));
    v.reshape(shape)
}

impl SchedulePoint {
    /// The forward process at this time, `z = alpha F + sigma eps`, given `F(x, t)` and `eps`.
    pub fn noised(&self, fx: &Tensor, eps: &Tensor) -> candle_core::Result<Tensor> {
        (fx * self.alpha)? + (eps * self.sigma)?
    }

    /// `[alpha, sigma, log_snr, dlog_alpha, dalpha, dsigma2]`, the order of [`ScheduleBatch`]'s
    /// fields.
    pub fn fields(&self) -> [f64; 6] {
        [
            self.alpha,
            self.sigma,
            self.log_snr,
            self.dlog_alpha,
            self.dalpha,
            self.dsigma2,
        ]
    }

    /// Builds a point from `alpha`, `sigma` and their derivatives `dalpha`, `dsigma`.
    pub fn from_derivatives(alpha: f64, sigma: f64, dalpha: f64, dsigma: f64) -> Self {
        SchedulePoint {
            alpha,
            sigma,
            log_snr: 2.0 * (alpha.ln() - sigma.ln()),
            dlog_alpha: dalpha / alpha,
            dalpha,
            dsigma2: 2.0 * sigma * dsigma,
        }
    }
    /// `d lambda / dt = 2 r - dsigma2 / sigma^2` (negative for a valid schedule).
    pub fn dlog_snr(&self) -> f64 {
        2.0 * self.dlog_alpha - self.dsigma2 / (self.sigma * self.sigma)
    }
    /// `d SNR / dt = SNR * d lambda / dt`.
    pub fn dsnr(&self) -> f64 {
        self.log_snr.exp() * self.dlog_snr()
    }
}

/// The schedule at a batch of times: every field is a tensor of shape `[B]`.
#[derive(Debug, Clone)]
pub struct ScheduleBatch {
    pub alpha: Tensor,
    pub sigma: Tensor,
    pub log_snr: Tensor,
    pub dlog_alpha: Tensor,
    pub dalpha: Tensor,
    pub dsigma2: Tensor,
}

impl ScheduleBatch {
    /// `n` copies of one point: six numbers copied to the device, spread there.
    pub fn constant(p: &SchedulePoint, n: usize, like: &Tensor) -> Result<Self> {
        let all = host_tensor(p.fields().to_vec(), &[6, 1], like.dtype(), like.device())?
            .broadcast_as((6, n))?
            .contiguous()?;
        Self::from_rows(&all)
    }

    /// `d lambda / dt = 2 r - dsigma2 / sigma^2` per example ([`SchedulePoint::dlog_snr`] as a
    /// tensor; `-dlog_snr sigma^2` is the diffusion's `g^2`).
    pub fn dlog_snr(&self) -> Result<Tensor> {
        (&self.dlog_alpha * 2.0)? - (&self.dsigma2 / self.sigma.sqr()?)?
    }

    /// The six rows of a `[6, n]` tensor, as views.
    fn from_rows(all: &Tensor) -> Result<Self> {
        Ok(ScheduleBatch {
            alpha: all.get(0)?,
            sigma: all.get(1)?,
            log_snr: all.get(2)?,
            dlog_alpha: all.get(3)?,
            dalpha: all.get(4)?,
            dsigma2: all.get(5)?,
        })
    }

    /// Builds the batch from host points (for schedules without trainable weights).
    pub fn from_points(points: &[SchedulePoint], like: &Tensor) -> Result<Self> {
        let n = points.len();
        let rows: Vec<[f64; 6]> = points.iter().map(SchedulePoint::fields).collect();
        let host: Vec<f64> = (0..6)
            .flat_map(|c| rows.iter().map(move |r| r[c]))
            .collect();
        // One copy to the device for all six columns (rows of a [6, n] tensor).
        Self::from_rows(&host_tensor(host, &[6, n], like.dtype(), like.device())?)
    }
}

/// A batch of times (shape `[B]`) known on the host: the values, and the tensor of the model's
/// dtype and device that the networks see. Whoever draws or fixes times builds one, so that the
/// schedule's coefficients ([`NoiseSchedule::batch_at`]) come from the host values and nothing
/// reads times back from a device (a round trip that stalls a GPU).
#[derive(Debug, Clone)]
pub struct Times {
    values: Vec<f64>,
    tensor: Tensor,
}

impl Times {
    /// Times from host values: one copy to the device.
    pub fn new(values: Vec<f64>, dtype: DType, device: &Device) -> Result<Self> {
        let n = values.len();
        let tensor = host_tensor(values.clone(), &[n], dtype, device)?;
        Ok(Times { values, tensor })
    }

    /// `n` copies of one time: a fill on the device, no copy.
    pub fn constant(t: f64, n: usize, dtype: DType, device: &Device) -> Result<Self> {
        Ok(Times {
            values: vec![t; n],
            tensor: Tensor::full(t, n, device)?.to_dtype(dtype)?,
        })
    }

    /// Times known only as a tensor: reads them back (a round trip off the CPU), for callers
    /// outside the hot paths (tests, one-off evaluations).
    pub fn read(t: &Tensor) -> Result<Self> {
        Ok(Times {
            values: t.to_dtype(DType::F64)?.to_vec1()?,
            tensor: t.clone(),
        })
    }

    pub fn values(&self) -> &[f64] {
        &self.values
    }

    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The time every example shares, if they do.
    pub fn shared(&self) -> Option<f64> {
        let first = *self.values.first()?;
        self.values.iter().all(|&v| v == first).then_some(first)
    }
}

/// A noise schedule on `t in [0, 1]` (0 = data side, 1 = noise side).
///
/// Contract: `sigma_t > 0` on all of `[0, 1]` (so the NELBO's first KL and the reconstruction term
/// are finite), `alpha_t > 0` before the prior's time and `lambda_t` strictly decreasing. `alpha_t`
/// may reach 0 at `t = 1` (flow matching): there `lambda = -inf` and `dlog_alpha = -inf`, and every
/// formula of the pipeline uses `dalpha` instead, which stays finite. Fixed schedules (vp-linear,
/// cosine, ve, sub-vp, fm-ot) implement only [`NoiseSchedule::point`], in `f64`, where
/// precision matters near the ends; the batch form [`NoiseSchedule::batch`] is derived from it. A
/// schedule with trainable weights (`vdm`: a learned monotone `gamma`, `alpha^2 = sigmoid(-gamma)`, `sigma^2 = sigmoid(gamma)`) takes a
/// `VarBuilder` under the prefix `schedule.` when it is built, overrides `batch` with tensor ops so that
/// gradients reach its weights, and answers `point` by evaluating the same weights on the host.
pub trait NoiseSchedule: Send + Sync + std::fmt::Debug {
    /// The schedule at one time, in `f64`.
    fn point(&self, t: f64) -> SchedulePoint;

    /// The schedule at a batch of times `t` (shape `[B]`), as tensors of `t`'s dtype and device.
    /// The default reads `t` back to evaluate [`NoiseSchedule::point`]; the hot paths call
    /// [`NoiseSchedule::batch_at`], which knows the times on the host.
    fn batch(&self, t: &Tensor) -> Result<ScheduleBatch> {
        let ts: Vec<f64> = t.to_dtype(DType::F64)?.to_vec1()?;
        let points: Vec<SchedulePoint> = ts.iter().map(|&t| self.point(t)).collect();
        ScheduleBatch::from_points(&points, t)
    }

    /// The schedule at times known on the host, with no read from the device: from
    /// [`NoiseSchedule::point`] on the host (one evaluation when every example shares its time),
    /// or, for a schedule with trainable weights, [`NoiseSchedule::batch`] on the times' tensor
    /// so that gradients reach the weights. A trainable schedule overrides `batch` only.
    fn batch_at(&self, t: &Times) -> Result<ScheduleBatch> {
        if self.is_trainable() {
            return self.batch(t.tensor());
        }
        match t.shared() {
            Some(v) => ScheduleBatch::constant(&self.point(v), t.len(), t.tensor()),
            None => {
                let points: Vec<SchedulePoint> =
                    t.values().iter().map(|&v| self.point(v)).collect();
                ScheduleBatch::from_points(&points, t.tensor())
            }
        }
    }

    /// Evaluates [`NoiseSchedule::point`] ahead at the times a solve will ask for (sampling passes
    /// its grid), kept until [`NoiseSchedule::forget_points`]: a schedule whose `point` reads
    /// trainable weights back from the device (VDM) then reads once per solve instead of once per
    /// call. The default keeps nothing; `point` must give the same values either way.
    fn prefetch_points(&self, _ts: &[f64]) {}

    /// Drops what [`NoiseSchedule::prefetch_points`] kept (the weights may change afterwards).
    fn forget_points(&self) {}

    /// The lowest time of the process, where sampling stops and likelihoods start: 0 unless the
    /// schedule has no noise there (rectified flow's `sigma_0 = 0`), where `sigma_t > 0` must hold
    /// from this time on.
    fn t_min(&self) -> f64 {
        0.0
    }

    /// Whether the schedule owns trainable weights.
    fn is_trainable(&self) -> bool {
        false
    }

    /// The full names of the weights that train on the variance of the diffusion loss's estimate
    /// instead of on the loss (VDM's interior of `gamma`: in continuous time `L_diff` depends on
    /// the schedule only through its end points, in expectation). A NELBO objective then returns
    /// [`crate::LossOutput::variance`] and the trainer takes these weights' gradients from it.
    fn variance_trained_vars(&self) -> Vec<String> {
        Vec::new()
    }

    /// The discrete `beta_i = 1 - alpha_{t_i}^2 / alpha_{t_{i-1}}^2` at `t_i = i / n` (i = 1..=n),
    /// the quantity discrete-time VP solvers (reverse-diffusion predictor, Langevin step size) use.
    fn discrete_betas(&self, n: usize) -> Vec<f64> {
        (1..=n)
            .map(|i| {
                let a = self.point(i as f64 / n as f64).alpha;
                let b = self.point((i - 1) as f64 / n as f64).alpha;
                1.0 - (a * a) / (b * b)
            })
            .collect()
    }
}
