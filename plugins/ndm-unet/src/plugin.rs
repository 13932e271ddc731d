//! `backbone.unet`: the U-Net as the denoiser of image data `[C, H, W]`.
//!
//! The config is [`UNetConfig`]; the image channels (in and out) come from the latent shape the
//! pipeline builds the backbone for. On the CPU the network runs this crate's fused kernels, on
//! other devices candle's own ops ([`KernelBackend::for_device`]).

use candle_core::{Result, Tensor};
use ndm_api::registry::BuildCtx;
use ndm_api::{Backbone, NdmError, NetInput};

use crate::kernels::KernelBackend;
use crate::unet::{UNet, UNetConfig};

/// The plugin's full name, as in specs and errors.
pub const NAME: &str = "backbone.unet";

/// Builds the U-Net for `ctx.shape = [C, H, W]` with weights from `ctx.vb`, refusing (with an
/// error naming the field) a shape that is not an image or a config that does not fit it.
pub fn build_unet(cfg: UNetConfig, ctx: &BuildCtx) -> ndm_api::Result<UNet> {
    let &[c, h, w] = ctx.shape else {
        return Err(NdmError::Spec(format!(
            "{NAME} needs image data [C, H, W], got {:?}",
            ctx.shape
        )));
    };
    if c == 0 {
        return Err(NdmError::Spec(format!(
            "{NAME} needs at least one image channel, got [C, H, W] = {:?}",
            ctx.shape
        )));
    }
    cfg.validate().map_err(|e| NdmError::config(NAME, e))?;
    cfg.check_size(h, w)
        .map_err(|e| NdmError::config(NAME, e))?;
    let backend = KernelBackend::for_device(ctx.device);
    Ok(UNet::new(ctx.vb.clone(), &cfg, c, c, backend)?)
}

impl Backbone for UNet {
    fn forward(&self, input: &NetInput) -> Result<Tensor> {
        UNet::forward(self, input.z, input.t)
    }
}

ndm_api::register_plugin!(
    Backbone,
    "unet",
    "DDPM-style U-Net for image data [C, H, W], on fused CPU kernels",
    UNetConfig,
    |cfg: UNetConfig, ctx: &BuildCtx| Ok(Box::new(build_unet(cfg, ctx)?))
);
