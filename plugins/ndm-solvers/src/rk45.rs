//! `solver.rk45`: adaptive Dormand-Prince on the probability-flow ODE.

use ndm_api::candle_core::Tensor;
use ndm_api::ode::{dopri5_until, step_limit_error, Ending, Tolerance};
use ndm_api::registry::BuildCtx;
use ndm_api::{NdmError, ReverseProcess, Rng, SolveOutput, Solver, TimeGrid};
use serde::{Deserialize, Serialize};

/// `solver.rk45` config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rk45Config {
    pub rtol: f64,
    pub atol: f64,
    /// Accepted plus rejected steps before giving up.
    pub max_steps: usize,
}

impl Default for Rk45Config {
    fn default() -> Self {
        let t = Tolerance::default();
        Rk45Config {
            rtol: t.rtol,
            atol: t.atol,
            max_steps: t.max_steps,
        }
    }
}

/// Integrates the probability-flow ODE from the grid's first time to its last with adaptive steps
/// (the grid's inner times are ignored). NFE = 6 per attempted step + 1, so rejected
/// steps show in the NFE.
#[derive(Debug, Clone)]
pub struct Rk45 {
    pub tol: Tolerance,
}

impl Solver for Rk45 {
    fn sample(
        &self,
        rp: &dyn ReverseProcess,
        z_start: Tensor,
        grid: &TimeGrid,
        _rng: &mut Rng,
    ) -> ndm_api::Result<SolveOutput> {
        let (t0, t1) = (grid.start(), grid.end());
        let mut f = |t: f64, y: &Vec<Tensor>| -> ndm_api::Result<Vec<Tensor>> {
            Ok(vec![rp.probability_flow(&y[0], t)?])
        };
        let (y, stats) = match dopri5_until(&mut f, vec![z_start], t0, t1, &self.tol)? {
            (Ending::Reached(y), stats) => (y, stats),
            (Ending::StepLimit { t }, _) => {
                return Err(step_limit_error(
                    self.tol.max_steps,
                    t,
                    t1,
                    "solver.max_steps",
                ))
            }
        };
        let z = y
            .into_iter()
            .next()
            .ok_or_else(|| NdmError::Spec("rk45 returned no state".into()))?;
        Ok(SolveOutput { z, nfe: stats.nfe })
    }
}

ndm_api::register_plugin!(
    Solver,
    "rk45",
    "adaptive Dormand-Prince 5(4) on the probability-flow ODE (rtol/atol 1e-5); runs every process",
    Rk45Config,
    |c: Rk45Config, _ctx: &BuildCtx| {
        if !(c.rtol > 0.0 && c.atol > 0.0 && c.max_steps > 0) {
            return Err(NdmError::invalid_param(
                "rtol, atol and max_steps must be positive",
            ));
        }
        Ok(Box::new(Rk45 {
            tol: Tolerance {
                rtol: c.rtol,
                atol: c.atol,
                max_steps: c.max_steps,
            },
        }))
    }
);
