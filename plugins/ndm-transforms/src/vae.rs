//! `transform.vae`: LSGM's variational autoencoder (Vahdat et al. 2021) in front of the diffusion.
//!
//! The encoder gives `q(z_0 | x) = N(mean(x), diag(std(x)^2))`; the pipeline draws `z_0` once per
//! example (`ndm_api::elbo::encode`) and the whole diffusion models that draw, so on latents this
//! transform is the identity. The decoder `p(x | z_0)` has a learned scale per channel (images)
//! or per dimension (flat data) around a decoded mean, and is the model's `decoder`: a Gaussian
//! density (continuous or dequantized data) or, for 8-bit pixels, a discretized logistic (the
//! probability of each value's cell); samples are that mean.

use ndm_api::candle_core::{Module, Result, Tensor};
use ndm_api::candle_nn::{self, Init, Linear, VarBuilder};
use ndm_api::elbo::{discretized_logistic_nll, HALF_LN_2PI};
use ndm_api::registry::BuildCtx;
use ndm_api::{Decoder, Encoder, NdmError, Transform};
use ndm_unet::layers::Conv2d;
use ndm_unet::KernelBackend;
use serde::{Deserialize, Serialize};

/// `transform.vae` config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaeConfig {
    /// Images: channels of the latent `[latent_channels, H / 2^downsample, W / 2^downsample]`.
    pub latent_channels: usize,
    /// Images: stride-2 stages of the encoder (and 2x upsamplings of the decoder).
    pub downsample: usize,
    /// Flat data: dimensions of the latent.
    pub latent_dim: usize,
    /// Hidden channels (images) or units (flat data) of the encoder and the decoder.
    pub hidden: usize,
    /// The decoder's initial log standard deviation.
    pub init_log_scale: f64,
}

impl Default for VaeConfig {
    fn default() -> Self {
        VaeConfig {
            latent_channels: 4,
            downsample: 1,
            latent_dim: 2,
            hidden: 64,
            init_log_scale: -1.0,
        }
    }
}

#[derive(Debug)]
enum Nets {
    /// Encoder convolutions (the first, then one stride-2 per stage, then the output), decoder
    /// convolutions (the first, one per 2x upsampling, the output).
    Conv {
        enc: Vec<Conv2d>,
        dec: Vec<Conv2d>,
        backend: KernelBackend,
    },
    Mlp {
        enc: Vec<Linear>,
        dec: Vec<Linear>,
    },
}

/// The VAE: encoder, decoder and the decoder's log-scale.
#[derive(Debug)]
pub struct Vae {
    nets: Nets,
    log_scale: Tensor,
    latent: Vec<usize>,
}

fn conv(
    vb: VarBuilder,
    cin: usize,
    cout: usize,
    stride: usize,
    b: KernelBackend,
) -> Result<Conv2d> {
    Conv2d::new(vb, cin, cout, 3, stride, 1, b)
}

impl Vae {
    pub fn new(cfg: VaeConfig, ctx: &BuildCtx) -> ndm_api::Result<Self> {
        let vb = ctx.vb.clone();
        let h = cfg.hidden;
        if h == 0 {
            return Err(NdmError::invalid_param("hidden must be at least 1"));
        }
        match *ctx.shape {
            [c, height, width] => {
                let k = 1usize << cfg.downsample.min(30);
                if cfg.latent_channels == 0 || height % k != 0 || width % k != 0 {
                    return Err(NdmError::invalid_param(format!(
                        "downsample = {}, latent_channels = {}: the image side {height} x {width} \
                         must be divisible by 2^downsample = {k}, with at least one latent channel",
                        cfg.downsample, cfg.latent_channels
                    )));
                }
                let backend = KernelBackend::for_device(ctx.device);
                let (ev, dv) = (vb.pp("encoder"), vb.pp("decoder"));
                let mut enc = vec![conv(ev.pp("in"), c, h, 1, backend)?];
                let mut dec = vec![conv(dv.pp("in"), cfg.latent_channels, h, 1, backend)?];
                for i in 0..cfg.downsample {
                    enc.push(conv(ev.pp(format!("down{i}")), h, h, 2, backend)?);
                    dec.push(conv(dv.pp(format!("up{i}")), h, h, 1, backend)?);
                }
                enc.push(conv(ev.pp("out"), h, 2 * cfg.latent_channels, 1, backend)?);
                dec.push(conv(dv.pp("out"), h, c, 1, backend)?);
                Ok(Vae {
                    nets: Nets::Conv { enc, dec, backend },
                    log_scale: vb.get_with_hints(
                        c,
                        "log_scale",
                        Init::Const(cfg.init_log_scale),
                    )?,
                    latent: vec![cfg.latent_channels, height / k, width / k],
                })
            }
            [d] => {
                if cfg.latent_dim == 0 {
                    return Err(NdmError::invalid_param("latent_dim must be at least 1"));
                }
                let (ev, dv) = (vb.pp("encoder"), vb.pp("decoder"));
                let l = cfg.latent_dim;
                let enc = vec![
                    candle_nn::linear(d, h, ev.pp("in"))?,
                    candle_nn::linear(h, h, ev.pp("mid"))?,
                    candle_nn::linear(h, 2 * l, ev.pp("out"))?,
                ];
                let dec = vec![
                    candle_nn::linear(l, h, dv.pp("in"))?,
                    candle_nn::linear(h, h, dv.pp("mid"))?,
                    candle_nn::linear(h, d, dv.pp("out"))?,
                ];
                Ok(Vae {
                    nets: Nets::Mlp { enc, dec },
                    log_scale: vb.get_with_hints(
                        d,
                        "log_scale",
                        Init::Const(cfg.init_log_scale),
                    )?,
                    latent: vec![l],
                })
            }
            _ => Err(NdmError::invalid_param(format!(
                "a VAE needs flat data or [C, H, W] images, got shape {:?}",
                ctx.shape
            ))),
        }
    }

    /// The decoder's mean of `x` given `z`.
    pub fn decode_mean(&self, z: &Tensor) -> Result<Tensor> {
        match &self.nets {
            Nets::Conv { dec, backend, .. } => {
                let last = dec.len() - 1;
                let mut h = backend.silu(&dec[0].forward(z)?)?;
                for layer in &dec[1..last] {
                    h = backend.silu(&layer.forward(&backend.upsample_nearest2x(&h)?)?)?;
                }
                dec[last].forward(&h)
            }
            Nets::Mlp { dec, .. } => mlp(dec, z),
        }
    }

    /// The log-scale viewed for broadcasting against data of `rank`.
    fn scale_view(&self, rank: usize) -> Result<Tensor> {
        if rank == 4 {
            self.log_scale.reshape((1, (), 1, 1))
        } else {
            self.log_scale.unsqueeze(0)
        }
    }
}

fn mlp(layers: &[Linear], x: &Tensor) -> Result<Tensor> {
    let last = layers.len() - 1;
    let mut h = x.clone();
    for layer in &layers[..last] {
        h = layer.forward(&h)?.silu()?;
    }
    layers[last].forward(&h)
}

impl Encoder for Vae {
    fn posterior(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let out = match &self.nets {
            Nets::Conv { enc, backend, .. } => {
                let last = enc.len() - 1;
                let mut h = x.clone();
                for layer in &enc[..last] {
                    h = backend.silu(&layer.forward(&h)?)?;
                }
                enc[last].forward(&h)?
            }
            Nets::Mlp { enc, .. } => mlp(enc, x)?,
        };
        let c = self.latent[0];
        Ok((out.narrow(1, 0, c)?, out.narrow(1, c, c)?))
    }

    /// Gaussian: `sum 1/2 ((x - mu) / s)^2 + log s + 1/2 ln(2 pi)` per example. Discretized: the
    /// mass of a logistic with mean `mu` and scale `s` on each 8-bit value's cell
    /// ([`discretized_logistic_nll`]).
    fn decoder_nll(&self, x: &Tensor, z: &Tensor, decoder: Decoder) -> Result<Tensor> {
        let mu = self.decode_mean(z)?;
        let ls = self.scale_view(x.rank())?;
        match decoder {
            Decoder::Gaussian => {
                let u = (x - mu)?.broadcast_mul(&ls.neg()?.exp()?)?;
                let per = ((u.sqr()? * 0.5)?.broadcast_add(&ls)? + HALF_LN_2PI)?;
                per.flatten_from(1)?.sum(1)
            }
            Decoder::Discretized => discretized_logistic_nll(x, &mu, &ls, 256),
        }
    }
}

impl Transform for Vae {
    /// On latents (what the pipeline passes once it has encoded the data) the identity.
    fn forward(&self, x: &Tensor, _t: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }

    fn is_time_independent(&self) -> bool {
        true
    }

    fn latent_shape(&self, _data_shape: &[usize]) -> Vec<usize> {
        self.latent.clone()
    }

    fn is_trainable(&self) -> bool {
        true
    }

    fn encoder(&self) -> Option<&dyn Encoder> {
        Some(self)
    }

    fn decode(&self, z0: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.decode_mean(z0)?))
    }
}

ndm_api::register_plugin!(
    Transform,
    "vae",
    "LSGM: a VAE in front of the diffusion (conv for images, MLP for flat data); the NELBO adds its decoder NLL and encoder entropy",
    VaeConfig,
    |cfg: VaeConfig, ctx: &BuildCtx| Ok(Box::new(Vae::new(cfg, ctx)?))
);
