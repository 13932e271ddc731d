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
    /// The output and, given the tangent `dx` of `x` (forward mode), its tangent. With `x`
    /// normalised per item and group to `xhat = (x - mu) / s` (`s = sqrt(var + eps)`), GroupNorm's
    /// tangent is `gamma (dx - mean(dx) - xhat mean(xhat dx)) / s`, the means over the group; a
    /// fused SiLU multiplies it by `silu'` at the normalised value. The output is
    /// [`Module::forward`]'s (the fused kernel); the tangent is built from differentiable ops, so
    /// a loss on it gets gradients (NDM's `dF/dt`).
    pub fn forward_with_tangent(
        &self,
        x: &Tensor,
        dx: Option<&Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let y = self.forward(x)?;
        let Some(dx) = dx else {
            return Ok((y, None));
        };
        let dims = x.dims().to_vec();
        let (b, c) = (dims[0], dims[1]);
        let per = x.elem_count() / (b * self.groups);
        let xs = x.reshape((b, self.groups, per))?;
        let ds = dx.reshape((b, self.groups, per))?;
        let centred = xs.broadcast_sub(&xs.mean_keepdim(2)?)?;
        let inv = (centred.sqr()?.mean_keepdim(2)? + self.eps)?
            .sqrt()?
            .recip()?;
        let xhat = centred.broadcast_mul(&inv)?;
        let dsig = (&xhat * &ds)?.mean_keepdim(2)?;
        let dn = ds
            .broadcast_sub(&ds.mean_keepdim(2)?)?
            .sub(&xhat.broadcast_mul(&dsig)?)?
            .broadcast_mul(&inv)?;
        let mut shape = vec![1usize; dims.len()];
        shape[1] = c;
        let gamma = self.gamma.reshape(shape.as_slice())?;
        let dy = dn.reshape(dims.as_slice())?.broadcast_mul(&gamma)?;
        if !self.silu {
            return Ok((y, Some(dy)));
        }
        let pre = xhat
            .reshape(dims.as_slice())?
            .broadcast_mul(&gamma)?
            .broadcast_add(&self.beta.reshape(shape.as_slice())?)?;
        let dy = self.backend.silu_tangent(&pre, &dy)?;
        Ok((y, Some(dy)))
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
