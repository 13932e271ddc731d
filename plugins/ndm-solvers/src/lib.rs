//! Solvers over `ReverseProcess`. None of them knows which transform, schedule or prior it runs.
//!
//! - `ancestral`, `ddim`: NDM's posterior step (discrete; one network evaluation per step).
//! - `euler-maruyama`: the reverse SDE of `docs/math.md` (any eta; eta = 0 is the probability-flow ODE).
//! - `heun`: second-order solver of the probability-flow ODE (two evaluations per step).
//! - `rk45`: adaptive Dormand-Prince on the probability-flow ODE.
//! - `dpmpp-2m`: DPM-Solver++(2M), second order in log-SNR, one evaluation per step.
//! - `pc`: predictor-corrector (Song et al. 2021): Langevin corrector, then a reverse-diffusion or
//!   Euler-Maruyama predictor; the last step returns the noise-free mean.
//!
//! NFE counts denoiser evaluations; a learned transform's own evaluations inside `dF/dt` are extra.

mod dpm;
mod pc;
mod posterior;
mod rk45;
mod sde;

pub use dpm::DpmSolver2M;
pub use pc::{PcConfig, PcSolver, Predictor};
pub use posterior::PosteriorSolver;
pub use rk45::Rk45;
pub use sde::{EulerMaruyama, Heun};

use ndm_api::candle_core::{Result, Tensor};
use ndm_api::Rng;

/// The stochastic solvers' step rule: the last step returns the noise-free mean (as score_sde's
/// samplers do), every other step `mean + std * noise`.
pub fn noise_unless_last(mean: Tensor, std: f64, last: bool, rng: &mut Rng) -> Result<Tensor> {
    if last {
        Ok(mean)
    } else {
        add_noise(mean, std, rng)
    }
}

/// `mean + std * noise` (no draw when `std` is 0).
pub fn add_noise(mean: Tensor, std: f64, rng: &mut Rng) -> Result<Tensor> {
    if std > 0.0 {
        let noise = rng.normal_tensor(mean.dims(), mean.dtype(), mean.device())?;
        mean + (noise * std)?
    } else {
        Ok(mean)
    }
}
