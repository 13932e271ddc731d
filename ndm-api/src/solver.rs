//! Solvers and their time grids. A solver sees only [`ReverseProcess`]: it never knows which
//! transform, schedule or prior it runs.

use crate::reverse::ReverseProcess;
use crate::rng::Rng;
use crate::{NdmError, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// What a solve returns: the latent at the end of the grid and the network evaluations it cost.
#[derive(Debug, Clone)]
pub struct SolveOutput {
    pub z: Tensor,
    pub nfe: usize,
}

/// A stateless sampler over a reverse process.
pub trait Solver: Send + Sync + std::fmt::Debug {
    /// Refuses, in one sentence, a process this solver cannot run (for example the reverse SDE
    /// with noise on a schedule where `alpha_1 = 0`, whose diffusion is infinite at `t = 1`).
    /// Called before every solve.
    fn check(&self, _rp: &dyn ReverseProcess) -> Result<()> {
        Ok(())
    }

    /// Integrates from `z_start` at `grid.start()` down to `grid.end()`.
    fn sample(
        &self,
        rp: &dyn ReverseProcess,
        z_start: Tensor,
        grid: &TimeGrid,
        rng: &mut Rng,
    ) -> Result<SolveOutput>;
}

/// The index of time `t` on a training grid of `t_total` steps (`t_i = i / t_total`): the number of
/// grid steps from 0 to `t` (a prior's `t_end` must lie on the grid, which the pipeline checks).
pub fn grid_index(t: f64, t_total: usize) -> usize {
    (t * t_total as f64).round() as usize
}

/// Whether a process reaches `alpha = 0` at its prior's time (flow matching), where the reverse
/// SDE's noise `g^2 = eta^2 (-lambda') sigma^2` is infinite: only `eta = 0` (the probability-flow
/// ODE) and posterior steps run there. Returns the refusal for a solver `name` with noise `eta > 0`.
pub fn refuse_sde_at_zero_alpha(rp: &dyn ReverseProcess, name: &str, eta: f64) -> Result<()> {
    let t_end = rp.t_end();
    if eta > 0.0 && rp.schedule_point(t_end).alpha == 0.0 {
        return Err(NdmError::Incompatible(format!(
            "solver {name} with eta = {eta} cannot start where alpha = 0 (t = {t_end}): the reverse \
             SDE's noise is infinite there; use eta = 0, heun, rk45, dpmpp-2m, ancestral or pc with \
             the reverse-diffusion predictor"
        )));
    }
    Ok(())
}

/// How `--steps N` places its times.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Spacing {
    /// Evenly spaced in `t` from `t_end` to `t_min`, both included (rounded to the training grid).
    #[default]
    Uniform,
    /// A fixed integer stride down from `t_end` (diffusers' "trailing"), the last step to `t_min`.
    Trailing,
    /// Evenly spaced in log-SNR (continuous-time models).
    LogSnr,
    /// Karras et al.'s noise levels: `sigma_ve = sigma / alpha` evenly spaced in `sigma_ve^(1/rho)`
    /// (continuous-time models); written `karras` (rho 7) or `karras:RHO`.
    Karras(f64),
}

impl std::str::FromStr for Spacing {
    type Err = NdmError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            NdmError::InvalidArgument(format!(
                "unknown spacing `{s}`; known: uniform, trailing, log-snr, karras, karras:RHO"
            ))
        };
        match s {
            "uniform" => Ok(Spacing::Uniform),
            "trailing" => Ok(Spacing::Trailing),
            "log-snr" => Ok(Spacing::LogSnr),
            "karras" => Ok(Spacing::Karras(7.0)),
            _ => match s.strip_prefix("karras:").map(str::parse::<f64>) {
                Some(Ok(rho)) if rho > 0.0 && rho.is_finite() => Ok(Spacing::Karras(rho)),
                _ => Err(bad()),
            },
        }
    }
}

impl TryFrom<String> for Spacing {
    type Error = NdmError;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Spacing> for String {
    fn from(s: Spacing) -> String {
        match s {
            Spacing::Uniform => "uniform".into(),
            Spacing::Trailing => "trailing".into(),
            Spacing::LogSnr => "log-snr".into(),
            Spacing::Karras(rho) => format!("karras:{rho}"),
        }
    }
}

impl std::fmt::Display for Spacing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from(*self))
    }
}

/// A strictly decreasing list of at least two finite times in `[0, 1]`, from `t_end` down to
/// `t_min`. The field is private so that every grid a solver sees keeps these invariants: build
/// one with [`TimeGrid::new`], [`TimeGrid::for_process`] or [`TimeGrid::from_times`].
#[derive(Debug, Clone, PartialEq)]
pub struct TimeGrid {
    times: Vec<f64>,
}

impl TimeGrid {
    /// A grid from explicit times, checked: at least two of them, finite, in `[0, 1]` and strictly
    /// decreasing.
    pub fn from_times(times: Vec<f64>) -> Result<Self> {
        if times.len() < 2 {
            return Err(NdmError::InvalidArgument(format!(
                "a time grid needs at least 2 times, got {}",
                times.len()
            )));
        }
        if let Some(t) = times.iter().find(|t| !t.is_finite()) {
            return Err(NdmError::InvalidArgument(format!(
                "time grid times must be finite, got {t}"
            )));
        }
        if let Some(t) = times.iter().find(|t| !(0.0..=1.0).contains(*t)) {
            return Err(NdmError::InvalidArgument(format!(
                "time grid times must lie in [0, 1], got {t}"
            )));
        }
        if let Some(w) = times.windows(2).find(|w| w[1] >= w[0]) {
            return Err(NdmError::InvalidArgument(format!(
                "time grid times must be strictly decreasing, got {} then {}",
                w[0], w[1]
            )));
        }
        Ok(TimeGrid { times })
    }

    /// `steps` solver steps over `[t_min, t_end]`. For a discrete-time model (`training_steps = Some(T)`)
    /// every time lies on the training grid `i / T` and `steps` may not exceed the number of training
    /// intervals inside `[t_min, t_end]`.
    /// The grid for a reverse process: its time range, its training grid and, for `log-snr` and
    /// `karras` spacing, its schedule.
    pub fn for_process(steps: usize, spacing: Spacing, rp: &dyn ReverseProcess) -> Result<Self> {
        let (t_min, t_end) = (rp.t_min(), rp.t_end());
        let level: Box<dyn Fn(f64) -> f64 + '_> = match spacing {
            Spacing::Uniform | Spacing::Trailing => {
                return Self::new(steps, spacing, rp.training_steps(), t_min, t_end)
            }
            _ if rp.training_steps().is_some() => {
                return Err(NdmError::InvalidArgument(format!(
                    "spacing {spacing} needs a continuous-time model; this one has a training grid (use uniform or trailing)"
                )))
            }
            // An increasing function of t, to be spaced evenly.
            Spacing::LogSnr => Box::new(|t: f64| -rp.schedule_point(t).log_snr),
            Spacing::Karras(rho) => {
                Box::new(move |t: f64| (-rp.schedule_point(t).log_snr / (2.0 * rho)).exp())
            }
        };
        if steps == 0 {
            return Err(NdmError::InvalidArgument(
                "--steps must be at least 1".into(),
            ));
        }
        let (hi, lo) = (level(t_end), level(t_min));
        if !(hi.is_finite() && lo.is_finite()) {
            return Err(NdmError::InvalidArgument(format!(
                "spacing {spacing} needs a finite log-SNR at both ends, but it is infinite at t = {} \
                 (alpha = 0 there); use uniform spacing",
                if hi.is_finite() { t_min } else { t_end }
            )));
        }
        let mut times = Vec::with_capacity(steps + 1);
        for k in 0..=steps {
            times.push(match k {
                0 => t_end,
                k if k == steps => t_min,
                k => {
                    let target = hi + (lo - hi) * k as f64 / steps as f64;
                    let (mut a, mut b) = (t_min, t_end);
                    for _ in 0..100 {
                        let m = 0.5 * (a + b);
                        if level(m) < target {
                            a = m;
                        } else {
                            b = m;
                        }
                    }
                    0.5 * (a + b)
                }
            });
        }
        if times.windows(2).any(|w| w[1] >= w[0]) {
            return Err(NdmError::InvalidArgument(format!(
                "--steps {steps} is too many for spacing {spacing}"
            )));
        }
        Self::from_times(times)
    }

    /// `steps` solver steps over `[t_min, t_end]` with `uniform` or `trailing` spacing (the others
    /// need the schedule: [`TimeGrid::for_process`]).
    pub fn new(
        steps: usize,
        spacing: Spacing,
        training_steps: Option<usize>,
        t_min: f64,
        t_end: f64,
    ) -> Result<Self> {
        if matches!(spacing, Spacing::LogSnr | Spacing::Karras(_)) {
            return Err(NdmError::InvalidArgument(format!(
                "spacing {spacing} needs the schedule: use TimeGrid::for_process"
            )));
        }
        if steps == 0 {
            return Err(NdmError::InvalidArgument(
                "--steps must be at least 1".into(),
            ));
        }
        if t_end <= t_min {
            return Err(NdmError::InvalidArgument(format!(
                "empty time range [{t_min}, {t_end}]"
            )));
        }
        let times = match training_steps {
            None => {
                // In continuous time both spacings are the same even stride.
                let h = (t_end - t_min) / steps as f64;
                (0..=steps)
                    .map(|k| {
                        if k == steps {
                            t_min
                        } else {
                            t_end - h * k as f64
                        }
                    })
                    .collect()
            }
            Some(t_total) => {
                let (hi, lo) = (grid_index(t_end, t_total), grid_index(t_min, t_total));
                let n = hi - lo;
                if steps > n {
                    return Err(NdmError::InvalidArgument(format!(
                        "--steps {steps} exceeds the {n} steps of the training grid"
                    )));
                }
                let idx: Vec<usize> = match spacing {
                    Spacing::Uniform => (0..=steps)
                        .map(|k| hi - ((k as f64 * n as f64 / steps as f64).round() as usize))
                        .collect(),
                    _ => {
                        let stride = n / steps;
                        (0..=steps)
                            .map(|k| if k == steps { lo } else { hi - stride * k })
                            .collect()
                    }
                };
                idx.into_iter().map(|i| i as f64 / t_total as f64).collect()
            }
        };
        Self::from_times(times)
    }

    /// The times, strictly decreasing.
    pub fn times(&self) -> &[f64] {
        &self.times
    }

    /// The first (largest) time, where solving starts.
    pub fn start(&self) -> f64 {
        self.times[0]
    }

    /// The last (smallest) time, where solving ends.
    pub fn end(&self) -> f64 {
        self.times[self.times.len() - 1]
    }

    /// Number of solver steps (intervals), at least 1.
    pub fn steps(&self) -> usize {
        self.times.len() - 1
    }

    /// The consecutive pairs `(t, s)` with `s < t`, in solving order.
    pub fn intervals(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.times.windows(2).map(|w| (w[0], w[1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_are_decreasing_and_on_the_training_grid() {
        for spacing in [Spacing::Uniform, Spacing::Trailing] {
            for steps in [1, 7, 20, 1000] {
                let g = TimeGrid::new(steps, spacing, Some(1000), 0.0, 1.0).unwrap();
                assert_eq!(g.steps(), steps);
                assert_eq!(g.times[0], 1.0);
                assert_eq!(*g.times.last().unwrap(), 0.0);
                assert!(g.times.windows(2).all(|w| w[1] < w[0]));
                assert!(g
                    .times
                    .iter()
                    .all(|t| (t * 1000.0 - (t * 1000.0).round()).abs() < 1e-9));
            }
        }
        assert!(TimeGrid::new(0, Spacing::Uniform, None, 0.0, 1.0).is_err());
        assert!(TimeGrid::new(11, Spacing::Uniform, Some(10), 0.0, 1.0).is_err());
    }

    #[test]
    fn from_times_keeps_a_valid_grid() {
        let g = TimeGrid::from_times(vec![1.0, 0.6, 0.25, 0.0]).unwrap();
        assert_eq!(g.times(), &[1.0, 0.6, 0.25, 0.0]);
        assert_eq!((g.start(), g.end(), g.steps()), (1.0, 0.0, 3));
        assert_eq!(
            g.intervals().collect::<Vec<_>>(),
            vec![(1.0, 0.6), (0.6, 0.25), (0.25, 0.0)]
        );
        assert_eq!(TimeGrid::from_times(vec![0.5, 0.4]).unwrap().steps(), 1);
    }

    #[test]
    fn from_times_refuses_bad_grids() {
        let msg = |times: Vec<f64>| TimeGrid::from_times(times).unwrap_err().to_string();
        assert!(msg(vec![]).contains("at least 2 times, got 0"));
        assert!(msg(vec![1.0]).contains("at least 2 times, got 1"));
        assert!(msg(vec![1.0, f64::NAN, 0.0]).contains("finite"));
        assert!(msg(vec![f64::INFINITY, 0.0]).contains("finite"));
        assert!(msg(vec![1.5, 0.0]).contains("[0, 1]"));
        assert!(msg(vec![1.0, -0.1]).contains("[0, 1]"));
        assert!(msg(vec![0.0, 1.0]).contains("strictly decreasing"));
        assert!(msg(vec![1.0, 0.5, 0.5, 0.0]).contains("strictly decreasing"));
        // Every message is one line.
        assert!(!msg(vec![0.0, 1.0]).contains('\n'));
        // The step-count constructor checks its range too.
        assert!(TimeGrid::new(4, Spacing::Uniform, None, 0.0, f64::NAN).is_err());
        assert!(TimeGrid::new(4, Spacing::Uniform, None, -0.5, 1.0).is_err());
    }
}
