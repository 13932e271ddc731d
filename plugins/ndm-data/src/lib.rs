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
    let mut v = Vec::with_capacity(n * d);
    for _ in 0..n {
        point(&mut v);
    }
    Tensor::from_vec(v, (n, d), &Device::Cpu)?
        .to_dtype(ndm_api::candle_core::DType::F32)?
        .to_device(device)
}
