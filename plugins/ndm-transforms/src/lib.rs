//! Data transformations `F(x, t)`: `transform.identity` (DDPM, DDIM, VDM, flow matching),
//! `transform.learned` (Neural Diffusion Models), `transform.blur` (blurring diffusion) and
//! `transform.chain` (a composition of transforms) and `transform.vae` (LSGM's VAE).

mod blur;
mod chain;
mod learned;
mod vae;

pub use blur::{dct_matrix, Blur, BlurConfig};
pub use chain::{Chain, ChainConfig};
pub use learned::{Learned, LearnedConfig};
use ndm_api::registry::NoParams;
pub use vae::{Vae, VaeConfig};

use ndm_api::candle_core::{Result, Tensor};
use ndm_api::registry::BuildCtx;
use ndm_api::Transform;

/// `F(x, t) = x`.
#[derive(Debug, Clone, Default)]
pub struct Identity;

impl Transform for Identity {
    fn forward(&self, x: &Tensor, _t: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn is_identity(&self) -> bool {
        true
    }
}

ndm_api::register_plugin!(
    Transform,
    "identity",
    "F(x, t) = x: standard diffusion (DDPM, DDIM, VDM, flow matching)",
    NoParams,
    |_cfg: NoParams, _ctx: &BuildCtx| Ok(Box::new(Identity))
);
