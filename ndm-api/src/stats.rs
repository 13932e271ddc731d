//! Summaries of per-example numbers: a mean with its standard error and its sample size, and the
//! conversion of nats per example to bits per dimension. Every reported estimate goes through
//! [`Estimate`], so the NELBO, the ODE NLL and the sample metrics agree on one formula.

use serde::Serialize;

/// A mean over `n` values with the standard error of that mean (`s / sqrt(n)`, with the unbiased
/// sample standard deviation `s`; 0 when `n < 2`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    pub mean: f64,
    pub stderr: f64,
    pub n: usize,
}

impl Estimate {
    /// The estimate of a set of values; `None` for an empty set.
    pub fn of(values: &[f64]) -> Option<Estimate> {
        if values.is_empty() {
            return None;
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let stderr = if values.len() < 2 {
            0.0
        } else {
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
            (var / n).sqrt()
        };
        Some(Estimate {
            mean,
            stderr,
            n: values.len(),
        })
    }

    /// Mean and standard error scaled by a constant (a unit change).
    pub fn scaled(&self, factor: f64) -> Estimate {
        Estimate {
            mean: self.mean * factor,
            stderr: self.stderr * factor.abs(),
            n: self.n,
        }
    }

    /// An estimate in nats per example as bits per dimension of `dims`-dimensional data.
    pub fn bits_per_dim(&self, dims: usize) -> Estimate {
        self.scaled(1.0 / (dims as f64 * std::f64::consts::LN_2))
    }

    /// Whether the mean and its error are finite.
    pub fn is_finite(&self) -> bool {
        self.mean.is_finite() && self.stderr.is_finite()
    }
}

impl std::fmt::Display for Estimate {
    /// `mean ± stderr` with four decimals (`{:.N}` picks another precision).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = f.precision().unwrap_or(4);
        write!(f, "{:.p$} ± {:.p$}", self.mean, self.stderr)
    }
}

/// The median of `v` (sorted in place): the middle value, or the mean of the two middle values
/// for an even count; NaN for none. What the benchmarks report.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Nats per example as bits per dimension.
pub fn bits_per_dim(nats: f64, dims: usize) -> f64 {
    nats / (dims as f64 * std::f64::consts::LN_2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_stderr_and_units() {
        let e = Estimate::of(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(e.n, 4);
        assert!((e.mean - 2.5).abs() < 1e-15);
        // s^2 = 5/3, stderr = sqrt(5/12)
        assert!((e.stderr - (5.0f64 / 12.0).sqrt()).abs() < 1e-15);
        let b = e.bits_per_dim(2);
        assert!((b.mean - 2.5 / (2.0 * std::f64::consts::LN_2)).abs() < 1e-15);
        assert!((b.mean - bits_per_dim(2.5, 2)).abs() < 1e-15);
        assert_eq!(format!("{:.1}", e), "2.5 ± 0.6");
        assert_eq!(Estimate::of(&[7.0]).unwrap().stderr, 0.0);
        assert!(Estimate::of(&[]).is_none());
    }
}
