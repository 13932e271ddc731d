//! Trainable weights: one `VarMap` per pipeline, filled from the run's seeded generator.
//!
//! candle's own initialisers draw from its unseedable CPU RNG. [`SeededInit`] is a `VarBuilder`
//! backend that creates each variable from a stream derived from `(seed, variable name)`, so the
//! initial weights depend on neither creation order nor thread count.

use crate::rng::{host_tensor, Rng};
use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::{Init, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};

/// A `VarBuilder` backend over a `VarMap` with seeded initialisation.
pub struct SeededInit {
    pub varmap: VarMap,
    pub seed: u64,
}

fn draw(init: Init, shape: &Shape, rng: &mut Rng) -> Vec<f64> {
    let n = shape.elem_count();
    match init {
        Init::Const(v) => vec![v; n],
        Init::Randn { mean, stdev } => rng
            .normal_vec(n)
            .into_iter()
            .map(|x| mean + stdev * x)
            .collect(),
        Init::Uniform { lo, up } => rng.uniform_vec(n, lo, up),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let fan = fan.for_shape(shape).max(1) as f64;
            let std = non_linearity.gain() / fan.sqrt();
            match dist {
                NormalOrUniform::Normal => rng.normal_vec(n).into_iter().map(|x| std * x).collect(),
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    rng.uniform_vec(n, -bound, bound)
                }
            }
        }
    }
}

impl std::fmt::Debug for SeededInit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeededInit")
            .field("seed", &self.seed)
            .finish()
    }
}

impl SimpleBackend for SeededInit {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle_core::bail!("shape mismatch on {name}: {s:?} <> {:?}", v.shape());
            }
            return Ok(v.as_tensor().clone());
        }
        let mut rng = Rng::derived(self.seed, name);
        let t = host_tensor(draw(h, &s, &mut rng), s.dims(), dtype, dev)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        let data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
        data.get(name)
            .map(|v| v.as_tensor().clone())
            .ok_or_else(|| candle_core::Error::Msg(format!("no variable {name}")))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
    }
}

/// A `VarBuilder` that creates seeded variables in `varmap`.
pub fn seeded_var_builder(
    varmap: &VarMap,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    let backend: Box<dyn SimpleBackend> = Box::new(SeededInit {
        varmap: varmap.clone(),
        seed,
    });
    VarBuilder::from_backend(backend, dtype, device.clone())
}

/// The variables of a map sorted by name (VarMap's own order differs between processes).
pub fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = match varmap.data().lock() {
        Ok(d) => d,
        Err(p) => p.into_inner(),
    };
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
