//! The U-Net itself.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::{ResBlock, TimeEmbedding, UNetConfig};
use crate::kernels::KernelBackend;
use crate::layers::{Conv2d, GroupNorm};

/// DDPM-style U-Net; `forward(x, t)` with `x: [B, in, H, W]`, `t: [B]` in [0, 1].
#[derive(Debug, Clone)]
pub struct UNet {
    cfg: UNetConfig,
    in_channels: usize,
    out_channels: usize,
    time: TimeEmbedding,
    conv_in: Conv2d,
    down: Vec<ResBlock>,
    downsample: Vec<Conv2d>,
    mid: ResBlock,
    up: Vec<ResBlock>,
    upsample: Vec<Conv2d>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    backend: KernelBackend,
}

impl UNet {
    /// A U-Net from `in_channels` to `out_channels` image channels; errors (naming the field)
    /// when the config does not hold together.
    pub fn new(
        vb: VarBuilder,
        cfg: &UNetConfig,
        in_channels: usize,
        out_channels: usize,
        backend: KernelBackend,
    ) -> Result<Self> {
        if let Err(e) = cfg.validate() {
            candle_core::bail!("UNet: {e}");
        }
        if in_channels == 0 || out_channels == 0 {
            candle_core::bail!("UNet: need at least one input and output channel");
        }
        let ch = cfg.channels();
        let (levels, g, td) = (ch.len(), cfg.groups, cfg.time_embed_dim);
        let time = TimeEmbedding::new(
            vb.pp("time"),
            cfg.base_channels,
            cfg.time_scale,
            td,
            backend,
        )?;
        let conv_in = Conv2d::new(vb.pp("conv_in"), in_channels, ch[0], 3, 1, 1, backend)?;
        let (mut down, mut downsample) = (Vec::new(), Vec::new());
        let mut prev = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            down.push(ResBlock::new(
                vb.pp(format!("down{i}")),
                prev,
                c,
                td,
                g,
                backend,
            )?);
            if i + 1 < levels {
                downsample.push(Conv2d::new(
                    vb.pp(format!("downsample{i}")),
                    c,
                    c,
                    3,
                    2,
                    1,
                    backend,
                )?);
            }
            prev = c;
        }
        let mid = ResBlock::new(vb.pp("mid"), prev, prev, td, g, backend)?;
        let (mut up, mut upsample) = (Vec::new(), Vec::new());
        for (i, &c) in ch.iter().enumerate().rev() {
            up.push(ResBlock::new(
                vb.pp(format!("up{i}")),
                prev + c,
                c,
                td,
                g,
                backend,
            )?);
            if i > 0 {
                upsample.push(Conv2d::new(
                    vb.pp(format!("upsample{i}")),
                    c,
                    c,
                    3,
                    1,
                    1,
                    backend,
                )?);
            }
            prev = c;
        }
        Ok(Self {
            cfg: cfg.clone(),
            in_channels,
            out_channels,
            time,
            conv_in,
            down,
            downsample,
            mid,
            up,
            upsample,
            norm_out: GroupNorm::new(vb.pp("norm_out"), ch[0], g, true, backend)?,
            conv_out: Conv2d::new(vb.pp("conv_out"), ch[0], out_channels, 3, 1, 1, backend)?,
            backend,
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    /// Image channels in and out.
    pub fn channels(&self) -> (usize, usize) {
        (self.in_channels, self.out_channels)
    }

    pub fn backend(&self) -> KernelBackend {
        self.backend
    }

    pub fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        if let Err(e) = self.cfg.check_size(h, w) {
            candle_core::bail!("UNet: {e}");
        }
        let temb = self
            .backend
            .silu(&self.time.forward(&t.to_dtype(x.dtype())?)?)?;
        let mut h = self.conv_in.forward(x)?;
        let mut skips = Vec::with_capacity(self.down.len());
        for (i, block) in self.down.iter().enumerate() {
            h = block.forward(&h, &temb)?;
            skips.push(h.clone());
            if let Some(ds) = self.downsample.get(i) {
                h = ds.forward(&h)?;
            }
        }
        h = self.mid.forward(&h, &temb)?;
        for (j, block) in self.up.iter().enumerate() {
            let skip = skips.pop().expect("one skip per level");
            h = block.forward(&Tensor::cat(&[&h, &skip], 1)?, &temb)?;
            if let Some(us) = self.upsample.get(j) {
                h = us.forward(&self.backend.upsample_nearest2x(&h)?)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward(&h)?)
    }
}
