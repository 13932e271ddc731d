//! Datasets: generated 2-D densities, Gaussians with a known density, image files.

use crate::rng::Rng;
use candle_core::{Device, Result, Tensor};

/// Which part of a dataset to draw from. Generated datasets draw fresh points for both; callers use
/// separate RNG streams so held-out points never repeat training points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// A source of data batches, already mapped to the model's value range (`[-1, 1]` for images,
/// roughly unit scale for 2-D data).
pub trait Dataset: Send + Sync + std::fmt::Debug {
    /// Shape of one example, without the batch dimension.
    fn data_shape(&self) -> Vec<usize>;

    /// A batch of `n` examples (f32, on `device`).
    fn sample(&self, n: usize, split: Split, rng: &mut Rng, device: &Device) -> Result<Tensor>;

    /// `log p_data(x)` per example where the density is known in closed form.
    fn log_density(&self, _x: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Differential entropy of the data distribution in nats per example, where known: the floor
    /// that no model's NLL can beat on average.
    fn entropy(&self) -> Option<f64> {
        None
    }

    /// For discrete data: the number of equal cells of `[-1, 1]` whose centres the values are
    /// (256 for 8-bit images). Likelihoods of such data are computed on uniformly dequantized
    /// values and reported as bits per dimension of the discrete data (`docs/math.md`, "Bits per
    /// dimension"). `None` for continuous data.
    fn quantization(&self) -> Option<u32> {
        None
    }

    /// Where the dataset stands in its iteration (epoch order and position), as numbers a training
    /// checkpoint stores; empty for datasets whose batches depend on the passed generator alone.
    fn iteration_state(&self) -> Vec<u64> {
        Vec::new()
    }

    /// Puts the dataset back where [`Dataset::iteration_state`] said it was, so a resumed run
    /// draws the same batches as one never interrupted.
    fn restore_iteration_state(&self, _state: &[u64]) -> Result<()> {
        Ok(())
    }

    /// Dataset-specific quality metrics of model samples (e.g. the fraction of checkerboard samples
    /// that land inside the board's squares).
    fn sample_metrics(&self, _samples: &Tensor) -> Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }
}
