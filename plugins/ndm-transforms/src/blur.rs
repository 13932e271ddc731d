//! `transform.blur`: heat dissipation in the 2-D DCT basis (blurring diffusion, Hoogeboom &
//! Salimans 2023), as a fixed `F(x, t)` of NDM's framework.
//!
//! `F(x, t) = V D_t V^T x` per channel, `V` the orthonormal 2-D DCT-II, `D_t` diagonal with
//! `d_{t,k} = (1 - d_min) exp(-lambda_k tau_t) + d_min`, `lambda_k = pi^2 (i^2 / H^2 + j^2 / W^2)`
//! for frequency `(i, j)`, `tau_t = sigma_B(t)^2 / 2`, `sigma_B(t) = sigma_B,max sin^2(pi t / 2)`.
//! `F(x, 0) = x` and `dF/dt = V Ddot_t V^T x` in closed form.
//!
//! The marginals `q(z_t | x) = N(alpha_t F(x, t), sigma_t^2 I)` are the paper's; the reverse
//! process is NDM's posterior (eq. 7-8) with this `F`, not the paper's per-frequency posterior.
//! The parameterization acts per frequency with `alpha_k = alpha_t d_{t,k}` ([`Diagonal`]): noise
//! prediction gives the paper's `xhat = F^{-1}((z - sigma epshat) / alpha)`, v-prediction a `v` per
//! frequency. `per_frequency = false` keeps NDM's rule for a learned `F` instead.

use ndm_api::candle_core::{DType, Device, Result, Tensor};
use ndm_api::registry::BuildCtx;
use ndm_api::{Diagonal, NdmError, Transform};
use serde::{Deserialize, Serialize};

/// `transform.blur` config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlurConfig {
    /// The largest blur `sigma_B,max` in pixels; unset, 20 on a 32-pixel side, scaled with the
    /// image's larger side (the paper's value for 32 x 32).
    pub sigma_blur_max: Option<f64>,
    /// The smallest kept fraction of any frequency.
    pub d_min: f64,
    /// Apply the parameterization per DCT frequency with `alpha_k = alpha d_{t,k}`, so that it
    /// predicts `x` itself (the default; for noise prediction the paper's rule). False feeds the
    /// estimate of `F(x, t)` to `F` as `xhat`, NDM's rule for a learned `F`, which leaves the
    /// blurred-away part of `xhat` untrained.
    pub per_frequency: bool,
}

impl Default for BlurConfig {
    fn default() -> Self {
        BlurConfig {
            sigma_blur_max: None,
            d_min: 0.001,
            per_frequency: true,
        }
    }
}

/// The orthonormal DCT-II matrix of size `n`: row `k` is frequency `k`, `C C^T = I`.
pub fn dct_matrix(n: usize) -> Vec<f64> {
    let mut m = Vec::with_capacity(n * n);
    for k in 0..n {
        let a = if k == 0 {
            (1.0 / n as f64).sqrt()
        } else {
            (2.0 / n as f64).sqrt()
        };
        for j in 0..n {
            m.push(a * (std::f64::consts::PI * (j as f64 + 0.5) * k as f64 / n as f64).cos());
        }
    }
    m
}

/// Heat dissipation on `[C, H, W]` images.
#[derive(Debug, Clone)]
pub struct Blur {
    sigma_max: f64,
    d_min: f64,
    per_frequency: bool,
    /// `lambda_k` on the `H x W` frequency grid, `[1, 1, H, W]`, in `f64` on the model's device.
    lambda: Tensor,
    /// DCT matrices `C_H` (`[H, H]`), `C_W^T` (`[W, W]`) and their transposes.
    ch: Tensor,
    ch_t: Tensor,
    cw: Tensor,
    cw_t: Tensor,
}

impl Blur {
    pub fn new(
        cfg: BlurConfig,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> ndm_api::Result<Self> {
        let &[_, h, w] = shape else {
            return Err(NdmError::invalid_param(format!(
                "blur acts on images [C, H, W]; this data has shape {shape:?} (use it with an image dataset)"
            )));
        };
        if h < 2 || w < 2 {
            return Err(NdmError::invalid_param(format!(
                "blur needs images at least 2 x 2, got {h} x {w}"
            )));
        }
        let sigma_max = cfg.sigma_blur_max.unwrap_or(20.0 * h.max(w) as f64 / 32.0);
        if !(sigma_max > 0.0 && sigma_max.is_finite()) {
            return Err(NdmError::invalid_param(format!(
                "sigma_blur_max must be positive, got {sigma_max}"
            )));
        }
        if !(cfg.d_min > 0.0 && cfg.d_min < 1.0) {
            return Err(NdmError::invalid_param(format!(
                "d_min must be in (0, 1), got {}",
                cfg.d_min
            )));
        }
        let pi2 = std::f64::consts::PI.powi(2);
        let lambda = (0..h)
            .flat_map(|i| {
                (0..w).map(move |j| {
                    pi2 * ((i * i) as f64 / (h * h) as f64 + (j * j) as f64 / (w * w) as f64)
                })
            })
            .collect::<Vec<f64>>();
        let lambda = Tensor::from_vec(lambda, (1, 1, h, w), device)?;
        let mat = |n: usize| -> Result<Tensor> {
            Tensor::from_vec(dct_matrix(n), (n, n), device)?.to_dtype(dtype)
        };
        let (ch, cw) = (mat(h)?, mat(w)?);
        Ok(Blur {
            sigma_max,
            d_min: cfg.d_min,
            per_frequency: cfg.per_frequency,
            lambda,
            ch_t: ch.t()?.contiguous()?,
            cw_t: cw.t()?.contiguous()?,
            ch,
            cw,
        })
    }

    /// The diagonals `D_t` and `Ddot_t` per example, each `[B, 1, H, W]`, with tensor ops in
    /// `f64` on `t`'s device (no read of `t`; one `exp` per entry serves both):
    /// `tau = sb^2 / 2`, `sb = sigma_max sin^2(pi t / 2)`, `dtau = sb sigma_max (pi / 2) sin(pi t)`.
    fn gain_grids(&self, t: &Tensor) -> Result<(Tensor, Tensor)> {
        let (pi, half) = (std::f64::consts::PI, std::f64::consts::FRAC_PI_2);
        let dtype = t.dtype();
        let t = t.to_dtype(DType::F64)?.reshape(((), 1, 1, 1))?;
        let sb = ((&t * half)?.sin()?.sqr()? * self.sigma_max)?;
        let tau = (sb.sqr()? * 0.5)?;
        let dtau = (&sb * (&t * pi)?.sin()?)?.affine(self.sigma_max * half, 0.0)?;
        let e = (self.lambda.broadcast_mul(&tau)?.neg()?.exp()? * (1.0 - self.d_min))?;
        let d = (&e + self.d_min)?;
        let dd = self.lambda.broadcast_mul(&dtau)?.neg()?.mul(&e)?;
        Ok((d.to_dtype(dtype)?, dd.to_dtype(dtype)?))
    }

    /// `V^T x`: the 2-D DCT of each channel, `C_H x C_W^T`.
    pub fn dct(&self, x: &Tensor) -> Result<Tensor> {
        self.ch.broadcast_matmul(&x.broadcast_matmul(&self.cw_t)?)
    }

    /// `V y`: the inverse 2-D DCT, `C_H^T y C_W`.
    pub fn idct(&self, y: &Tensor) -> Result<Tensor> {
        self.ch_t.broadcast_matmul(&y.broadcast_matmul(&self.cw)?)
    }

    fn apply(&self, x: &Tensor, t: &Tensor, derivative: bool) -> Result<Tensor> {
        let (d, dd) = self.gain_grids(t)?;
        let gain = if derivative { dd } else { d };
        self.idct(&self.dct(x)?.broadcast_mul(&gain)?)
    }
}

impl Diagonal for Blur {
    fn analyze(&self, x: &Tensor) -> Result<Tensor> {
        self.dct(x)
    }
    fn synthesize(&self, y: &Tensor) -> Result<Tensor> {
        self.idct(y)
    }
    fn gains(&self, t: &Tensor) -> Result<(Tensor, Tensor)> {
        self.gain_grids(t)
    }
}

impl Transform for Blur {
    fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.apply(x, t, false)
    }
    fn time_derivative_with(
        &self,
        x: &Tensor,
        t: &Tensor,
        _class: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.apply(x, t, true)
    }
    fn diagonal(&self) -> Option<&dyn Diagonal> {
        self.per_frequency.then_some(self as &dyn Diagonal)
    }
    fn identity_at_zero(&self) -> bool {
        true
    }
}

ndm_api::register_plugin!(
    Transform,
    "blur",
    "blurring diffusion: heat dissipation in the 2-D DCT basis per channel, F(x, 0) = x, closed-form dF/dt (images only)",
    BlurConfig,
    |cfg: BlurConfig, ctx: &BuildCtx| Ok(Box::new(Blur::new(cfg, ctx.shape, ctx.dtype, ctx.device)?))
);
