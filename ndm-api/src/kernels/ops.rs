//! The public, device-dispatching entry points.
//!
//! [`KernelBackend::Fused`] runs this crate's CustomOps when the input lives on the CPU and is
//! f32 or f64, and candle's own ops otherwise (CUDA, Metal, half types);
//! [`KernelBackend::Native`] always runs candle's own ops. Both compute the same function,
//! so the same network can be built both ways in one process.

use candle_core::{DType, Device, Module, Result, Tensor};

use super::{
    attention as attn_kernel, conv, group_norm as gn_kernel,
    group_norm_tangent as gn_tangent_kernel, linear as linear_kernel, silu as silu_kernel, softmax,
    upsample,
};

/// Which implementation the ops (and the layers built on them) use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelBackend {
    /// This crate's fused CPU kernels (candle's ops on other devices).
    #[default]
    Fused,
    /// candle's native ops everywhere.
    Native,
}

impl KernelBackend {
    /// The backend for tensors on `device`: the fused kernels on the CPU, candle's ops elsewhere
    /// (where `Fused` would fall back to them op by op anyway).
    pub fn for_device(device: &Device) -> Self {
        if device.is_cpu() {
            KernelBackend::Fused
        } else {
            KernelBackend::Native
        }
    }

    fn fused_for(self, x: &Tensor) -> bool {
        self == KernelBackend::Fused
            && x.device().is_cpu()
            && matches!(x.dtype(), DType::F32 | DType::F64)
    }

    /// 2D convolution of `x: [B, Cin, H, W]` with `w: [Cout, Cin, kh, kw]`, the same stride and
    /// zero padding on both axes, and an optional bias `[Cout]` or `[B, Cout]` (per batch item:
    /// a conv bias plus e.g. a time-embedding projection, added inside the kernel).
    pub fn conv2d(
        self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        stride: usize,
        padding: usize,
    ) -> Result<Tensor> {
        if self.fused_for(x) {
            let bias = match b {
                Some(b) => b.contiguous()?,
                None => Tensor::zeros(w.dim(0)?, x.dtype(), x.device())?,
            };
            let op = conv::Conv2d {
                stride,
                pad: padding,
            };
            return x.contiguous()?.apply_op3(&w.contiguous()?, &bias, op);
        }
        let y = x.conv2d(w, padding, stride, 1, 1)?;
        match b {
            Some(b) if b.rank() == 2 => {
                y.broadcast_add(&b.reshape((b.dim(0)?, b.dim(1)?, 1, 1))?)
            }
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }

    fn gn(
        self,
        x: &Tensor,
        groups: usize,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
        silu: bool,
    ) -> Result<Tensor> {
        let c = x.dim(1)?;
        if groups == 0 || c % groups != 0 {
            candle_core::bail!("group_norm: {groups} groups do not divide {c} channels evenly");
        }
        if self.fused_for(x) {
            let op = gn_kernel::GroupNorm {
                groups,
                eps,
                silu,
                ..Default::default()
            };
            return x
                .contiguous()?
                .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op);
        }
        let gn = candle_nn::GroupNorm::new(gamma.clone(), beta.clone(), c, groups, eps)?;
        let y = gn.forward(x)?;
        if silu {
            y.silu()
        } else {
            Ok(y)
        }
    }

    /// GroupNorm over `x: [B, C, ...]` with per-channel `gamma`, `beta` (`[C]`).
    /// Errors when `groups` does not divide `C`.
    pub fn group_norm(
        self,
        x: &Tensor,
        groups: usize,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        self.gn(x, groups, gamma, beta, eps, false)
    }

    /// `silu(group_norm(x))` in one kernel (forward and backward).
    pub fn group_norm_silu(
        self,
        x: &Tensor,
        groups: usize,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        self.gn(x, groups, gamma, beta, eps, true)
    }

    /// The tangent of [`Self::group_norm`] (`silu` false) or [`Self::group_norm_silu`] (`silu`
    /// true) at `x` for the input tangent `dx` (forward mode), differentiable in `x`, `dx`,
    /// `gamma` and `beta`: `gamma (dx - mean(dx) - xhat mean(xhat dx)) / s` per item and group
    /// (`xhat = (x - mu) / s`, `s = sqrt(var + eps)`), times `silu'` at the normalised value
    /// when `silu`. `Fused` runs one op with its own backward; `Native` composes candle ops.
    #[allow(clippy::too_many_arguments)]
    pub fn group_norm_tangent(
        self,
        x: &Tensor,
        dx: &Tensor,
        groups: usize,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
        silu: bool,
    ) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        if dims.len() < 3 || dx.dims() != dims.as_slice() {
            candle_core::bail!(
                "group_norm tangent: expected [B, C, ...] input and tangent of one shape, got {dims:?} and {:?}",
                dx.dims()
            );
        }
        let (b, c) = (dims[0], dims[1]);
        if groups == 0 || c % groups != 0 {
            candle_core::bail!("group_norm: {groups} groups do not divide {c} channels evenly");
        }
        if self.fused_for(x) && dx.dtype() == x.dtype() && dx.device().is_cpu() {
            let gb = Tensor::cat(&[gamma, beta], 0)?;
            let op = gn_tangent_kernel::GroupNormTangent { groups, eps, silu };
            return x
                .contiguous()?
                .apply_op3(&dx.contiguous()?, &gb.contiguous()?, op);
        }
        let per = x.elem_count() / (b * groups);
        let xs = x.reshape((b, groups, per))?;
        let ds = dx.reshape((b, groups, per))?;
        let centred = xs.broadcast_sub(&xs.mean_keepdim(2)?)?;
        let inv = (centred.sqr()?.mean_keepdim(2)? + eps)?.sqrt()?.recip()?;
        let xhat = centred.broadcast_mul(&inv)?;
        let dsig = (&xhat * &ds)?.mean_keepdim(2)?;
        let dn = ds
            .broadcast_sub(&ds.mean_keepdim(2)?)?
            .sub(&xhat.broadcast_mul(&dsig)?)?
            .broadcast_mul(&inv)?;
        let mut shape = vec![1usize; dims.len()];
        shape[1] = c;
        let gamma = gamma.reshape(shape.as_slice())?;
        let dy = dn.reshape(dims.as_slice())?.broadcast_mul(&gamma)?;
        if !silu {
            return Ok(dy);
        }
        let pre = xhat
            .reshape(dims.as_slice())?
            .broadcast_mul(&gamma)?
            .broadcast_add(&beta.reshape(shape.as_slice())?)?;
        self.silu_tangent(&pre, &dy)
    }

    /// A dense layer on `x: [n, k]`: `act(x) W^T + b` with `w: [m, k]`, `act` SiLU when
    /// `silu_input` (else the identity), and `b` one bias `[m]`, one per example `[n, m]`, or none.
    pub fn linear(
        self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        silu_input: bool,
    ) -> Result<Tensor> {
        if self.fused_for(x) {
            let bias = match b {
                Some(b) => b.contiguous()?,
                None => Tensor::zeros(w.dim(0)?, x.dtype(), x.device())?,
            };
            let op = linear_kernel::Linear {
                silu: silu_input,
                keep: super::backward_expected(),
                ..Default::default()
            };
            return x.contiguous()?.apply_op3(&w.contiguous()?, &bias, op);
        }
        let a = if silu_input { x.silu()? } else { x.clone() };
        let y = a.matmul(&w.t()?)?;
        match b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// `x * sigmoid(x)`.
    pub fn silu(self, x: &Tensor) -> Result<Tensor> {
        if self.fused_for(x) {
            return x.contiguous()?.apply_op1(silu_kernel::Silu);
        }
        x.silu()
    }

    /// SiLU's tangent (forward mode): `silu'(x) dx` for the tangent `dx` of `x`, differentiable in
    /// both.
    pub fn silu_tangent(self, x: &Tensor, dx: &Tensor) -> Result<Tensor> {
        if self.fused_for(x) && x.dtype() == dx.dtype() && dx.device().is_cpu() {
            return x
                .contiguous()?
                .apply_op2(&dx.contiguous()?, silu_kernel::SiluTangent);
        }
        let s = candle_nn::ops::sigmoid(x)?;
        let d1 = (&s * (x * s.affine(-1.0, 1.0)?)?.affine(1.0, 1.0)?)?;
        d1 * dx
    }

    /// Softmax over the last dimension, with a backward (candle 0.11's own `softmax_last_dim`
    /// has none). `Native` composes it from differentiable candle ops: `exp(x - max)` with the
    /// max detached (it cancels in the ratio), divided by its sum.
    pub fn softmax_last_dim(self, x: &Tensor) -> Result<Tensor> {
        if self.fused_for(x) {
            return x.contiguous()?.apply_op1(softmax::SoftmaxLastDim);
        }
        let d = x.rank().saturating_sub(1);
        let m = x.detach().max_keepdim(d)?;
        let e = x.broadcast_sub(&m)?.exp()?;
        e.broadcast_div(&e.sum_keepdim(d)?)
    }

    /// Multi-head scaled dot-product self-attention over `N` positions: `qkv: [B, 3C, N]` holds
    /// queries, keys and values (channel `part * C + head * (C / heads) + c`); the result
    /// `[B, C, N]` holds each head's `v softmax(q^T k / sqrt(C / heads))^T`. `Fused` runs it as
    /// one op (forward and backward); `Native` composes candle ops with
    /// [`Self::softmax_last_dim`]'s composed softmax.
    pub fn attention(self, qkv: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, c, n, d) = attention_dims(qkv, heads, "attention")?;
        if self.fused_for(qkv) {
            return qkv
                .contiguous()?
                .apply_op1(attn_kernel::Attention { heads });
        }
        let [q, k, v] = attention_parts(qkv, heads)?;
        let q = (q * (1.0 / (d as f64).sqrt()))?
            .transpose(1, 2)?
            .contiguous()?;
        let a = self.softmax_last_dim(&q.matmul(&k)?)?;
        v.matmul(&a.transpose(1, 2)?)?.reshape((b, c, n))
    }

    /// The forward-mode derivative of [`Self::attention`] at `qkv` along `dqkv` (same shape):
    /// `[B, C, N]`, differentiable in both. `Fused` runs it as one op (forward and backward);
    /// `Native` composes candle ops (`dS = s (dq^T k + q^T dk)`, `dP = P * (dS - rowsum(P dS))`,
    /// `dv P^T + v dP^T`).
    pub fn attention_tangent(self, qkv: &Tensor, dqkv: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, c, n, d) = attention_dims(qkv, heads, "attention tangent")?;
        attn_kernel::same_dims(qkv.layout(), dqkv.layout(), "attention tangent", "tangent")?;
        if self.fused_for(qkv) {
            return qkv.contiguous()?.apply_op2(
                &dqkv.to_dtype(qkv.dtype())?.contiguous()?,
                attn_kernel::AttentionTangent { heads },
            );
        }
        let [q, k, v] = attention_parts(qkv, heads)?;
        let [dq, dk, dv] = attention_parts(dqkv, heads)?;
        let s = 1.0 / (d as f64).sqrt();
        let qt = q.transpose(1, 2)?.contiguous()?;
        let p = self.softmax_last_dim(&(qt.matmul(&k)? * s)?)?;
        let ds = ((dq.transpose(1, 2)?.contiguous()?.matmul(&k)? + qt.matmul(&dk)?)? * s)?;
        let pds = (&p * &ds)?;
        let dp = (&pds - p.broadcast_mul(&pds.sum_keepdim(2)?)?)?;
        let pt = p.transpose(1, 2)?.contiguous()?;
        let dpt = dp.transpose(1, 2)?.contiguous()?;
        (dv.matmul(&pt)? + v.matmul(&dpt)?)?.reshape((b, c, n))
    }

    /// Nearest-neighbour 2x upsampling of `[B, C, H, W]`.
    pub fn upsample_nearest2x(self, x: &Tensor) -> Result<Tensor> {
        if self.fused_for(x) {
            return x.contiguous()?.apply_op1(upsample::Upsample2x);
        }
        let (_, _, h, w) = x.dims4()?;
        x.upsample_nearest2d(2 * h, 2 * w)
    }
}

/// [`KernelBackend::conv2d`] with the fused backend.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    KernelBackend::Fused.conv2d(x, w, b, stride, padding)
}

/// [`KernelBackend::group_norm`] with the fused backend.
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    KernelBackend::Fused.group_norm(x, groups, gamma, beta, eps)
}

/// [`KernelBackend::group_norm_silu`] with the fused backend.
pub fn group_norm_silu(
    x: &Tensor,
    groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    KernelBackend::Fused.group_norm_silu(x, groups, gamma, beta, eps)
}

/// [`KernelBackend::group_norm_tangent`] with the fused backend.
pub fn group_norm_tangent(
    x: &Tensor,
    dx: &Tensor,
    groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    KernelBackend::Fused.group_norm_tangent(x, dx, groups, gamma, beta, eps, silu)
}

/// [`KernelBackend::linear`] with the fused backend.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, silu_input: bool) -> Result<Tensor> {
    KernelBackend::Fused.linear(x, w, b, silu_input)
}

/// [`KernelBackend::silu`] with the fused backend.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    KernelBackend::Fused.silu(x)
}

/// [`KernelBackend::silu_tangent`] with the fused backend.
pub fn silu_tangent(x: &Tensor, dx: &Tensor) -> Result<Tensor> {
    KernelBackend::Fused.silu_tangent(x, dx)
}

/// [`KernelBackend::softmax_last_dim`] with the fused backend.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    KernelBackend::Fused.softmax_last_dim(x)
}

/// `(B, C, N, C / heads)` of an attention input `qkv: [B, 3C, N]`, or a one-line error.
fn attention_dims(qkv: &Tensor, heads: usize, op: &str) -> Result<(usize, usize, usize, usize)> {
    let (b, c3, n) = qkv.dims3()?;
    let (c, d) = attn_kernel::head_dims(c3, heads, op)?;
    Ok((b, c, n, d))
}

/// The queries, keys and values of `qkv: [B, 3C, N]`, each `[B * heads, C / heads, N]`.
fn attention_parts(qkv: &Tensor, heads: usize) -> Result<[Tensor; 3]> {
    let (b, c3, n) = qkv.dims3()?;
    let d = c3 / 3 / heads;
    let qkv = qkv.reshape((b, 3, heads, d, n))?;
    let part = |i: usize| -> Result<Tensor> {
        qkv.narrow(1, i, 1)?
            .contiguous()?
            .reshape((b * heads, d, n))
    };
    Ok([part(0)?, part(1)?, part(2)?])
}

/// [`KernelBackend::attention`] with the fused backend.
pub fn attention(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    KernelBackend::Fused.attention(qkv, heads)
}

/// [`KernelBackend::upsample_nearest2x`] with the fused backend.
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    KernelBackend::Fused.upsample_nearest2x(x)
}
