//! Conformance checks a plugin crate calls from its own tests (the built-ins use them too):
//! `ndm_api::testing::check_schedule(&my_schedule)?`. Each returns `Err` with a sentence naming the
//! first property that fails. They compute on the test device ([`device`], `$NDM_TEST_DEVICE`).

use crate::param::Coeffs;
use crate::{NoiseSchedule, Parameterization, Rng, Transform};
use candle_core::{DType, Device, Tensor};

type Check = std::result::Result<(), String>;

/// The environment variable that names the device the tests run on: `cpu` (the default, also when
/// it is unset or empty) or `cuda:N`, parsed like the runner's `--device` ([`crate::device`]).
pub const TEST_DEVICE_ENV: &str = "NDM_TEST_DEVICE";

/// The device of `$NDM_TEST_DEVICE`, opened once per test process (every test gets the same one,
/// so their tensors can meet), or the one-line reason it cannot be used.
pub fn device() -> std::result::Result<&'static Device, String> {
    static DEVICE: std::sync::OnceLock<std::result::Result<Device, String>> =
        std::sync::OnceLock::new();
    DEVICE
        .get_or_init(|| {
            let name = std::env::var(TEST_DEVICE_ENV).unwrap_or_default();
            if name.is_empty() {
                return Ok(Device::Cpu);
            }
            crate::device::open(&name).map_err(|e| format!("{TEST_DEVICE_ENV}={name}: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// [`device`] for a test: a device that cannot be used fails the test with its one-line reason,
/// reported at the test's line.
#[track_caller]
pub fn test_device() -> &'static Device {
    match device() {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    }
}

fn ensure(ok: bool, msg: impl FnOnce() -> String) -> Check {
    if ok {
        Ok(())
    } else {
        Err(msg())
    }
}

/// A schedule: positive finite `alpha` and `sigma` on `[0, 1]` (`alpha_1 = 0` allowed, with
/// `log_snr = -inf` there), strictly decreasing log-SNR,
/// `log_snr` consistent with `alpha` and `sigma`, derivatives that match central differences, and a
/// batch form that agrees with the scalar one.
pub fn check_schedule(s: &dyn NoiseSchedule) -> Check {
    let n = 200;
    let mut prev = f64::INFINITY;
    // From the schedule's lowest time (0 except where sigma_0 = 0, as in rectified flow).
    let t_min = s.t_min();
    ensure((0.0..0.5).contains(&t_min), || {
        format!("t_min = {t_min} is outside [0, 0.5)")
    })?;
    for i in 0..=n {
        let t = t_min + (1.0 - t_min) * i as f64 / n as f64;
        let p = s.point(t);
        // Flow matching's end: alpha_1 = 0, so lambda and d log alpha / dt are -inf there.
        let open_end = i == n && p.alpha == 0.0;
        let finite = if open_end {
            [p.sigma, p.dalpha, p.dsigma2].iter().all(|v| v.is_finite())
                && p.log_snr == f64::NEG_INFINITY
        } else {
            p.fields().iter().all(|v| v.is_finite())
        };
        ensure(finite, || format!("non-finite value at t = {t}: {p:?}"))?;
        ensure((p.alpha > 0.0 || open_end) && p.sigma > 0.0, || {
            format!(
                "alpha and sigma must be positive at t = {t} (alpha may be 0 at t = 1 only): {p:?}"
            )
        })?;
        if open_end {
            ensure(p.log_snr < prev, || {
                format!("log-SNR is not strictly decreasing at t = {t}")
            })?;
            break;
        }
        ensure(
            (p.dalpha - p.alpha * p.dlog_alpha).abs() <= 1e-9 * (1.0 + p.dalpha.abs()),
            || format!("dalpha is not alpha * dlog_alpha at t = {t}: {p:?}"),
        )?;
        let lambda = 2.0 * (p.alpha.ln() - p.sigma.ln());
        ensure(
            (lambda - p.log_snr).abs() < 1e-8 * (1.0 + lambda.abs()),
            || {
                format!(
                    "log_snr {} is not log(alpha^2 / sigma^2) = {lambda} at t = {t}",
                    p.log_snr
                )
            },
        )?;
        ensure(p.log_snr < prev, || {
            format!("log-SNR is not strictly decreasing at t = {t}")
        })?;
        ensure(p.dlog_snr() < 0.0, || {
            format!(
                "d log-SNR / dt = {} is not negative at t = {t}",
                p.dlog_snr()
            )
        })?;
        prev = p.log_snr;
        // Interior points, away from grid kinks of discrete schedules.
        if i > 0 && i < n {
            let tm = t + 0.3 * (1.0 - t_min) / n as f64;
            let h = 1e-6;
            let (q, a, b) = (s.point(tm), s.point(tm - h), s.point(tm + h));
            let dla = (b.alpha.ln() - a.alpha.ln()) / (2.0 * h);
            let ds2 = (b.sigma.powi(2) - a.sigma.powi(2)) / (2.0 * h);
            let close = |x: f64, y: f64| (x - y).abs() <= 1e-4 * (1.0 + y.abs());
            ensure(close(q.dlog_alpha, dla), || {
                format!(
                    "d log alpha / dt = {} but finite differences give {dla} at t = {tm}",
                    q.dlog_alpha
                )
            })?;
            let da = (b.alpha - a.alpha) / (2.0 * h);
            ensure(close(q.dalpha, da), || {
                format!(
                    "d alpha / dt = {} but finite differences give {da} at t = {tm}",
                    q.dalpha
                )
            })?;
            ensure(close(q.dsigma2, ds2), || {
                format!(
                    "d sigma^2 / dt = {} but finite differences give {ds2} at t = {tm}",
                    q.dsigma2
                )
            })?;
        }
    }
    let ts = [0.0, 0.31, 0.77, 1.0];
    let t = Tensor::new(&ts, device()?)
        .map_err(|e| e.to_string())?
        .to_dtype(DType::F32)
        .map_err(|e| e.to_string())?;
    let b = s.batch(&t).map_err(|e| format!("batch form failed: {e}"))?;
    let alpha: Vec<f32> = b.alpha.to_vec1().map_err(|e| e.to_string())?;
    ensure(b.alpha.dims() == [4] && b.sigma.dims() == [4], || {
        "batch form must return [B] tensors".into()
    })?;
    for (k, &tk) in ts.iter().enumerate() {
        let p = s.point(tk);
        ensure((alpha[k] as f64 - p.alpha).abs() < 1e-5, || {
            format!(
                "batch alpha {} differs from point alpha {} at t = {tk}",
                alpha[k], p.alpha
            )
        })?;
    }
    // The form the hot paths use, from times known on the host: per-example and shared times.
    let per_example = crate::Times::read(&t).map_err(|e| e.to_string())?;
    let shared =
        crate::Times::constant(0.31, 3, DType::F32, device()?).map_err(|e| e.to_string())?;
    for (times, what) in [(per_example, "per-example"), (shared, "shared")] {
        let b = s
            .batch_at(&times)
            .map_err(|e| format!("batch_at ({what} times) failed: {e}"))?;
        let read = |v: &Tensor| v.to_vec1::<f32>().map_err(|e| e.to_string());
        let (alpha, sigma) = (read(&b.alpha)?, read(&b.sigma)?);
        ensure(
            alpha.len() == times.len() && sigma.len() == times.len(),
            || format!("batch_at ({what} times) must return [B] tensors"),
        )?;
        for (k, &tk) in times.values().iter().enumerate() {
            let p = s.point(tk);
            let gap = (alpha[k] as f64 - p.alpha).abs() + (sigma[k] as f64 - p.sigma).abs();
            ensure(gap < 1e-5, || {
                format!(
                    "batch_at ({what} times) gives alpha {}, sigma {} where the point gives {}, {} at t = {tk}",
                    alpha[k], sigma[k], p.alpha, p.sigma
                )
            })?;
        }
    }
    Ok(())
}

/// The largest absolute entry of a tensor.
fn max_abs(t: &Tensor) -> candle_core::Result<f64> {
    t.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()
}

/// Runs a check whose tensor errors are failures too.
fn run_check(check: impl FnOnce() -> candle_core::Result<Check>) -> Check {
    check().unwrap_or_else(|e| Err(format!("tensor error: {e}")))
}

/// A parameterization: `predict_x(raw_from_x(x)) = x` and `predict_x(target(x, eps)) = x` for
/// `z = alpha x + sigma eps`, over a range of noise levels, with shapes preserved.
pub fn check_parameterization(p: &dyn Parameterization) -> Check {
    run_check(|| {
        let dev = match device() {
            Ok(d) => d.clone(),
            Err(e) => return Ok(Err(e)),
        };
        let mut rng = Rng::new(17);
        let (b, d) = (5, 3);
        let x = rng.normal_tensor(&[b, d], DType::F32, &dev)?;
        let eps = rng.normal_tensor(&[b, d], DType::F32, &dev)?;
        let theta: Vec<f64> = (0..b)
            .map(|i| 0.05 + 1.45 * i as f64 / (b - 1) as f64)
            .collect();
        let col = |f: fn(f64) -> f64| {
            crate::rng::host_tensor(
                theta.iter().map(|&t| f(t)).collect(),
                &[b, 1],
                DType::F32,
                &dev,
            )
        };
        let c = Coeffs {
            alpha: col(f64::cos)?,
            sigma: col(f64::sin)?,
            dalpha: col(|t| -t.sin())?,
            dsigma: col(f64::cos)?,
        };
        let z = c.noised(&x, &eps)?;
        let raw = p.raw_from_x(&x, &z, &c)?;
        if raw.dims() != x.dims() {
            return Ok(Err(format!(
                "raw_from_x changed the shape to {:?}",
                raw.dims()
            )));
        }
        let e1 = max_abs(&(p.predict_x(&raw, &z, &c)? - &x)?)?;
        let e2 = max_abs(&(p.predict_x(&p.target(&x, &eps, &c)?, &z, &c)? - &x)?)?;
        Ok(ensure(e1 < 1e-3, || {
            format!("predict_x(raw_from_x(x)) is off by {e1}")
        })
        .and_then(|_| {
            ensure(e2 < 1e-3, || {
                format!("predict_x(target(x, eps)) is off by {e2}")
            })
        }))
    })
}

/// A transform: keeps the batch dimension, gives the declared latent shape, finite values, and a
/// time derivative that matches a central difference of `forward` at interior times.
pub fn check_transform(tf: &dyn Transform, data_shape: &[usize]) -> Check {
    run_check(|| {
        let dev = match device() {
            Ok(d) => d.clone(),
            Err(e) => return Ok(Err(e)),
        };
        let b = 3;
        let mut shape = vec![b];
        shape.extend(data_shape);
        let x = Rng::new(5).normal_tensor(&shape, DType::F32, &dev)?;
        let t = Tensor::new(&[0.2f32, 0.5, 0.8], &dev)?;
        let y = tf.forward(&x, &t)?;
        let mut latent = vec![b];
        latent.extend(tf.latent_shape(data_shape));
        if y.dims() != latent.as_slice() {
            return Ok(Err(format!(
                "forward gave shape {:?}, latent_shape says {latent:?}",
                y.dims()
            )));
        }
        if !max_abs(&y)?.is_finite() {
            return Ok(Err("forward gave non-finite values".into()));
        }
        let d = tf.time_derivative(&x, &t)?;
        let h = 1e-2;
        let fd = ((tf.forward(&x, &t.affine(1.0, h)?)? - tf.forward(&x, &t.affine(1.0, -h)?)?)?
            / (2.0 * h))?;
        let (err, scale) = (max_abs(&(&d - &fd)?)?, max_abs(&fd)?);
        if err > 1e-2 * (1.0 + scale) {
            return Ok(Err(format!(
                "time_derivative differs from a central difference by {err}"
            )));
        }
        // A diagonal form must be one: V V^T x = x, F = V (d V^T x), dF/dt = V (d' V^T x).
        let Some(diag) = tf.diagonal() else {
            return Ok(Ok(()));
        };
        let (g, dg) = diag.gains(&t)?;
        let u = diag.analyze(&x)?;
        let tol = 1e-4 * (1.0 + max_abs(&x)?);
        for (what, got, want) in [
            ("synthesize(analyze(x))", diag.synthesize(&u)?, x.clone()),
            (
                "synthesize(d analyze(x))",
                diag.synthesize(&u.broadcast_mul(&g)?)?,
                y,
            ),
            (
                "synthesize(d' analyze(x))",
                diag.synthesize(&u.broadcast_mul(&dg)?)?,
                d,
            ),
        ] {
            let err = max_abs(&(got - want)?)?;
            if err > tol * (1.0 + scale) {
                return Ok(Err(format!(
                    "the diagonal form is off: {what} differs by {err}"
                )));
            }
        }
        Ok(Ok(()))
    })
}
