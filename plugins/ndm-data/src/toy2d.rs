//! Two-dimensional toy densities.

use crate::generate_labeled;
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

impl Toy2d {
    /// Points with their labels: the moon (0 upper, 1 lower), the Gaussian's index (0..8
    /// counter-clockwise from the positive x axis), 0 for the swiss roll.
    fn draw(&self, n: usize, rng: &mut Rng, device: &Device) -> Result<(Tensor, Tensor)> {
        let noise = self.noise;
        generate_labeled(n, 2, device, |v| {
            let (x, y, label) = match self.kind {
                Toy2dKind::Moons => {
                    let a = PI * rng.uniform();
                    if rng.uniform() < 0.5 {
                        (a.cos() - 0.5, a.sin() - 0.25, 0)
                    } else {
                        (0.5 - a.cos(), 0.25 - a.sin(), 1)
                    }
                }
                Toy2dKind::EightGaussians => {
                    let k = rng.below(8);
                    let a = 2.0 * PI * k as f64 / 8.0;
                    (2.0 * a.cos(), 2.0 * a.sin(), k as u32)
                }
                Toy2dKind::SwissRoll => {
                    let t = 1.5 * PI * (1.0 + 2.0 * rng.uniform());
                    (t * t.cos() / 5.0, t * t.sin() / 5.0, 0)
                }
            };
            v.push(x + noise * rng.normal());
            v.push(y + noise * rng.normal());
            label
        })
    }
}

impl Dataset for Toy2d {
    fn data_shape(&self) -> Vec<usize> {
        vec![2]
    }
    fn sample(&self, n: usize, _split: Split, rng: &mut Rng, device: &Device) -> Result<Tensor> {
        Ok(self.draw(n, rng, device)?.0)
    }
    /// Moons: 2 (which moon); 8gaussians: 8 (which Gaussian); the swiss roll has no labels.
    fn num_classes(&self) -> usize {
        match self.kind {
            Toy2dKind::Moons => 2,
            Toy2dKind::EightGaussians => 8,
            Toy2dKind::SwissRoll => 0,
        }
    }
    fn sample_labeled(
        &self,
        n: usize,
        _split: Split,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (x, labels) = self.draw(n, rng, device)?;
        Ok((x, (self.num_classes() > 0).then_some(labels)))
    }
    /// 8gaussians: `nearest_is_requested`, the fraction of samples whose nearest centre is their
    /// class's Gaussian.
    fn class_metrics(&self, samples: &Tensor, class: usize) -> Result<Vec<(String, f64)>> {
        if self.kind != Toy2dKind::EightGaussians {
            return Ok(Vec::new());
        }
        let p = samples
            .to_dtype(DType::F64)?
            .flatten_from(1)?
            .to_vec2::<f64>()?;
        let nearest = |q: &[f64]| {
            (0..8)
                .map(|k| {
                    let a = 2.0 * PI * k as f64 / 8.0;
                    (
                        (q[0] - 2.0 * a.cos()).powi(2) + (q[1] - 2.0 * a.sin()).powi(2),
                        k,
                    )
                })
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .map_or(usize::MAX, |(_, k)| k)
        };
        let hits = p
            .iter()
            .filter(|q| q.len() == 2 && nearest(q) == class)
            .count();
        Ok(vec![(
            "nearest_is_requested".into(),
            hits as f64 / p.len().max(1) as f64,
        )])
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

    /// The square a class labels: `(column, row)` of the board's lower-left corners, for
    /// `class` in 0..8 (row `class / 2` from the bottom, the `class % 2`-th dark square in it).
    pub fn square(class: usize) -> (f64, f64) {
        let (row, k) = (class / 2, class % 2);
        // In row `row`, the dark columns are those with (col + row) even.
        let col = 2 * k + (row % 2);
        (col as f64 - 2.0, row as f64 - 2.0)
    }

    /// Points with their square's class.
    fn draw(n: usize, rng: &mut Rng, device: &Device) -> Result<(Tensor, Tensor)> {
        generate_labeled(n, 2, device, |v| {
            let cell = rng.below(8);
            let (x0, y0) = Checkerboard::square(cell);
            v.push(x0 + rng.uniform());
            v.push(y0 + rng.uniform());
            cell as u32
        })
    }
}

impl Dataset for Checkerboard {
    fn data_shape(&self) -> Vec<usize> {
        vec![2]
    }
    fn sample(&self, n: usize, _split: Split, rng: &mut Rng, device: &Device) -> Result<Tensor> {
        Ok(Checkerboard::draw(n, rng, device)?.0)
    }
    /// The 8 dark squares, numbered by [`Checkerboard::square`].
    fn num_classes(&self) -> usize {
        8
    }
    fn sample_labeled(
        &self,
        n: usize,
        _split: Split,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (x, labels) = Checkerboard::draw(n, rng, device)?;
        Ok((x, Some(labels)))
    }
    /// `in_requested_square`: the fraction of samples inside the square of their class.
    fn class_metrics(&self, samples: &Tensor, class: usize) -> Result<Vec<(String, f64)>> {
        let p = samples
            .to_dtype(DType::F64)?
            .flatten_from(1)?
            .to_vec2::<f64>()?;
        let (x0, y0) = Checkerboard::square(class);
        let inside = p
            .iter()
            .filter(|q| {
                q.len() == 2 && (x0..x0 + 1.0).contains(&q[0]) && (y0..y0 + 1.0).contains(&q[1])
            })
            .count();
        Ok(vec![(
            "in_requested_square".into(),
            inside as f64 / p.len().max(1) as f64,
        )])
    }
    fn entropy(&self) -> Option<f64> {
        Some(8f64.ln())
    }
    fn sample_metrics(&self, samples: &Tensor) -> Result<Vec<(String, f64)>> {
        let p = samples
            .to_dtype(DType::F64)?
            .flatten_from(1)?
            .to_vec2::<f64>()?;
        // Which of the 16 cells each inside point is in (8 of them can be hit).
        let mut counts = [0usize; 16];
        for q in p
            .iter()
            .filter(|q| q.len() == 2 && Checkerboard::inside(q[0], q[1]))
        {
            counts[((q[1].floor() + 2.0) * 4.0 + q[0].floor() + 2.0) as usize] += 1;
        }
        let inside: usize = counts.iter().sum();
        // Total variation between the inside points' spread over the 8 squares and the uniform
        // 1/8 each: 0 for the data, 7/8 when every point sits in one square.
        let tv = 0.5
            * counts
                .iter()
                .enumerate()
                .filter(|(k, _)| (k / 4 + k % 4) % 2 == 0)
                .map(|(_, &c)| (c as f64 / inside.max(1) as f64 - 0.125).abs())
                .sum::<f64>();
        Ok(vec![
            (
                "inside_fraction".into(),
                inside as f64 / p.len().max(1) as f64,
            ),
            ("square_tv".into(), tv),
        ])
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
        // 4000 uniform draws over 8 squares: TV about sqrt(8 / (2 pi 4000)) ~ 0.02 from uniform.
        assert!(m[1].1 < 0.05, "square_tv {}", m[1].1);
        // All in one square: 7/8.
        let one = Tensor::from_vec(vec![0.5f32, 0.5, 0.25, 0.75], (2, 2), &Device::Cpu).unwrap();
        let m = Checkerboard.sample_metrics(&one).unwrap();
        assert!((m[1].1 - 0.875).abs() < 1e-12, "{m:?}");
        let p = x.to_vec2::<f32>().unwrap();
        let mut cells = std::collections::HashSet::new();
        for q in &p {
            cells.insert(((q[0] as f64).floor() as i64, (q[1] as f64).floor() as i64));
        }
        assert_eq!(cells.len(), 8);
        assert!(!Checkerboard::inside(0.5, -0.5));
    }

    #[test]
    fn labels_come_with_the_same_points_and_mean_what_they_say() {
        let dev = Device::Cpu;
        for kind in [Toy2dKind::Moons, Toy2dKind::EightGaussians] {
            let d = Toy2d { kind, noise: 0.01 };
            let x = d.sample(500, Split::Train, &mut Rng::new(4), &dev).unwrap();
            let (xl, l) = d
                .sample_labeled(500, Split::Train, &mut Rng::new(4), &dev)
                .unwrap();
            assert_eq!(x.to_vec2::<f32>().unwrap(), xl.to_vec2::<f32>().unwrap());
            let l: Vec<u32> = l.unwrap().to_vec1().unwrap();
            for (k, &c) in l.iter().enumerate() {
                let m = d
                    .class_metrics(&xl.narrow(0, k, 1).unwrap(), c as usize)
                    .unwrap();
                match kind {
                    // The upper moon lies above y = -0.3, the lower one below 0.3.
                    Toy2dKind::Moons => {
                        let y = xl.to_vec2::<f32>().unwrap()[k][1];
                        assert!(if c == 0 { y > -0.3 } else { y < 0.3 }, "{c} {y}");
                    }
                    _ => assert_eq!(m[0].1, 1.0, "point {k} of class {c}"),
                }
            }
        }
        assert_eq!(
            Toy2d {
                kind: Toy2dKind::SwissRoll,
                noise: 0.0
            }
            .num_classes(),
            0
        );
        // Checkerboard: points of class k lie in square k, and not in square k + 1.
        let (x, l) = Checkerboard
            .sample_labeled(400, Split::Train, &mut Rng::new(5), &dev)
            .unwrap();
        let l: Vec<u32> = l.unwrap().to_vec1().unwrap();
        for (k, &c) in l.iter().enumerate() {
            let p = x.narrow(0, k, 1).unwrap();
            let own = Checkerboard.class_metrics(&p, c as usize).unwrap()[0].1;
            let other = Checkerboard
                .class_metrics(&p, (c as usize + 1) % 8)
                .unwrap()[0]
                .1;
            assert_eq!((own, other), (1.0, 0.0));
        }
    }
}
