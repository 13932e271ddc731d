//! The public, device-dispatching entry points.
//!
//! [`KernelBackend::Fused`] runs this crate's CustomOps when the input lives on the CPU and is
//! f32 or f64, and candle's own ops otherwise (CUDA, Metal, half types);
//! [`KernelBackend::Native`] always runs candle's own ops. Both compute the same function,
//! so the same network can be built both ways in one process.

use candle_core::{DType, Device, Module, Result, Tensor};

use super::{conv, group_norm as gn_kernel, silu as silu_kernel, upsample};

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

    /// `x * sigmoid(x)`.
    pub fn silu(self, x: &Tensor) -> Result<Tensor> {
        if self.fused_for(x) {
            return x.contiguous()?.apply_op1(silu_kernel::Silu);
        }
        x.silu()
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

/// [`KernelBackend::silu`] with the fused backend.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    KernelBackend::Fused.silu(x)
}

/// [`KernelBackend::upsample_nearest2x`] with the fused backend.
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    KernelBackend::Fused.upsample_nearest2x(x)
}
