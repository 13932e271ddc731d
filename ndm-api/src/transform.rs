//! Data transformations `F(x, t)` (`docs/math.md`, "Conventions").

use candle_core::{Result, Tensor};

/// The time step of the central difference in [`central_difference_dt`]: about the cube root of f32's
/// epsilon (1.2e-7)^(1/3) ~ 5e-3 balances truncation error O(h^2) against round-off O(eps/h) for f32;
/// in f64 a smaller step would do, but one step for every dtype keeps results comparable.
pub const FD_STEP: f64 = 5e-3;

/// `dF/dt` by finite differences in `t` with step [`FD_STEP`]: the central difference
/// `(F(t + h) - F(t - h)) / 2h` where `[t - h, t + h]` lies inside `[0, 1]`; otherwise the derivative
/// at `t` of the quadratic through `F` at `lo, lo + h, lo + 2h` (`lo` clamped into `[0, 1 - 2h]`),
/// which is second order too and never evaluates `F` outside its domain. This is the one place
/// ndm differentiates in time numerically.
///
/// Choosing between the two reads `t` on the CPU. Off the CPU that read would stall the device,
/// so there the quadratic serves every example: in the interior it is the same central difference
/// (its middle weight is zero), at the cost of a third evaluation of `F`.
pub fn central_difference_dt<F>(f: F, t: &Tensor) -> Result<Tensor>
where
    F: Fn(&Tensor) -> Result<Tensor>,
{
    difference_dt(f, t, t.device().is_cpu())
}

/// [`central_difference_dt`], told whether it may read `t`.
fn difference_dt<F>(f: F, t: &Tensor, read_t: bool) -> Result<Tensor>
where
    F: Fn(&Tensor) -> Result<Tensor>,
{
    let h = FD_STEP;
    let interior = read_t && {
        let ts: Vec<f64> = t.to_dtype(candle_core::DType::F64)?.to_vec1()?;
        ts.iter().all(|&v| v - h >= 0.0 && v + h <= 1.0)
    };
    if interior {
        let diff = (f(&t.affine(1.0, h)?)? - f(&t.affine(1.0, -h)?)?)?;
        return diff.affine(1.0 / (2.0 * h), 0.0);
    }
    let lo = t.affine(1.0, -h)?.clamp(0.0, 1.0 - 2.0 * h)?;
    let (fa, fb, fc) = (
        f(&lo)?,
        f(&lo.affine(1.0, h)?)?,
        f(&lo.affine(1.0, 2.0 * h)?)?,
    );
    // u = (t - lo) / h in [0, 2]; d/dt of the Lagrange quadratic at u.
    let u = crate::schedule::per_example(&((t - &lo)? / h)?, fa.rank())?;
    let ca = (u.affine(2.0, -3.0)? / (2.0 * h))?;
    let cb = (u.affine(-2.0, 2.0)? / h)?;
    let cc = (u.affine(2.0, -1.0)? / (2.0 * h))?;
    (fa.broadcast_mul(&ca)? + fb.broadcast_mul(&cb)?)? + fc.broadcast_mul(&cc)?
}

/// A VAE's encoder `q(z | x) = N(mean, diag(std^2))` and decoder `p(x | z)` (LSGM): the
/// diffusion models draws of `q`, and the NELBO adds `E_q[-log p(x | z)] - H(q(z | x))`
/// (`docs/math.md`, "LSGM").
pub trait Encoder: Send + Sync + std::fmt::Debug {
    /// `(mean, log_std)` of `q(z | x)`, both of the latent shape.
    fn posterior(&self, x: &Tensor) -> Result<(Tensor, Tensor)>;
    /// `-log p(x | z)` per example (shape `[B]`). `decoder` is the model's
    /// ([`crate::spec::Decoder`]): a density of continuous (or dequantized) `x` for `Gaussian`,
    /// a probability of 8-bit values (256 cells of `[-1, 1]`) for `Discretized`; the family within
    /// each is the encoder's own.
    fn decoder_nll(&self, x: &Tensor, z: &Tensor, decoder: crate::spec::Decoder) -> Result<Tensor>;
}

/// A transform that is diagonal in a fixed orthonormal basis `V`: `F(x, t) = V diag(d_t) V^T x`
/// with gains `0 < d_{t,k} <= 1` (the blur of blurring diffusion, in the 2-D DCT basis).
///
/// In that basis the forward process is a VP-like process per component,
/// `(V^T z_t)_k = alpha_t d_{t,k} (V^T x)_k + sigma_t (V^T eps)_k`, so every parameterization can
/// act per component with `alpha_k = alpha_t d_{t,k}` and predict `x` itself. Noise prediction then
/// gives `xhat = F^{-1}((z - sigma epshat) / alpha)` (Hoogeboom & Salimans 2023), v-prediction
/// `v_k = alpha_k eps_k - sigma x_k` per frequency. NDM's rule for a learned `F`, feeding the
/// estimate of `F(x, t)` to `F` as `xhat`, would blur it twice and leave the blurred-away part of
/// `xhat` untrained (`docs/decisions.md`, "Blurring diffusion on MNIST").
pub trait Diagonal: Send + Sync {
    /// `V^T x`: the components in the basis.
    fn analyze(&self, x: &Tensor) -> Result<Tensor>;
    /// `V y`: the tensor with components `y`.
    fn synthesize(&self, y: &Tensor) -> Result<Tensor>;
    /// `d_t` and `d d_t / dt` per example (`t`: `[B]`), shaped to broadcast against `analyze(x)`.
    fn gains(&self, t: &Tensor) -> Result<(Tensor, Tensor)>;
}

/// A transformation `F(x, t)` of data `x` (shape `[B, ..D]`) into the latent space (shape `[B, ..L]`).
///
/// How the special cases fit (`docs/math.md`, "Special cases"):
/// - identity (DDPM, DDIM, VDM, flow matching): `F = x`, [`Transform::is_identity`] is true, `dF/dt = 0`.
/// - blur (`transform.blur`): `F = V D_t V^T x`, fixed, with an analytic `time_derivative` and its
///   [`Diagonal`] form.
/// - learned (NDM): a backbone network with weights under the prefix `transform.`; `is_trainable` is
///   true, so objectives that would let it collapse refuse it.
/// - VAE (LSGM, `transform.vae`): an [`Encoder`] in front of the diffusion. The pipeline draws
///   `z_0 ~ q(z_0 | x)` once per example and runs the whole diffusion on it, so `F` acts on
///   latents (the identity there), [`Transform::latent_shape`] differs from the data shape, and
///   [`Transform::decode`] is the decoder's mean.
/// - Glow flow (`transform.glow`, INDM-style): time independent and invertible; its
///   [`Transform::forward_log_det`] makes `L_rec` a decoder in `F`'s space plus the change of variables.
///
/// The pipeline also applies `F` to the model's prediction `xhat` (NDM's reverse process), so `F`
/// must accept any tensor of the data shape, not only data points.
pub trait Transform: Send + Sync + std::fmt::Debug {
    /// `F(x, t)` with `t` of shape `[B]`.
    fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor>;

    /// `dF/dt (x, t)`; the default is [`central_difference_dt`] over [`Transform::forward`].
    fn time_derivative(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.time_derivative_with(x, t, None)
    }

    /// `F(x, t | class)` for a transform that can be class-conditional (`class`: `u32` `[B]`, see
    /// [`crate::NetInput::class`]); the default ignores the class, which is right for every
    /// transform that does not learn one.
    fn forward_with(&self, x: &Tensor, t: &Tensor, _class: Option<&Tensor>) -> Result<Tensor> {
        self.forward(x, t)
    }

    /// `dF/dt (x, t | class)`: zero for a time-independent transform, else
    /// [`central_difference_dt`] over [`Transform::forward_with`].
    fn time_derivative_with(
        &self,
        x: &Tensor,
        t: &Tensor,
        class: Option<&Tensor>,
    ) -> Result<Tensor> {
        if self.is_time_independent() {
            return x.zeros_like();
        }
        central_difference_dt(|tt| self.forward_with(x, tt, class), t)
    }

    /// `F(x, t | class)` and `dF/dt (x, t | class)` together: a transform that gets both from one
    /// pass (forward mode through a network) overrides it; the default calls
    /// [`Transform::forward_with`] and [`Transform::time_derivative_with`].
    fn forward_and_time_derivative_with(
        &self,
        x: &Tensor,
        t: &Tensor,
        class: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        Ok((
            self.forward_with(x, t, class)?,
            self.time_derivative_with(x, t, class)?,
        ))
    }

    /// The latent shape (without batch) for a data shape (without batch).
    fn latent_shape(&self, data_shape: &[usize]) -> Vec<usize> {
        data_shape.to_vec()
    }

    /// For a transform diagonal in a fixed orthonormal basis, `F(x, t) = V diag(d_t) V^T x`, that
    /// form; `None` (the default) otherwise. With it the pipeline applies the parameterization
    /// per basis component, with `alpha_k = alpha d_{t,k}` (see [`Diagonal`]).
    fn diagonal(&self) -> Option<&dyn Diagonal> {
        None
    }

    /// True when `F(x, t) = x` exactly, which lets the pipeline skip work.
    fn is_identity(&self) -> bool {
        false
    }

    /// True when `F(x, t)` does not depend on `t` (the identity, a VAE, a Glow flow): `dF/dt = 0`
    /// without evaluating `F`.
    fn is_time_independent(&self) -> bool {
        self.is_identity()
    }

    /// True when `F(x, 0) = x` exactly, which makes the probability-flow ODE's density at `t = 0`
    /// a likelihood of `x` itself (see `ndm_api::likelihood`).
    fn identity_at_zero(&self) -> bool {
        self.is_identity()
    }

    /// True when `F` owns trainable weights.
    fn is_trainable(&self) -> bool {
        false
    }

    /// For transforms with a decoder (VAE, flow): the data for a latent `z_0`. `None` means the
    /// latent space is the data space and the pipeline's own decoder mean is used.
    fn decode(&self, _z0: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// For a transform with a stochastic encoder in front of the diffusion (LSGM's VAE): that
    /// encoder. The pipeline then encodes the data once per evaluation and calls [`Transform::forward`]
    /// with latents; `None` (the default) for every other transform.
    fn encoder(&self) -> Option<&dyn Encoder> {
        None
    }

    /// For an invertible, time-independent `F`: `(F(x), log|det dF/dx|)` per example (the second
    /// of shape `[B]`), from one pass. The NELBO's `L_rec` then scores `F(x)` with the Gaussian
    /// decoder in `F`'s space, around `F(xhat_0)`, and adds this change of variables, so it is a
    /// density of `x` (INDM-style). `None` (the default) for every other transform.
    fn forward_log_det(&self, _x: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
        Ok(None)
    }

    /// For transforms with a decoder: `-log p(x | z_0)` per example (shape `[B]`), including any
    /// encoder entropy or log-det term the model's NELBO needs. `None` means the pipeline's default
    /// Gaussian decoder (`docs/math.md`, "NELBO") is used.
    fn reconstruction_nll(&self, _x: &Tensor, _z0: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn gap(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .and_then(|d| d.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>())
            .unwrap()
    }

    /// The quadratic that serves off the CPU gives the central difference in the interior and the
    /// one-sided quadratic at the ends, so both paths agree with the exact derivative.
    #[test]
    fn the_quadratic_without_reading_t_agrees_with_the_central_difference() {
        let dev = Device::Cpu;
        let x = Tensor::new(
            &[[0.5f64, -1.5], [2.0, 0.25], [1.0, 1.0], [-0.75, 3.0]],
            &dev,
        )
        .unwrap();
        // F(x, t) = x sin(3 t) + t^2, dF/dt = 3 x cos(3 t) + 2 t.
        let f = |t: &Tensor| -> Result<Tensor> {
            let tt = t.reshape((4, 1))?;
            x.broadcast_mul(&(&tt * 3.0)?.sin()?)?
                .broadcast_add(&tt.sqr()?)
        };
        for ts in [[0.2f64, 0.4, 0.6, 0.8], [0.0, 0.001, 0.999, 1.0]] {
            let t = Tensor::new(&ts, &dev).unwrap();
            let read = difference_dt(f, &t, true).unwrap();
            let quad = difference_dt(f, &t, false).unwrap();
            let tt = t.reshape((4, 1)).unwrap();
            let exact =
                (|| (x.broadcast_mul(&(&tt * 3.0)?.cos()?)? * 3.0)?.broadcast_add(&(&tt * 2.0)?))()
                    .unwrap();
            // Second order in h = 5e-3: errors of order h^2 max|F'''| ~ 25e-6 * 81 (F''' of x sin 3t).
            assert!(gap(&quad, &exact) < 1e-2, "{ts:?}: {}", gap(&quad, &exact));
            assert!(gap(&read, &exact) < 1e-2, "{ts:?}: {}", gap(&read, &exact));
            if ts[0] > 0.1 {
                // Interior: the same central difference up to rounding.
                assert!(gap(&quad, &read) < 1e-9, "{ts:?}: {}", gap(&quad, &read));
            } else {
                assert!(
                    gap(&quad, &read) == 0.0,
                    "{ts:?}: both use the quadratic at the ends"
                );
            }
        }
    }
}
