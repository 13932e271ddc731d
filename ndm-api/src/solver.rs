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
    /// Integrates from `z_start` at `grid.times[0]` down to the grid's last time.
    fn sample(
        &self,
        rp: &dyn ReverseProcess,
        z_start: Tensor,
        grid: &TimeGrid,
        rng: &mut Rng,
    ) -> Result<SolveOutput>;
}

/// How `--steps N` places its times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Spacing {
    /// Evenly spaced from `t_end` to `t_min`, both included (rounded to the training grid).
    #[default]
    Uniform,
    /// A fixed integer stride down from `t_end` (diffusers' "trailing"), the last step to `t_min`.
    Trailing,
}

impl std::str::FromStr for Spacing {
    type Err = NdmError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "uniform" => Ok(Spacing::Uniform),
            "trailing" => Ok(Spacing::Trailing),
            _ => Err(NdmError::InvalidArgument(format!(
                "unknown spacing `{s}`; known: uniform, trailing"
            ))),
        }
    }
}

/// A strictly decreasing list of times from `t_end` down to `t_min`.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeGrid {
    pub times: Vec<f64>,
}

impl TimeGrid {
    /// `steps` solver steps over `[t_min, t_end]`. For a discrete-time model (`training_steps = Some(T)`)
    /// every time lies on the training grid `i / T` and `steps` may not exceed the number of training
    /// intervals inside `[t_min, t_end]`.
    pub fn new(
        steps: usize,
        spacing: Spacing,
        training_steps: Option<usize>,
        t_min: f64,
        t_end: f64,
    ) -> Result<Self> {
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
                let hi = (t_end * t_total as f64).round() as usize;
                let lo = (t_min * t_total as f64).round() as usize;
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
                    Spacing::Trailing => {
                        let stride = n / steps;
                        (0..=steps)
                            .map(|k| if k == steps { lo } else { hi - stride * k })
                            .collect()
                    }
                };
                idx.into_iter().map(|i| i as f64 / t_total as f64).collect()
            }
        };
        Ok(TimeGrid { times })
    }

    /// Number of solver steps (intervals).
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
}
