//! Pictures of a trained image model next to its samples: the denoiser's prediction `xhat` from
//! `z_t` at several times, and for a transform that is not the identity, `F(x, t)` from `t = 0`
//! to 1 (the NDM paper's Figure 2b), each for a few test images.

use crate::plot::image_grid_png;
use anyhow::Result;
use candle_core::Tensor;
use ndm_api::{Dataset, Pipeline, ReverseProcess, Rng, Split};
use std::path::Path;

/// Times of the columns.
const TIMES: [f64; 6] = [0.05, 0.2, 0.4, 0.6, 0.8, 0.95];
/// Test images, one row each.
const ROWS: usize = 4;

/// `denoise.png`: per test image, the image, then `z_t` and `xhat(z_t, t)` for each of [`TIMES`].
/// Behind an encoder (LSGM) `z_t` and `xhat` are latents, shown through the decoder's mean.
pub fn denoising_strip(pipe: &Pipeline, data: &dyn Dataset, path: &Path) -> Result<()> {
    let mut rng = Rng::derived(0, "pictures");
    let data_x = data.sample(ROWS, Split::Test, &mut rng, &pipe.device)?;
    let (x, _) = ndm_api::elbo::encode(pipe, &data_x, &mut rng)?;
    let eps = rng.normal_tensor(x.dims(), pipe.dtype, &pipe.device)?;
    let mut cols = vec![data_x.clone()];
    for &t in &TIMES {
        let t = t * pipe.t_end();
        let z = pipe
            .schedule
            .point(t)
            .noised(&pipe.f(&x, &pipe.time_tensor(t, ROWS)?)?, &eps)?;
        cols.push(shown(pipe, &z)?);
        cols.push(shown(pipe, &pipe.predict_x(&z, t)?)?);
    }
    grid_by_rows(&cols, path)
}

/// A tensor of the diffusion's space as an image: itself, or a latent's decoder mean.
fn shown(pipe: &Pipeline, v: &Tensor) -> Result<Tensor> {
    if pipe.transform.encoder().is_none() {
        return Ok(v.clone());
    }
    Ok(pipe
        .transform
        .decode(v)?
        .unwrap_or_else(|| v.clone())
        .detach())
}

/// `transform.png`: per test image, `F(x, t)` at t = 0, 0.2, .., 1 (of the encoded `x`, decoded,
/// behind an encoder).
pub fn transform_strip(pipe: &Pipeline, data: &dyn Dataset, path: &Path) -> Result<()> {
    let mut rng = Rng::derived(0, "pictures");
    let data_x = data.sample(ROWS, Split::Test, &mut rng, &pipe.device)?;
    let (x, _) = ndm_api::elbo::encode(pipe, &data_x, &mut rng)?;
    let cols = (0..=5)
        .map(|k| {
            let f = pipe.f(&x, &pipe.time_tensor(k as f64 / 5.0, ROWS)?)?;
            shown(pipe, &f.detach())
        })
        .collect::<Result<Vec<_>>>()?;
    grid_by_rows(&cols, path)
}

/// Columns of `[ROWS, C, H, W]` images laid out as one row per image.
fn grid_by_rows(cols: &[Tensor], path: &Path) -> Result<()> {
    let stacked = Tensor::stack(cols, 1)?; // [ROWS, cols, C, H, W]
    let (r, k) = (stacked.dim(0)?, stacked.dim(1)?);
    let flat = stacked.flatten_to(1)?; // [ROWS * cols, C, H, W]
    debug_assert_eq!(flat.dim(0)?, r * k);
    image_grid_png(&flat, r, path)
}
