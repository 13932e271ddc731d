//! NDM's learned transformation `F_phi(x, t)`.

use ndm_api::candle_core::{Result, Tensor};
use ndm_api::registry::BuildCtx;
use ndm_api::{Backbone, NetInput, PluginSpec, Transform};
use serde::{Deserialize, Serialize};

/// `transform.learned` config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearnedConfig {
    /// The network `g_phi`: any backbone plugin (the MLP for flat data, the U-Net for images).
    pub net: PluginSpec,
    /// In a class-conditional model: whether `g` sees the class too (`F(x, t | c)`), so each
    /// class gets its own transformation. Off, `F` is shared by all classes.
    pub conditional: bool,
}

impl Default for LearnedConfig {
    fn default() -> Self {
        let mut net = PluginSpec::new("mlp");
        net.set("hidden", "128");
        net.set("blocks", "2");
        net.set("time_scale", "10.0");
        LearnedConfig {
            net,
            conditional: false,
        }
    }
}

/// `F_phi(x, t) = x + t g_phi(x, t)`.
///
/// Why this form: `F(x, 0) = x` exactly, so `z_0 ~ N(alpha_0 x, sigma_0^2)` stays next to the data
/// and the Gaussian decoder of `L_rec` stays meaningful whatever `phi` learns; the deviation from
/// the identity is free everywhere else (NDM lets the network reshape the whole path, and the prior
/// term keeps `alpha_1 F(x, 1)` near 0). `g` is the backbone under the prefix `transform.net.`; it
/// sees `x` as its input latent and `t` as its time (the schedule fields of its input carry `t`-only
/// stand-ins: the transform does not depend on the noise schedule). `dF/dt` is the default
/// central difference of [`Transform`], so `g` must be smooth in `t` on the scale of its step
/// (5e-3): the default MLP embeds time with frequencies up to 10, not DDPM's 1000, which would make
/// `F` oscillate with a period of 0.006 and its derivative meaningless.
#[derive(Debug)]
pub struct Learned {
    net: Box<dyn Backbone>,
    conditional: bool,
}

impl Learned {
    pub fn new(cfg: LearnedConfig, ctx: &BuildCtx) -> ndm_api::Result<Self> {
        let conditional = cfg.conditional && ctx.classes > 0;
        let mut net_ctx = ctx.pp("net", ctx.shape);
        if !conditional {
            net_ctx.classes = 0;
        }
        let net = ctx.registry.build_backbone(&cfg.net, &net_ctx)?;
        if net.predicts_data() {
            return Err(ndm_api::NdmError::invalid_param(format!(
                "backbone {} has no weights to learn a transform with",
                cfg.net.kind
            )));
        }
        Ok(Learned { net, conditional })
    }
}

impl Transform for Learned {
    fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.forward_with(x, t, None)
    }
    fn forward_with(&self, x: &Tensor, t: &Tensor, class: Option<&Tensor>) -> Result<Tensor> {
        let ones = t.ones_like()?;
        let zeros = t.zeros_like()?;
        let g = self.net.forward(&NetInput {
            z: x,
            t,
            alpha: &ones,
            sigma: &ones,
            log_snr: &zeros,
            class: if self.conditional { class } else { None },
        })?;
        x + g.broadcast_mul(&ndm_api::schedule::per_example(t, x.rank())?)?
    }
    fn is_trainable(&self) -> bool {
        true
    }
    fn identity_at_zero(&self) -> bool {
        true
    }
}

ndm_api::register_plugin!(
    Transform,
    "learned",
    "NDM: F(x, t) = x + t g_phi(x, t) with g any backbone (trained through the NELBO)",
    LearnedConfig,
    |cfg: LearnedConfig, ctx: &BuildCtx| Ok(Box::new(Learned::new(cfg, ctx)?))
);
