//! The residual block: GN+SiLU -> conv3x3 -> + time projection -> GN+SiLU -> conv3x3, plus skip.

use candle_core::{Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

use crate::kernels::KernelBackend;
use crate::layers::{Conv2d, GroupNorm};

#[derive(Debug, Clone)]
pub struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    temb: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    skip: Option<Conv2d>,
}

impl ResBlock {
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        temb_dim: usize,
        groups: usize,
        backend: KernelBackend,
    ) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(vb.pp("norm1"), cin, groups, true, backend)?,
            conv1: Conv2d::new(vb.pp("conv1"), cin, cout, 3, 1, 1, backend)?,
            temb: linear(temb_dim, cout, vb.pp("temb"))?,
            norm2: GroupNorm::new(vb.pp("norm2"), cout, groups, true, backend)?,
            conv2: Conv2d::new(vb.pp("conv2"), cout, cout, 3, 1, 1, backend)?,
            skip: if cin != cout {
                Some(Conv2d::new(vb.pp("skip"), cin, cout, 1, 1, 0, backend)?)
            } else {
                None
            },
        })
    }

    /// `x: [B, Cin, H, W]`, `temb: [B, temb_dim]` (before its SiLU).
    pub fn forward(&self, x: &Tensor, temb_act: &Tensor) -> Result<Tensor> {
        // conv1(norm1(x)) + temb projection, the projection fused into conv1's bias.
        let t = self.temb.forward(temb_act)?;
        let h = self.conv1.forward_shifted(&self.norm1.forward(x)?, &t)?;
        let h = self.conv2.forward(&self.norm2.forward(&h)?)?;
        let skip = match &self.skip {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        h + skip
    }
}
