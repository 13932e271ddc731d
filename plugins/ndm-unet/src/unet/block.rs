//! The residual block: GN+SiLU -> conv3x3 -> + time projection -> GN+SiLU -> dropout -> conv3x3,
//! plus skip (a 1x1 conv when the channel count changes).

use candle_core::{Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};
use ndm_api::rng::host_tensor;
use ndm_api::Rng;

use crate::kernels::KernelBackend;
use crate::layers::{Conv2d, GroupNorm};

#[derive(Debug, Clone)]
pub struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    temb: Linear,
    norm2: GroupNorm,
    dropout: f64,
    conv2: Conv2d,
    skip: Option<Conv2d>,
}

impl ResBlock {
    /// `dropout` (in [0, 1)) applies only when [`Self::forward`] is given an `Rng`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        temb_dim: usize,
        groups: usize,
        dropout: f64,
        backend: KernelBackend,
    ) -> Result<Self> {
        if !(0.0..1.0).contains(&dropout) {
            candle_core::bail!("ResBlock: dropout must be in [0, 1), got {dropout}");
        }
        Ok(Self {
            norm1: GroupNorm::new(vb.pp("norm1"), cin, groups, true, backend)?,
            conv1: Conv2d::new(vb.pp("conv1"), cin, cout, 3, 1, 1, backend)?,
            temb: linear(temb_dim, cout, vb.pp("temb"))?,
            norm2: GroupNorm::new(vb.pp("norm2"), cout, groups, true, backend)?,
            dropout,
            conv2: Conv2d::new(vb.pp("conv2"), cout, cout, 3, 1, 1, backend)?,
            skip: if cin != cout {
                Some(Conv2d::new(vb.pp("skip"), cin, cout, 1, 1, 0, backend)?)
            } else {
                None
            },
        })
    }

    /// `x: [B, Cin, H, W]`, `temb_act: [B, temb_dim]` (after its SiLU). With `rng`, dropout
    /// (when above 0) zeroes each activation before the second conv with probability `dropout`
    /// and scales the rest by `1 / (1 - dropout)`; without, the block is deterministic.
    pub fn forward(&self, x: &Tensor, temb_act: &Tensor, rng: Option<&mut Rng>) -> Result<Tensor> {
        Ok(self.forward_with_tangent(x, None, temb_act, None, rng)?.0)
    }

    /// [`Self::forward`] with the tangent of the output for the tangents `dx` of `x` and `dtemb`
    /// of `temb_act` (forward mode in the time; `None` is a zero tangent, and with both zero no
    /// tangent is computed). Dropout's mask, when drawn, applies to the tangent too.
    pub fn forward_with_tangent(
        &self,
        x: &Tensor,
        dx: Option<&Tensor>,
        temb_act: &Tensor,
        dtemb: Option<&Tensor>,
        rng: Option<&mut Rng>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        // conv1(norm1(x)) + temb projection, the projection fused into conv1's bias.
        let t = self.temb.forward(temb_act)?;
        let dt = dtemb
            .map(|d| d.matmul(&self.temb.weight().t()?))
            .transpose()?;
        let (n1, dn1) = self.norm1.forward_with_tangent(x, dx)?;
        let h = self.conv1.forward_shifted(&n1, &t)?;
        let dh = self.conv1.tangent(&h, dn1.as_ref(), dt.as_ref())?;
        let (mut n2, mut dn2) = self.norm2.forward_with_tangent(&h, dh.as_ref())?;
        if let Some(rng) = rng {
            if self.dropout > 0.0 {
                let mask = dropout_mask(rng, n2.dims(), self.dropout, &n2)?;
                n2 = (n2 * &mask)?;
                dn2 = dn2.map(|d| d * &mask).transpose()?;
            }
        }
        let h2 = self.conv2.forward(&n2)?;
        let dh2 = self.conv2.tangent(&h2, dn2.as_ref(), None)?;
        let (skip, dskip) = match &self.skip {
            Some(s) => {
                let y = s.forward(x)?;
                let dy = s.tangent(&y, dx, None)?;
                (y, dy)
            }
            None => (x.clone(), dx.cloned()),
        };
        Ok(((h2 + skip)?, add_tangents(dh2, dskip)?))
    }
}

/// The sum of two tangents, `None` standing for zero.
pub(crate) fn add_tangents(a: Option<Tensor>, b: Option<Tensor>) -> Result<Option<Tensor>> {
    Ok(match (a, b) {
        (Some(a), Some(b)) => Some((a + b)?),
        (a, None) => a,
        (None, b) => b,
    })
}

/// Inverted-dropout mask like `like`: 0 with probability `p`, else `1 / (1 - p)`, drawn from the
/// seeded `rng` (never candle's unseeded RNG).
fn dropout_mask(rng: &mut Rng, dims: &[usize], p: f64, like: &Tensor) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let keep = 1.0 / (1.0 - p);
    let m: Vec<f64> = (0..n)
        .map(|_| if rng.uniform() < p { 0.0 } else { keep })
        .collect();
    host_tensor(m, dims, like.dtype(), like.device())
}
