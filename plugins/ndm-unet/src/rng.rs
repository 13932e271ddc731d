//! A tiny seeded RNG (candle's CPU RNG cannot be seeded) for reproducible weights and data.

use candle_core::{Device, Result, Shape, Tensor};
use candle_nn::VarMap;

/// SplitMix64: fast, seedable, good enough for weights, noise and tests.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// An f64 tensor of standard normals.
    pub fn randn<S: Into<Shape>>(&mut self, shape: S, dev: &Device) -> Result<Tensor> {
        let shape = shape.into();
        let v: Vec<f64> = (0..shape.elem_count()).map(|_| self.normal()).collect();
        Tensor::from_vec(v, shape, dev)
    }

    /// An f64 tensor uniform in [lo, hi).
    pub fn rand<S: Into<Shape>>(
        &mut self,
        shape: S,
        lo: f64,
        hi: f64,
        dev: &Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let v: Vec<f64> = (0..shape.elem_count())
            .map(|_| lo + (hi - lo) * self.uniform())
            .collect();
        Tensor::from_vec(v, shape, dev)
    }
}

/// Re-initialises every variable of `varmap` reproducibly: variables are visited sorted by
/// name; names ending in `norm*.weight` get 1, other `bias`es and norm biases get small
/// uniform values, weights get uniform(+-1/sqrt(fan_in)).
pub fn seed_varmap(varmap: &VarMap, seed: u64) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = SplitMix64::new(seed);
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let is_norm = name.contains("norm");
        let t = if is_norm && name.ends_with("weight") {
            rng.rand(dims.as_slice(), 0.9, 1.1, var.device())?
        } else if name.ends_with("bias") {
            rng.rand(dims.as_slice(), -0.05, 0.05, var.device())?
        } else {
            let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
            let bound = 1.0 / (fan_in as f64).sqrt();
            rng.rand(dims.as_slice(), -bound, bound, var.device())?
        };
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    Ok(())
}
