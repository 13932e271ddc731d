//! `backbone.unet`: the U-Net as the denoiser of image data `[C, H, W]`.
//!
//! The config is [`UNetConfig`]; the image channels (in and out) and size come from the latent
//! shape the pipeline builds the backbone for. On the CPU the network runs this crate's fused
//! kernels, on other devices candle's own ops ([`KernelBackend::for_device`]).
//!
//! Dropout is refused here: [`Backbone::forward`] is called alike by the objectives (training) and
//! by `ReverseProcess::predict_x` (sampling, evaluation), with no flag that tells them apart and no
//! `Rng`, so a dropout applied in `forward` would also apply when sampling. The network has it
//! ([`UNet::forward_train`]); the plugin can use it once the trait has a training entry point.

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
    if cfg.dropout > 0.0 {
        return Err(NdmError::config(
            NAME,
            format!(
                "dropout = {} is not supported yet: the Backbone trait cannot tell training from \
                 sampling, so dropout would also apply when sampling; use dropout = 0",
                cfg.dropout
            ),
        ));
    }
    let backend = KernelBackend::for_device(ctx.device);
    Ok(UNet::new(ctx.vb.clone(), &cfg, c, c, (h, w), backend)?)
}

impl Backbone for UNet {
    fn forward(&self, input: &NetInput) -> Result<Tensor> {
        UNet::forward_cond(self, input.z, input.t, Some(input.log_snr))
    }
}

ndm_api::register_plugin!(
    Backbone,
    "unet",
    "DDPM/ADM-style U-Net for image data [C, H, W] (residual blocks, self-attention), on fused CPU kernels",
    UNetConfig,
    |cfg: UNetConfig, ctx: &BuildCtx| Ok(Box::new(build_unet(cfg, ctx)?))
);
