//! Priors `p(z_end)` at the time `t_end` where the forward process hands over to them.

use crate::rng::Rng;
use candle_core::{DType, Device, Result, Tensor};

/// The prior over the latent at `t_end`.
///
/// - gaussian (exists): `N(0, I)` at `t_end = 1`; `L_prior = KL(q(z_1|x) || N(0, I))` in closed form.
/// - glow (DiNof, `ndm-flows`): a normalizing flow at `t_end = t_m <= 1`, with weights under
///   `prior.`; `log_prob` is the flow's exact log-density and `L_prior` its Monte Carlo NLL on the
///   sample `z` minus the entropy of `q(z_{t_m}|x)`, so the flow trains through the same objective.
///   Solvers then run the reverse process from `t_m`, never from 1: every consumer asks the
///   pipeline for `t_end`.
pub trait Prior: Send + Sync + std::fmt::Debug {
    /// The time at which the prior sits.
    fn t_end(&self) -> f64 {
        1.0
    }

    /// Draws `shape[0]` latents of shape `shape[1..]`.
    fn sample(
        &self,
        shape: &[usize],
        rng: &mut Rng,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor>;

    /// `log p(z)` per example, shape `[B]`.
    fn log_prob(&self, z: &Tensor) -> Result<Tensor>;

    /// `L_prior` per example (shape `[B]`) for `q(z_end | x) = N(mean, std^2 I)` with `std` of shape
    /// `[B]`, given one sample `z` of it (used by priors without a closed form).
    fn prior_loss(&self, mean: &Tensor, std: &Tensor, z: &Tensor) -> Result<Tensor>;

    /// Whether the prior owns trainable weights.
    fn is_trainable(&self) -> bool {
        false
    }

    /// Whether the prior sets some weights from data before training (Glow's actnorm): the
    /// trainer then calls [`Prior::data_init`] once, before the first step of a fresh run.
    fn needs_data_init(&self) -> bool {
        false
    }

    /// Sets the data-dependent weights from a batch of latents `z` at `t_end` (in place, without
    /// gradients). Called once per fresh run, never on a resumed one.
    fn data_init(&self, _z: &Tensor) -> Result<()> {
        Ok(())
    }
}
