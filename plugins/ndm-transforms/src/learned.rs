//! NDM's learned transformation `F_phi(x, t)`.

use ndm_api::candle_core::{Result, Tensor};
use ndm_api::registry::BuildCtx;
use ndm_api::transform::central_difference_dt;
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
    /// How `dF/dt` is computed: `forward-mode` (exact, one pass with a tangent through networks
    /// that have it, the MLP; a central difference through the others) or `central-difference`
    /// (always; the check, and the cost it replaces).
    pub time_derivative: TimeDerivative,
}

/// [`LearnedConfig::time_derivative`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeDerivative {
    #[default]
    ForwardMode,
    CentralDifference,
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
            time_derivative: TimeDerivative::default(),
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
/// stand-ins: the transform does not depend on the noise schedule). `dF/dt = g + t dg/dt`, with
/// `dg/dt` exact by forward mode through networks that have it (the MLP, the U-Net), else the central
/// difference of [`Transform`], for which `g` must be smooth in `t` on the scale of its step
/// (5e-3): the default nets embed time with frequencies up to 10, not DDPM's 1000, which would make
/// `F` oscillate with a period of 0.006 (and NDM's losses, which weigh `dF/dt`, hard to train).
#[derive(Debug)]
pub struct Learned {
    net: Box<dyn Backbone>,
    conditional: bool,
    forward_mode: bool,
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
        Ok(Learned {
            net,
            conditional,
            forward_mode: cfg.time_derivative == TimeDerivative::ForwardMode,
        })
    }
}

impl Learned {
    /// `g(x, t)`, and with `tangent` also `dg/dt` when the network has a forward mode.
    fn g(
        &self,
        x: &Tensor,
        t: &Tensor,
        class: Option<&Tensor>,
        tangent: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let ones = t.ones_like()?;
        let zeros = t.zeros_like()?;
        let input = NetInput {
            z: x,
            t,
            alpha: &ones,
            sigma: &ones,
            log_snr: &zeros,
            class: if self.conditional { class } else { None },
        };
        if tangent {
            if let Some(both) = self.net.forward_with_time_tangent(&input) {
                let (g, dg) = both?;
                return Ok((g, Some(dg)));
            }
        }
        Ok((self.net.forward(&input)?, None))
    }
}

impl Transform for Learned {
    fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.forward_with(x, t, None)
    }
    fn forward_with(&self, x: &Tensor, t: &Tensor, class: Option<&Tensor>) -> Result<Tensor> {
        let (g, _) = self.g(x, t, class, false)?;
        x + g.broadcast_mul(&ndm_api::schedule::per_example(t, x.rank())?)?
    }
    /// `dF/dt = g + t dg/dt` with `dg/dt` by forward mode through the network when it has one
    /// (the MLP, the U-Net), else the central difference of `F`.
    fn forward_and_time_derivative_with(
        &self,
        x: &Tensor,
        t: &Tensor,
        class: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let tt = ndm_api::schedule::per_example(t, x.rank())?;
        match self.g(x, t, class, self.forward_mode)? {
            (g, Some(dg)) => {
                let f = (x + g.broadcast_mul(&tt)?)?;
                let df = (&g + dg.broadcast_mul(&tt)?)?;
                Ok((f, df))
            }
            (g, None) => Ok((
                (x + g.broadcast_mul(&tt)?)?,
                central_difference_dt(|s| self.forward_with(x, s, class), t)?,
            )),
        }
    }
    fn time_derivative_with(
        &self,
        x: &Tensor,
        t: &Tensor,
        class: Option<&Tensor>,
    ) -> Result<Tensor> {
        Ok(self.forward_and_time_derivative_with(x, t, class)?.1)
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
