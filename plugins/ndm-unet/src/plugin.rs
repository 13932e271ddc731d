//! `backbone.unet`: the U-Net as the denoiser of image data `[C, H, W]`.
//!
//! The config is [`UNetConfig`]; the image channels (in and out) and size come from the latent
//! shape the pipeline builds the backbone for. On the CPU the network runs this crate's fused
//! kernels, on other devices candle's own ops ([`KernelBackend::for_device`]).
//!
//! Dropout applies only in training: the pipeline calls [`Backbone::forward_train`] with the
//! trainer's per-step generator during a training step and [`Backbone::forward`] otherwise
//! (sampling and evaluation are deterministic).

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
    cfg.check_image(h, w)
        .map_err(|e| NdmError::config(NAME, e))?;
    let backend = KernelBackend::for_device(ctx.device);
    let net = UNet::new(ctx.vb.clone(), &cfg, c, c, (h, w), backend)?;
    if ctx.classes > 0 {
        return Ok(net.with_classes(ctx.vb.clone(), ctx.classes)?);
    }
    Ok(net)
}

impl Backbone for UNet {
    fn forward(&self, input: &NetInput) -> Result<Tensor> {
        self.forward_classes(input.z, input.t, Some(input.log_snr), input.class, None)
    }
    fn forward_train(&self, input: &NetInput, rng: &mut ndm_api::Rng) -> Result<Tensor> {
        self.forward_classes(
            input.z,
            input.t,
            Some(input.log_snr),
            input.class,
            Some(rng),
        )
    }
    fn forward_with_time_tangent(&self, input: &NetInput) -> Option<Result<(Tensor, Tensor)>> {
        match self.forward_and_time_tangent(input.z, input.t, input.class) {
            Ok(Some(both)) => Some(Ok(both)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

ndm_api::register_plugin!(
    Backbone,
    "unet",
    "DDPM/ADM-style U-Net for image data [C, H, W] (residual blocks, self-attention), on fused CPU kernels",
    UNetConfig,
    |cfg: UNetConfig, ctx: &BuildCtx| Ok(Box::new(build_unet(cfg, ctx)?))
);
