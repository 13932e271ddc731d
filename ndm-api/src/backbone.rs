//! Denoising networks.

use candle_core::{Result, Tensor};

/// What a backbone sees: the noisy latent and the time, with the schedule at that time for
/// networks that condition on log-SNR or need it (the Gaussian oracle).
#[derive(Debug, Clone)]
pub struct NetInput<'a> {
    /// `z_t`, shape `[B, ..L]`.
    pub z: &'a Tensor,
    /// `t`, shape `[B]`.
    pub t: &'a Tensor,
    /// `alpha_t`, shape `[B]`.
    pub alpha: &'a Tensor,
    /// `sigma_t`, shape `[B]`.
    pub sigma: &'a Tensor,
    /// `lambda_t`, shape `[B]`.
    pub log_snr: &'a Tensor,
    /// The class of every example (`u32`, shape `[B]`, in `0..=K` where `K` is the model's number
    /// of classes and `K` itself means "no class"), for a network built with classes
    /// ([`crate::BuildCtx::classes`] above 0). `None` is "no class" for every example; a network
    /// built without classes refuses `Some`.
    pub class: Option<&'a Tensor>,
}

impl<'a> NetInput<'a> {
    /// The input at latents `z` and times `t`, with the schedule `sb` evaluated at `t`.
    pub fn at(z: &'a Tensor, t: &'a Tensor, sb: &'a crate::ScheduleBatch) -> Self {
        NetInput {
            z,
            t,
            alpha: &sb.alpha,
            sigma: &sb.sigma,
            log_snr: &sb.log_snr,
            class: None,
        }
    }

    /// The same input with classes.
    pub fn with_class(self, class: Option<&'a Tensor>) -> Self {
        NetInput { class, ..self }
    }
}

/// A network `(z_t, t) -> raw output` of the latent shape, with weights under the prefix it was
/// built with (`backbone.` for the denoiser, `transform.net.` inside a learned transform). The MLP
/// serves 2-D data, the U-Net images; both may be used inside a learned transform unchanged.
pub trait Backbone: Send + Sync + std::fmt::Debug {
    /// The raw output for one batch (sampling, evaluation: deterministic).
    fn forward(&self, input: &NetInput) -> Result<Tensor>;

    /// The raw output in a training step, where the network may be stochastic (dropout) with
    /// draws from `rng`; the default is [`Backbone::forward`].
    fn forward_train(&self, input: &NetInput, _rng: &mut crate::Rng) -> Result<Tensor> {
        self.forward(input)
    }

    /// True when the output is already the data prediction `xhat` (the Gaussian oracle), so the
    /// parameterization is bypassed.
    fn predicts_data(&self) -> bool {
        false
    }

    /// The output and its exact derivative in the time `input.t` (each example's own; `z` and the
    /// class held fixed), by forward mode: `Some` for a network that implements it (the MLP, the U-Net), `None`
    /// (the default) otherwise. NDM's learned transform takes `dF/dt` from it when it can, a
    /// central difference when not.
    fn forward_with_time_tangent(&self, _input: &NetInput) -> Option<Result<(Tensor, Tensor)>> {
        None
    }
}
