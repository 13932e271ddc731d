//! Self-attention over the `H * W` positions of a feature map (DDPM's attention block with
//! several heads, as in Nichol & Dhariwal 2021 and Dhariwal & Nichol 2021).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::KernelBackend;
use crate::layers::{Conv2d, GroupNorm};

/// `x + proj(attention(qkv(GroupNorm(x))))`: a 1x1 conv gives queries, keys and values; each of
/// `heads` heads (of `C / heads` channels) attends over all `H * W` positions with scaled dot
/// products and a softmax; a 1x1 output projection, initialised to zero (so the block starts as
/// the identity), maps the heads back to `C` channels.
#[derive(Debug, Clone)]
pub struct AttentionBlock {
    norm: GroupNorm,
    qkv: Conv2d,
    proj: Conv2d,
    channels: usize,
    heads: usize,
    backend: KernelBackend,
}

impl AttentionBlock {
    /// Errors when `heads` is 0 or does not divide `channels`, or `groups` does not divide them.
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        heads: usize,
        groups: usize,
        backend: KernelBackend,
    ) -> Result<Self> {
        if heads == 0 || !channels.is_multiple_of(heads) {
            candle_core::bail!(
                "AttentionBlock: {heads} heads do not divide {channels} channels evenly"
            );
        }
        Ok(Self {
            norm: GroupNorm::new(vb.pp("norm"), channels, groups, false, backend)?,
            qkv: Conv2d::new(vb.pp("qkv"), channels, 3 * channels, 1, 1, 0, backend)?,
            proj: Conv2d::zeros(vb.pp("proj"), channels, channels, 1, 1, 0, backend)?,
            channels,
            heads,
            backend,
        })
    }

    pub fn heads(&self) -> usize {
        self.heads
    }

    /// The output and, given the tangent `dx` of `x` (forward mode), its tangent. Per head, with
    /// `S = s q^T k`, `P = softmax_rows(S)` and `out = v P^T`: `dS = s (dq^T k + q^T dk)`,
    /// `dP = P * (dS - rowsum(P * dS))`, `dout = dv P^T + v dP^T`: the backend's
    /// [`KernelBackend::attention_tangent`] (one fused op on the CPU, which recomputes `P`).
    pub fn forward_with_tangent(
        &self,
        x: &Tensor,
        dx: Option<&Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let Some(dx) = dx else {
            return Ok((self.forward(x)?, None));
        };
        let (b, c, h, w) = x.dims4()?;
        let (n, heads) = (h * w, self.heads);
        let (normed, dnormed) = self.norm.forward_with_tangent(x, Some(dx))?;
        let qkv = self.qkv.forward(&normed)?;
        let dqkv = self
            .qkv
            .tangent(&qkv, dnormed.as_ref(), None)?
            .expect("a nonzero input tangent gives a tangent");
        let (qkv, dqkv) = (qkv.reshape((b, 3 * c, n))?, dqkv.reshape((b, 3 * c, n))?);
        let out = self.backend.attention(&qkv, heads)?.reshape((b, c, h, w))?;
        let dout = self
            .backend
            .attention_tangent(&qkv, &dqkv, heads)?
            .reshape((b, c, h, w))?;
        let proj = self.proj.forward(&out)?;
        let dproj = self
            .proj
            .tangent(&proj, Some(&dout), None)?
            .expect("a nonzero input tangent gives a tangent");
        Ok(((x + proj)?, Some((dx + dproj)?)))
    }
}

impl Module for AttentionBlock {
    /// `x: [B, C, H, W]` -> the same shape.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.channels {
            candle_core::bail!(
                "AttentionBlock: built for {} channels, got {c}",
                self.channels
            );
        }
        let qkv = self
            .qkv
            .forward(&self.norm.forward(x)?)?
            .reshape((b, 3 * c, h * w))?;
        let out = self
            .backend
            .attention(&qkv, self.heads)?
            .reshape((b, c, h, w))?;
        x + self.proj.forward(&out)?
    }
}
