//! An adaptive Dormand-Prince 5(4) integrator (RK45) over a state of several tensors, shared by
//! the `rk45` solver (the probability-flow ODE) and the likelihood (the ODE augmented with the
//! log-density change).

use crate::{NdmError, Result};
use candle_core::{DType, Tensor};

/// Tolerances and limits of an adaptive solve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
    /// Give up after this many accepted and rejected steps together.
    pub max_steps: usize,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            rtol: 1e-5,
            atol: 1e-5,
            max_steps: 10_000,
        }
    }
}

/// What a solve cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OdeStats {
    pub accepted: usize,
    pub rejected: usize,
    /// Evaluations of the right-hand side.
    pub nfe: usize,
}

type State = Vec<Tensor>;

fn axpy(y: &State, terms: &[(f64, &State)]) -> Result<State> {
    let mut out = Vec::with_capacity(y.len());
    for (i, yi) in y.iter().enumerate() {
        let mut acc = yi.clone();
        for (c, k) in terms {
            if *c != 0.0 {
                acc = (acc + (&k[i] * *c)?)?;
            }
        }
        out.push(acc);
    }
    Ok(out)
}

// Dormand & Prince (1980) coefficients.
const C: [f64; 7] = [0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0];
const A: [[f64; 6]; 7] = [
    [0.0; 6],
    [1.0 / 5.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [3.0 / 40.0, 9.0 / 40.0, 0.0, 0.0, 0.0, 0.0],
    [44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0, 0.0, 0.0, 0.0],
    [
        19372.0 / 6561.0,
        -25360.0 / 2187.0,
        64448.0 / 6561.0,
        -212.0 / 729.0,
        0.0,
        0.0,
    ],
    [
        9017.0 / 3168.0,
        -355.0 / 33.0,
        46732.0 / 5247.0,
        49.0 / 176.0,
        -5103.0 / 18656.0,
        0.0,
    ],
    [
        35.0 / 384.0,
        0.0,
        500.0 / 1113.0,
        125.0 / 192.0,
        -2187.0 / 6784.0,
        11.0 / 84.0,
    ],
];
/// Fifth-order weights (equal to the last row of `A`: first same as last).
const B5: [f64; 7] = [
    35.0 / 384.0,
    0.0,
    500.0 / 1113.0,
    125.0 / 192.0,
    -2187.0 / 6784.0,
    11.0 / 84.0,
    0.0,
];
/// Fourth-order weights for the error estimate.
const B4: [f64; 7] = [
    5179.0 / 57600.0,
    0.0,
    7571.0 / 16695.0,
    393.0 / 640.0,
    -92097.0 / 339200.0,
    187.0 / 2100.0,
    1.0 / 40.0,
];

/// RMS over all entries of `err / (atol + rtol max(|y0|, |y1|))`.
fn error_norm(err: &State, y0: &State, y1: &State, tol: &Tolerance) -> Result<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    for i in 0..err.len() {
        let scale = (y0[i].abs()?.maximum(&y1[i].abs()?)? * tol.rtol)?.affine(1.0, tol.atol)?;
        let r = (&err[i] / scale)?
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        sum += r;
        n += err[i].elem_count();
    }
    Ok((sum / n.max(1) as f64).sqrt())
}

/// How an adaptive solve ended.
#[derive(Debug, Clone)]
pub enum Ending {
    /// It reached the end time: the state there.
    Reached(State),
    /// It used up [`Tolerance::max_steps`] (accepted and rejected) at time `t`, short of the end.
    StepLimit { t: f64 },
}

/// The one-line error for a solve that ran out of steps at `t` on its way to `t1`; `knob` names
/// the setting that raises the limit where the caller knows it (`solver.max_steps`).
pub fn step_limit_error(max_steps: usize, t: f64, t1: f64, knob: &str) -> NdmError {
    NdmError::Spec(format!(
        "rk45 reached its limit of {max_steps} steps at t = {t:.6} before t = {t1}; raise {knob} or loosen rtol/atol"
    ))
}

/// Integrates `dy/dt = f(t, y)` from `t0` to `t1` (either direction) with adaptive steps. Running
/// out of steps is an error ([`step_limit_error`]), distinct from a state that stops being finite
/// ([`NdmError::NonFinite`]).
pub fn dopri5(
    f: &mut dyn FnMut(f64, &State) -> Result<State>,
    y0: State,
    t0: f64,
    t1: f64,
    tol: &Tolerance,
) -> Result<(State, OdeStats)> {
    match dopri5_until(f, y0, t0, t1, tol)? {
        (Ending::Reached(y), stats) => Ok((y, stats)),
        (Ending::StepLimit { t }, _) => Err(step_limit_error(tol.max_steps, t, t1, "max_steps")),
    }
}

/// [`dopri5`], reporting a run out of steps as [`Ending::StepLimit`] rather than as an error, so
/// that the caller can name its own setting for the limit.
pub fn dopri5_until(
    f: &mut dyn FnMut(f64, &State) -> Result<State>,
    y0: State,
    t0: f64,
    t1: f64,
    tol: &Tolerance,
) -> Result<(Ending, OdeStats)> {
    let mut stats = OdeStats::default();
    let span = t1 - t0;
    if span == 0.0 {
        return Ok((Ending::Reached(y0), stats));
    }
    let dir = span.signum();
    let mut t = t0;
    let mut y = y0;
    let mut k1 = f(t, &y)?;
    stats.nfe += 1;
    let mut h = dir * (span.abs() * 0.01).max(1e-6);
    while (t1 - t) * dir > 0.0 {
        if stats.accepted + stats.rejected >= tol.max_steps {
            return Ok((Ending::StepLimit { t }, stats));
        }
        if (t + h - t1) * dir > 0.0 {
            h = t1 - t;
        }
        let mut k: Vec<State> = vec![k1.clone()];
        for stage in 1..7 {
            let terms: Vec<(f64, &State)> = (0..stage).map(|j| (h * A[stage][j], &k[j])).collect();
            let ys = axpy(&y, &terms)?;
            k.push(f(t + C[stage] * h, &ys)?);
            stats.nfe += 1;
        }
        let y5 = axpy(&y, &(0..7).map(|j| (h * B5[j], &k[j])).collect::<Vec<_>>())?;
        let err = axpy(
            &y.iter()
                .map(|v| v.zeros_like())
                .collect::<candle_core::Result<Vec<_>>>()?,
            &(0..7)
                .map(|j| (h * (B5[j] - B4[j]), &k[j]))
                .collect::<Vec<_>>(),
        )?;
        let e = error_norm(&err, &y, &y5, tol)?;
        if !e.is_finite() {
            return Err(NdmError::NonFinite(format!(
                "rk45: the state became non-finite at t = {t}"
            )));
        }
        if e <= 1.0 {
            t += h;
            y = y5;
            k1 = k.swap_remove(6);
            stats.accepted += 1;
        } else {
            stats.rejected += 1;
        }
        let factor = if e == 0.0 {
            5.0
        } else {
            (0.9 * e.powf(-0.2)).clamp(0.2, 5.0)
        };
        h *= factor;
    }
    Ok((Ending::Reached(y), stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn integrates_a_linear_ode_to_tolerance() {
        // dy/dt = A y with A = [[-1, 2], [-2, -1]]: y(t) = e^{-t} R(2t) y0 (a damped rotation).
        let y0 = Tensor::new(&[[1.0f64, 0.5]], &Device::Cpu).unwrap();
        let a = Tensor::new(&[[-1.0f64, -2.0], [2.0, -1.0]], &Device::Cpu).unwrap(); // y A^T as rows
        for (rtol, atol) in [(1e-4, 1e-6), (1e-8, 1e-10)] {
            let tol = Tolerance {
                rtol,
                atol,
                max_steps: 100_000,
            };
            let mut f = |_t: f64, y: &State| -> Result<State> { Ok(vec![y[0].matmul(&a)?]) };
            let (y, stats) = dopri5(&mut f, vec![y0.clone()], 0.0, 3.0, &tol).unwrap();
            let got: Vec<f64> = y[0].flatten_all().unwrap().to_vec1().unwrap();
            let (c, s, e) = ((6.0f64).cos(), (6.0f64).sin(), (-3.0f64).exp());
            let exact = [e * (c * 1.0 + s * 0.5), e * (-s * 1.0 + c * 0.5)];
            let err = ((got[0] - exact[0]).powi(2) + (got[1] - exact[1]).powi(2)).sqrt();
            assert!(err < 50.0 * rtol, "rtol {rtol}: error {err}, {stats:?}");
            assert_eq!(stats.nfe, 1 + 6 * (stats.accepted + stats.rejected));
        }
        // Backwards in time recovers the start.
        let tol = Tolerance {
            rtol: 1e-9,
            atol: 1e-12,
            max_steps: 100_000,
        };
        let mut f = |_t: f64, y: &State| -> Result<State> { Ok(vec![y[0].matmul(&a)?]) };
        let (y1, _) = dopri5(&mut f, vec![y0.clone()], 0.0, 1.0, &tol).unwrap();
        let (back, _) = dopri5(&mut f, y1, 1.0, 0.0, &tol).unwrap();
        let d: f64 = (&back[0] - &y0)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(d < 1e-7, "{d}");
    }

    #[test]
    fn the_step_limit_is_its_own_error() {
        let y0 = Tensor::new(&[[1.0f64, 0.5]], &Device::Cpu).unwrap();
        let a = Tensor::new(&[[-1.0f64, -2.0], [2.0, -1.0]], &Device::Cpu).unwrap();
        let mut f = |_t: f64, y: &State| -> Result<State> { Ok(vec![y[0].matmul(&a)?]) };
        let tol = Tolerance {
            rtol: 1e-10,
            atol: 1e-12,
            max_steps: 3,
        };
        let (end, stats) = dopri5_until(&mut f, vec![y0.clone()], 0.0, 3.0, &tol).unwrap();
        assert_eq!(stats.accepted + stats.rejected, 3);
        assert_eq!(stats.nfe, 1 + 6 * 3);
        let t = match end {
            Ending::StepLimit { t } => t,
            Ending::Reached(_) => panic!("3 steps at rtol 1e-10 cannot reach t = 3"),
        };
        assert!((0.0..3.0).contains(&t), "{t}");
        let e = dopri5(&mut f, vec![y0.clone()], 0.0, 3.0, &tol).unwrap_err();
        assert!(matches!(e, NdmError::Spec(_)), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.starts_with("rk45 reached its limit of 3 steps at t = ")
                && msg.contains("before t = 3;")
                && msg.ends_with("raise max_steps or loosen rtol/atol"),
            "{msg}"
        );
        assert!(!msg.contains("non-finite") && !msg.contains('\n'), "{msg}");
        // Enough steps: the same solve reaches the end.
        let tol = Tolerance {
            max_steps: 100_000,
            ..tol
        };
        assert!(dopri5(&mut f, vec![y0.clone()], 0.0, 3.0, &tol).is_ok());
    }

    #[test]
    fn a_non_finite_state_is_not_a_step_limit() {
        let y0 = Tensor::new(&[[1.0f64, 0.5]], &Device::Cpu).unwrap();
        let mut nan = |_t: f64, y: &State| -> Result<State> { Ok(vec![(&y[0] * f64::NAN)?]) };
        let e = dopri5(&mut nan, vec![y0], 0.0, 1.0, &Tolerance::default()).unwrap_err();
        assert!(matches!(e, NdmError::NonFinite(_)), "{e:?}");
        assert!(e.to_string().contains("non-finite"), "{e}");
        assert!(!e.to_string().contains("limit"), "{e}");
    }
}
