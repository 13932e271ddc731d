//! Two-dimensional toy densities.

use crate::generate;
use ndm_api::candle_core::{DType, Device, Result, Tensor};
use ndm_api::registry::BuildCtx;
use ndm_api::registry::NoParams;
use ndm_api::{Dataset, Rng, Split};
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;

/// Which toy density.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toy2dKind {
    Moons,
    EightGaussians,
    SwissRoll,
}

/// Params of the 2-D toys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Toy2dConfig {
    /// Standard deviation of the Gaussian noise added to each point.
    pub noise: f64,
}

impl Default for Toy2dConfig {
    fn default() -> Self {
        Toy2dConfig { noise: 0.05 }
    }
}

/// moons (two interleaved half circles), 8gaussians (on a circle of radius 2), swissroll (a
/// spiral scaled to about unit variance).
#[derive(Debug, Clone)]
pub struct Toy2d {
    pub kind: Toy2dKind,
    pub noise: f64,
}

impl Dataset for Toy2d {
    fn data_shape(&self) -> Vec<usize> {
        vec![2]
    }
    fn sample(&self, n: usize, _split: Split, rng: &mut Rng, device: &Device) -> Result<Tensor> {
        let noise = self.noise;
        generate(n, 2, device, |v| {
            let (x, y) = match self.kind {
                Toy2dKind::Moons => {
                    let a = PI * rng.uniform();
                    if rng.uniform() < 0.5 {
                        (a.cos() - 0.5, a.sin() - 0.25)
                    } else {
                        (0.5 - a.cos(), 0.25 - a.sin())
                    }
                }
                Toy2dKind::EightGaussians => {
                    let a = 2.0 * PI * rng.below(8) as f64 / 8.0;
                    (2.0 * a.cos(), 2.0 * a.sin())
                }
                Toy2dKind::SwissRoll => {
                    let t = 1.5 * PI * (1.0 + 2.0 * rng.uniform());
                    (t * t.cos() / 5.0, t * t.sin() / 5.0)
                }
            };
            v.push(x + noise * rng.normal());
            v.push(y + noise * rng.normal());
        })
    }
}

/// Uniform on the 8 dark unit squares of a 4 x 4 board on `[-2, 2]^2` (those where
/// `floor(x) + floor(y)` is even): density 1/8 on the board, entropy `ln 8 = 2.079` nats.
#[derive(Debug, Clone, Default)]
pub struct Checkerboard;

impl Checkerboard {
    /// Whether a point lies in one of the board's squares.
    pub fn inside(x: f64, y: f64) -> bool {
        (-2.0..2.0).contains(&x)
            && (-2.0..2.0).contains(&y)
            && (x.floor() as i64 + y.floor() as i64) % 2 == 0
    }
}

impl Dataset for Checkerboard {
    fn data_shape(&self) -> Vec<usize> {
        vec![2]
    }
    fn sample(&self, n: usize, _split: Split, rng: &mut Rng, device: &Device) -> Result<Tensor> {
        generate(n, 2, device, |v| {
            let cell = rng.below(8);
            let (row, k) = (cell / 2, cell % 2);
            // In row `row`, the dark columns are those with (col + row) even.
            let col = 2 * k + (row % 2);
            v.push(col as f64 - 2.0 + rng.uniform());
            v.push(row as f64 - 2.0 + rng.uniform());
        })
    }
    fn entropy(&self) -> Option<f64> {
        Some(8f64.ln())
    }
    fn sample_metrics(&self, samples: &Tensor) -> Result<Vec<(String, f64)>> {
        let p = samples
            .to_dtype(DType::F64)?
            .flatten_from(1)?
            .to_vec2::<f64>()?;
        let inside = p
            .iter()
            .filter(|q| q.len() == 2 && Checkerboard::inside(q[0], q[1]))
            .count();
        Ok(vec![(
            "inside_fraction".into(),
            inside as f64 / p.len().max(1) as f64,
        )])
    }
}

fn toy(kind: Toy2dKind, cfg: Toy2dConfig) -> ndm_api::Result<Box<dyn Dataset>> {
    if !(cfg.noise >= 0.0 && cfg.noise.is_finite()) {
        return Err(ndm_api::NdmError::InvalidArgument(
            "dataset noise must be a non-negative number".into(),
        ));
    }
    Ok(Box::new(Toy2d {
        kind,
        noise: cfg.noise,
    }))
}

ndm_api::register_plugin!(
    Dataset,
    "checkerboard",
    "uniform on the 8 dark squares of a 4x4 board on [-2,2]^2 (entropy ln 8)",
    NoParams,
    |_c: NoParams, _ctx: &BuildCtx| Ok(Box::new(Checkerboard))
);
ndm_api::register_plugin!(
    Dataset,
    "moons",
    "two interleaved half circles",
    Toy2dConfig,
    |c: Toy2dConfig, _ctx: &BuildCtx| toy(Toy2dKind::Moons, c)
);
ndm_api::register_plugin!(
    Dataset,
    "8gaussians",
    "eight Gaussians on a circle of radius 2",
    Toy2dConfig,
    |c: Toy2dConfig, _ctx: &BuildCtx| toy(Toy2dKind::EightGaussians, c)
);
ndm_api::register_plugin!(
    Dataset,
    "swissroll",
    "a 2-D swiss roll spiral",
    Toy2dConfig,
    |c: Toy2dConfig, _ctx: &BuildCtx| toy(Toy2dKind::SwissRoll, c)
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkerboard_samples_are_inside_and_cover_all_squares() {
        let x = Checkerboard
            .sample(4000, Split::Train, &mut Rng::new(1), &Device::Cpu)
            .unwrap();
        let m = Checkerboard.sample_metrics(&x).unwrap();
        assert_eq!(m[0].1, 1.0);
        let p = x.to_vec2::<f32>().unwrap();
        let mut cells = std::collections::HashSet::new();
        for q in &p {
            cells.insert(((q[0] as f64).floor() as i64, (q[1] as f64).floor() as i64));
        }
        assert_eq!(cells.len(), 8);
        assert!(!Checkerboard::inside(0.5, -0.5));
    }
}
