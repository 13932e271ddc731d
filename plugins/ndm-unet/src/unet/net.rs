//! The U-Net itself.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use ndm_api::Rng;

use super::{AttentionBlock, ResBlock, TimeEmbedding, UNetConfig};
use crate::kernels::KernelBackend;
use crate::layers::{Conv2d, GroupNorm};

/// A residual block, followed by self-attention at the levels that have it.
#[derive(Debug, Clone)]
struct Stage {
    res: ResBlock,
    attn: Option<AttentionBlock>,
}

impl Stage {
    /// The stage's output, and its tangent given those of its input and of the time embedding
    /// (`None`: zero; both zero, no tangent is computed).
    fn forward_with_tangent(
        &self,
        x: &Tensor,
        dx: Option<&Tensor>,
        temb: &Tensor,
        dtemb: Option<&Tensor>,
        rng: Option<&mut Rng>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (h, dh) = self.res.forward_with_tangent(x, dx, temb, dtemb, rng)?;
        match &self.attn {
            Some(a) => a.forward_with_tangent(&h, dh.as_ref()),
            None => Ok((h, dh)),
        }
    }
}

/// DDPM-style U-Net (layout in [`UNetConfig`]); `forward(x, t)` with `x: [B, in, H, W]`,
/// `t: [B]` in [0, 1].
#[derive(Debug, Clone)]
pub struct UNet {
    cfg: UNetConfig,
    in_channels: usize,
    out_channels: usize,
    attention: Vec<bool>,
    time: TimeEmbedding,
    /// A conditional network's class embedding, added to the time embedding (ADM's label
    /// embedding); see [`UNet::with_classes`].
    class: Option<ndm_api::embedding::ClassEmbedding>,
    conv_in: Conv2d,
    /// Per level, top to bottom: `blocks_per_level` stages.
    down: Vec<Vec<Stage>>,
    downsample: Vec<Conv2d>,
    mid: [Stage; 2],
    /// Per level, bottom to top: `blocks_per_level + 1` stages.
    up: Vec<Vec<Stage>>,
    upsample: Vec<Conv2d>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    backend: KernelBackend,
}

impl UNet {
    /// A U-Net from `in_channels` to `out_channels` image channels for `size = (H, W)` images
    /// (the size decides which levels get attention); errors (naming the field) when the config
    /// does not hold together or does not fit the size.
    pub fn new(
        vb: VarBuilder,
        cfg: &UNetConfig,
        in_channels: usize,
        out_channels: usize,
        size: (usize, usize),
        backend: KernelBackend,
    ) -> Result<Self> {
        if let Err(e) = cfg.validate() {
            candle_core::bail!("UNet: {e}");
        }
        if in_channels == 0 || out_channels == 0 {
            candle_core::bail!("UNet: need at least one input and output channel");
        }
        let attention = match cfg.attention_levels(size.0, size.1) {
            Ok(a) => a,
            Err(e) => candle_core::bail!("UNet: {e}"),
        };
        let ch = cfg.channels();
        let (levels, g, td, p) = (ch.len(), cfg.groups, cfg.time_embed_dim, cfg.dropout);
        let time = TimeEmbedding::new(
            vb.pp("time"),
            cfg.base_channels,
            cfg.time_scale,
            cfg.time_embedding,
            td,
            backend,
        )?;
        let stage = |vb: &VarBuilder, name: String, cin, cout, attn: bool| -> Result<Stage> {
            Ok(Stage {
                res: ResBlock::new(vb.pp(format!("res{name}")), cin, cout, td, g, p, backend)?,
                attn: if attn {
                    Some(AttentionBlock::new(
                        vb.pp(format!("attn{name}")),
                        cout,
                        cfg.attention_heads,
                        g,
                        backend,
                    )?)
                } else {
                    None
                },
            })
        };
        let conv_in = Conv2d::new(vb.pp("conv_in"), in_channels, ch[0], 3, 1, 1, backend)?;
        // Channels of every saved activation, in the order they are saved.
        let mut skips = vec![ch[0]];
        let (mut down, mut downsample) = (Vec::new(), Vec::new());
        let mut prev = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            let lvb = vb.pp(format!("down{i}"));
            let mut stages = Vec::new();
            for b in 0..cfg.blocks_per_level {
                stages.push(stage(&lvb, b.to_string(), prev, c, attention[i])?);
                prev = c;
                skips.push(c);
            }
            down.push(stages);
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
                skips.push(c);
            }
        }
        let mvb = vb.pp("mid");
        let mid_attn = attention[levels - 1];
        let mid = [
            stage(&mvb, "0".into(), prev, prev, mid_attn)?,
            stage(&mvb, "1".into(), prev, prev, false)?,
        ];
        let (mut up, mut upsample) = (Vec::new(), Vec::new());
        for (i, &c) in ch.iter().enumerate().rev() {
            let lvb = vb.pp(format!("up{i}"));
            let mut stages = Vec::new();
            for b in 0..=cfg.blocks_per_level {
                let s = skips.pop().expect("one saved activation per up block");
                stages.push(stage(&lvb, b.to_string(), prev + s, c, attention[i])?);
                prev = c;
            }
            up.push(stages);
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
        }
        debug_assert!(skips.is_empty());
        Ok(Self {
            cfg: cfg.clone(),
            in_channels,
            out_channels,
            attention,
            time,
            class: None,
            conv_in,
            down,
            downsample,
            mid,
            up,
            upsample,
            norm_out: GroupNorm::new(vb.pp("norm_out"), ch[0], g, true, backend)?,
            conv_out: Conv2d::zeros(vb.pp("conv_out"), ch[0], out_channels, 3, 1, 1, backend)?,
            backend,
        })
    }

    /// The same network, class-conditional on `classes` classes (plus "no class"): a learned
    /// class embedding under `vb.pp("class")` is added to the time embedding of every block.
    pub fn with_classes(mut self, vb: VarBuilder, classes: usize) -> Result<Self> {
        self.class = Some(ndm_api::embedding::ClassEmbedding::new(
            classes,
            self.cfg.time_embed_dim,
            vb.pp("class"),
        )?);
        Ok(self)
    }

    /// The number of classes of a conditional network (0 otherwise).
    pub fn classes(&self) -> usize {
        self.class.as_ref().map_or(0, |c| c.classes())
    }

    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    /// Image channels in and out.
    pub fn channels(&self) -> (usize, usize) {
        (self.in_channels, self.out_channels)
    }

    /// Whether each level (top to bottom) has self-attention; the middle has it when the last
    /// level has.
    pub fn attention_levels(&self) -> &[bool] {
        &self.attention
    }

    pub fn backend(&self) -> KernelBackend {
        self.backend
    }

    /// The deterministic network (no dropout) with the time embedding of `t`; errors for a
    /// config whose `time_embedding` is `"log-snr"` (use [`Self::forward_cond`]).
    pub fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.forward_classes(x, t, None, None, None)
    }

    /// The deterministic network (no dropout) given `t` and the log-SNR at `t` (`[B]`; used
    /// when `time_embedding` is `"log-snr"`).
    pub fn forward_cond(&self, x: &Tensor, t: &Tensor, log_snr: Option<&Tensor>) -> Result<Tensor> {
        self.forward_classes(x, t, log_snr, None, None)
    }

    /// The network in training mode: as [`Self::forward_cond`], with dropout (when the config's
    /// `dropout` is above 0) drawn from `rng`.
    pub fn forward_train(
        &self,
        x: &Tensor,
        t: &Tensor,
        log_snr: Option<&Tensor>,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        self.forward_classes(x, t, log_snr, None, Some(rng))
    }

    /// The network with classes (`u32` `[B]`, see [`ndm_api::NetInput::class`]; `None` is "no
    /// class"), in training mode when given a generator. A network without classes refuses
    /// `Some`.
    pub fn forward_classes(
        &self,
        x: &Tensor,
        t: &Tensor,
        log_snr: Option<&Tensor>,
        class: Option<&Tensor>,
        rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        let b = self.checked_batch(x)?;
        let emb = self.time.forward(t, log_snr, x.dtype())?;
        let temb = self.backend.silu(&self.with_class(emb, class, b)?)?;
        Ok(self.walk(x, &temb, None, rng)?.0)
    }

    /// The deterministic network and its exact derivative in `t` (each item's own; `x` and the
    /// class held fixed), by forward mode: every layer carries the tangent of its output beside
    /// it, from the time embedding's derivative on. The tangent is built from differentiable ops,
    /// so a loss on it trains the network (NDM's `dF/dt = g + t dg/dt` for `F = x + t g(x, t)`).
    /// `None` when the time embedding is of the log-SNR, which is not `t`.
    pub fn forward_and_time_tangent(
        &self,
        x: &Tensor,
        t: &Tensor,
        class: Option<&Tensor>,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let b = self.checked_batch(x)?;
        let Some((emb, demb)) = self.time.forward_with_dt(t, x.dtype())? else {
            return Ok(None);
        };
        let emb = self.with_class(emb, class, b)?;
        let temb = self.backend.silu(&emb)?;
        let dtemb = self.backend.silu_tangent(&emb, &demb)?;
        let (y, dy) = self.walk(x, &temb, Some(&dtemb), None)?;
        let dy = match dy {
            Some(d) => d,
            None => y.zeros_like()?,
        };
        Ok(Some((y, dy)))
    }

    /// The batch size of an input `[B, C, H, W]` whose spatial size the network accepts.
    fn checked_batch(&self, x: &Tensor) -> Result<usize> {
        let (b, _, h, w) = x.dims4()?;
        if let Err(e) = self.cfg.check_size(h, w) {
            candle_core::bail!("UNet: {e}");
        }
        Ok(b)
    }

    /// The time embedding plus a conditional network's class embedding; a network without
    /// classes refuses `Some` class.
    fn with_class(&self, emb: Tensor, class: Option<&Tensor>, b: usize) -> Result<Tensor> {
        match &self.class {
            Some(c) => &emb + c.forward(class, b, emb.dtype())?,
            None => {
                ndm_api::embedding::refuse_class(class, "UNet")?;
                Ok(emb)
            }
        }
    }

    /// The network from the input and the activated time embedding `temb`, with the output's
    /// tangent when `dtemb`, the embedding's tangent, is given (forward mode; nothing before the
    /// first residual block sees the time, so tangents start there), and dropout with `rng`.
    fn walk(
        &self,
        x: &Tensor,
        temb: &Tensor,
        dtemb: Option<&Tensor>,
        mut rng: Option<&mut Rng>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let mut h = self.conv_in.forward(x)?;
        let mut dh: Option<Tensor> = None;
        let mut skips = vec![(h.clone(), None)];
        for (i, level) in self.down.iter().enumerate() {
            for s in level {
                (h, dh) =
                    s.forward_with_tangent(&h, dh.as_ref(), temb, dtemb, rng.as_deref_mut())?;
                skips.push((h.clone(), dh.clone()));
            }
            if let Some(ds) = self.downsample.get(i) {
                let y = ds.forward(&h)?;
                dh = ds.tangent(&y, dh.as_ref(), None)?;
                h = y;
                skips.push((h.clone(), dh.clone()));
            }
        }
        for s in &self.mid {
            (h, dh) = s.forward_with_tangent(&h, dh.as_ref(), temb, dtemb, rng.as_deref_mut())?;
        }
        for (j, level) in self.up.iter().enumerate() {
            for s in level {
                let (skip, dskip) = skips.pop().expect("one saved activation per up block");
                let input = Tensor::cat(&[&h, &skip], 1)?;
                let dinput = match (dh, dskip) {
                    (None, None) => None,
                    (dh, dskip) => {
                        let dh = dh.map_or_else(|| h.zeros_like(), Ok)?;
                        let dskip = dskip.map_or_else(|| skip.zeros_like(), Ok)?;
                        Some(Tensor::cat(&[&dh, &dskip], 1)?)
                    }
                };
                (h, dh) = s.forward_with_tangent(
                    &input,
                    dinput.as_ref(),
                    temb,
                    dtemb,
                    rng.as_deref_mut(),
                )?;
            }
            if let Some(us) = self.upsample.get(j) {
                let y = us.forward(&self.backend.upsample_nearest2x(&h)?)?;
                let du = dh
                    .map(|d| self.backend.upsample_nearest2x(&d))
                    .transpose()?;
                dh = us.tangent(&y, du.as_ref(), None)?;
                h = y;
            }
        }
        let (n, dn) = self.norm_out.forward_with_tangent(&h, dh.as_ref())?;
        let y = self.conv_out.forward(&n)?;
        let dy = self.conv_out.tangent(&y, dn.as_ref(), None)?;
        Ok((y, dy))
    }
}
