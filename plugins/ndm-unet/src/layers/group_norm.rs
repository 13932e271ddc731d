//! GroupNorm, optionally followed by a fused SiLU, dispatching through [`KernelBackend`].

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::kernels::KernelBackend;

/// GroupNorm with per-channel affine `weight` (init 1) and `bias` (init 0).
#[derive(Debug, Clone)]
pub struct GroupNorm {
    gamma: Tensor,
    beta: Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
    backend: KernelBackend,
}

impl GroupNorm {
    /// Errors when `groups` does not divide `channels`.
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        groups: usize,
        silu: bool,
        backend: KernelBackend,
    ) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!(
                "GroupNorm: {groups} groups do not divide {channels} channels evenly"
            );
        }
        let gamma = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let beta = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        Ok(Self {
            gamma,
            beta,
            groups,
            eps: 1e-5,
            silu,
            backend,
        })
    }
}

impl GroupNorm {
    /// The output and, given the tangent `dx` of `x` (forward mode), its tangent
    /// ([`KernelBackend::group_norm_tangent`], differentiable, so a loss on it gets gradients:
    /// NDM's `dF/dt`). The output is [`Module::forward`]'s.
    pub fn forward_with_tangent(
        &self,
        x: &Tensor,
        dx: Option<&Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let y = self.forward(x)?;
        let dy = dx
            .map(|dx| {
                self.backend.group_norm_tangent(
                    x,
                    dx,
                    self.groups,
                    &self.gamma,
                    &self.beta,
                    self.eps,
                    self.silu,
                )
            })
            .transpose()?;
        Ok((y, dy))
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.silu {
            self.backend
                .group_norm_silu(x, self.groups, &self.gamma, &self.beta, self.eps)
        } else {
            self.backend
                .group_norm(x, self.groups, &self.gamma, &self.beta, self.eps)
        }
    }
}
