//! `transform.chain`: the composition `F(x, t) = F_n(... F_2(F_1(x, t), t) ..., t)`, so that a
//! hybrid such as NDM in a VAE's latent space (the NDM paper's Latent NDM) is a spec, not code.

use ndm_api::candle_core::{Result, Tensor};
use ndm_api::registry::BuildCtx;
use ndm_api::{Diagonal, Encoder, NdmError, PluginSpec, Transform};
use serde::{Deserialize, Serialize};

/// `transform.chain` config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChainConfig {
    /// The transforms in the order they apply to the data, each `{ kind, params }`; part `i`'s
    /// weights live under `transform.<i>.` and it sees the previous part's latent shape.
    pub parts: Vec<PluginSpec>,
}

impl Default for ChainConfig {
    fn default() -> Self {
        ChainConfig {
            parts: vec![PluginSpec::new("identity")],
        }
    }
}

/// The composition of its parts. `dF/dt` is the default central difference of the whole chain;
/// the decoder of a part that has one is used by `decode` in reverse order. Only the first part
/// sees the data, so only it may have an encoder (LSGM's VAE: `[vae, learned]` is Latent NDM) or
/// score `x` in `reconstruction_nll`.
#[derive(Debug)]
pub struct Chain {
    parts: Vec<Box<dyn Transform>>,
}

impl Chain {
    pub fn new(cfg: ChainConfig, ctx: &BuildCtx) -> ndm_api::Result<Self> {
        if cfg.parts.is_empty() {
            return Err(NdmError::invalid_param(
                "parts must name at least one transform",
            ));
        }
        let mut shape = ctx.shape.to_vec();
        let mut parts = Vec::with_capacity(cfg.parts.len());
        for (i, spec) in cfg.parts.iter().enumerate() {
            let input = shape.clone();
            let part_ctx = BuildCtx {
                device: ctx.device,
                dtype: ctx.dtype,
                shape: &input,
                vb: ctx.vb.pp(i.to_string()),
                registry: ctx.registry,
                classes: ctx.classes,
            };
            let part = ctx.registry.build_transform(spec, &part_ctx)?;
            if i > 0 && part.encoder().is_some() {
                return Err(NdmError::invalid_param(format!(
                    "parts[{i}] = {} has an encoder, which only the first part may have (it sees the data)",
                    spec.kind
                )));
            }
            shape = part.latent_shape(&input);
            parts.push(part);
        }
        Ok(Chain { parts })
    }
}

impl Transform for Chain {
    fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.forward_with(x, t, None)
    }

    fn forward_with(&self, x: &Tensor, t: &Tensor, class: Option<&Tensor>) -> Result<Tensor> {
        let mut y = x.clone();
        for part in &self.parts {
            y = part.forward_with(&y, t, class)?;
        }
        Ok(y)
    }

    fn latent_shape(&self, data_shape: &[usize]) -> Vec<usize> {
        self.parts
            .iter()
            .fold(data_shape.to_vec(), |s, p| p.latent_shape(&s))
    }

    /// A one-part chain is that part, diagonal form included.
    fn diagonal(&self) -> Option<&dyn Diagonal> {
        match self.parts.as_slice() {
            [only] => only.diagonal(),
            _ => None,
        }
    }

    fn is_identity(&self) -> bool {
        self.parts.iter().all(|p| p.is_identity())
    }

    fn is_time_independent(&self) -> bool {
        self.parts.iter().all(|p| p.is_time_independent())
    }

    fn identity_at_zero(&self) -> bool {
        self.parts.iter().all(|p| p.identity_at_zero())
    }

    fn is_trainable(&self) -> bool {
        self.parts.iter().any(|p| p.is_trainable())
    }

    fn encoder(&self) -> Option<&dyn Encoder> {
        self.parts[0].encoder()
    }

    fn decode(&self, z0: &Tensor) -> Result<Option<Tensor>> {
        let mut z = z0.clone();
        let mut decoded = false;
        for part in self.parts.iter().rev() {
            if let Some(y) = part.decode(&z)? {
                z = y;
                decoded = true;
            }
        }
        Ok(decoded.then_some(z))
    }

    fn reconstruction_nll(&self, x: &Tensor, z0: &Tensor) -> Result<Option<Tensor>> {
        self.parts[0].reconstruction_nll(x, z0)
    }
}

ndm_api::register_plugin!(
    Transform,
    "chain",
    "F = F_n o ... o F_1: the composition of transforms (e.g. [vae, learned], Latent NDM)",
    ChainConfig,
    |cfg: ChainConfig, ctx: &BuildCtx| Ok(Box::new(Chain::new(cfg, ctx)?))
);

#[cfg(test)]
mod tests {
    use super::*;
    use ndm_api::candle_core::DType;
    use ndm_api::candle_nn::VarMap;
    use ndm_api::testing::test_device;
    use ndm_api::vars::seeded_var_builder;
    use ndm_api::Rng;

    fn build(parts: &[&str]) -> Chain {
        let registry = ndm_api::PluginRegistry::builtin();
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, 0, DType::F32, test_device());
        let shape = [2usize];
        let ctx = BuildCtx {
            device: test_device(),
            dtype: DType::F32,
            shape: &shape,
            vb,
            registry: &registry,
            classes: 0,
        };
        let cfg = ChainConfig {
            parts: parts.iter().map(|k| PluginSpec::new(*k)).collect(),
        };
        Chain::new(cfg, &ctx).unwrap()
    }

    #[test]
    fn a_chain_of_identities_is_the_identity() {
        let chain = build(&["identity", "identity", "identity"]);
        assert!(chain.is_identity() && chain.identity_at_zero() && !chain.is_trainable());
        assert_eq!(chain.latent_shape(&[2]), vec![2]);
        let x = Rng::new(0)
            .normal_tensor(&[5, 2], DType::F32, test_device())
            .unwrap();
        let t = Tensor::new(&[0.0f32, 0.25, 0.5, 0.75, 1.0], test_device()).unwrap();
        let y = chain.forward(&x, &t).unwrap();
        let diff = (y - &x).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        let dot = chain.time_derivative(&x, &t).unwrap();
        assert_eq!(
            dot.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        assert!(chain.decode(&x).unwrap().is_none());
    }
}
