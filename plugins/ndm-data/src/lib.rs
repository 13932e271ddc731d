//! Datasets: 2-D densities (`checkerboard`, `moons`, `8gaussians`, `swissroll`), `gaussian`
//! (any dimension, exact density known) and images (`mnist`, `fashion-mnist`, `cifar10`,
//! `image-folder`; see [`images`]).

mod gaussian;
pub mod images;
mod toy2d;

pub use gaussian::{GaussianData, GaussianDataConfig};
pub use images::{ImageDataset, ImageSplit};
pub use toy2d::{Checkerboard, Toy2d, Toy2dKind};

use ndm_api::candle_core::{Device, Result, Tensor};

/// `n` points of dimension `d` from a per-point generator, as an f32 tensor `[n, d]`.
pub fn generate(
    n: usize,
    d: usize,
    device: &Device,
    mut point: impl FnMut(&mut Vec<f64>),
) -> Result<Tensor> {
    Ok(generate_labeled(n, d, device, |v| {
        point(v);
        0
    })?
    .0)
}

/// `n` points of dimension `d` from a generator that pushes a point and returns its label: the
/// points as an f32 tensor `[n, d]` and the labels as a `u32` tensor `[n]`.
pub fn generate_labeled(
    n: usize,
    d: usize,
    device: &Device,
    mut point: impl FnMut(&mut Vec<f64>) -> u32,
) -> Result<(Tensor, Tensor)> {
    let mut v = Vec::with_capacity(n * d);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        labels.push(point(&mut v));
    }
    let x = Tensor::from_vec(v, (n, d), &Device::Cpu)?
        .to_dtype(ndm_api::candle_core::DType::F32)?
        .to_device(device)?;
    Ok((x, Tensor::from_vec(labels, n, device)?))
}
