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
pub fn denoising_strip(pipe: &Pipeline, data: &dyn Dataset, path: &Path) -> Result<()> {
    let mut rng = Rng::derived(0, "pictures");
    let x = data.sample(ROWS, Split::Test, &mut rng, &pipe.device)?;
    let eps = rng.normal_tensor(x.dims(), pipe.dtype, &pipe.device)?;
    let mut cols = vec![x.clone()];
    for &t in &TIMES {
        let t = t * pipe.t_end();
        let z = pipe
            .schedule
            .point(t)
            .noised(&pipe.f(&x, &pipe.time_tensor(t, ROWS)?)?, &eps)?;
        cols.push(z.clone());
        cols.push(pipe.predict_x(&z, t)?);
    }
    grid_by_rows(&cols, path)
}

/// `transform.png`: per test image, `F(x, t)` at t = 0, 0.2, .., 1.
pub fn transform_strip(pipe: &Pipeline, data: &dyn Dataset, path: &Path) -> Result<()> {
    let mut rng = Rng::derived(0, "pictures");
    let x = data.sample(ROWS, Split::Test, &mut rng, &pipe.device)?;
    let cols = (0..=5)
        .map(|k| {
            Ok(pipe
                .f(&x, &pipe.time_tensor(k as f64 / 5.0, ROWS)?)?
                .detach())
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
