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

    /// The number of examples in a split where it is finite (image files); `None` for generated
    /// data.
    fn split_len(&self, _split: Split) -> Option<usize> {
        None
    }

    /// The number of classes its examples are labelled with; 0 for unlabelled data.
    fn num_classes(&self) -> usize {
        0
    }

    /// The name of class `k` where the dataset has names (CIFAR-10's "cat", a folder's name).
    fn class_name(&self, _k: usize) -> Option<String> {
        None
    }

    /// A batch with its labels (`u32`, shape `[n]`, values in `0..num_classes()`), drawing exactly
    /// what [`Dataset::sample`] draws for the same generator, so an unconditional model trains on
    /// the same batches either way. The default has no labels.
    fn sample_labeled(
        &self,
        n: usize,
        split: Split,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<(Tensor, Option<Tensor>)> {
        Ok((self.sample(n, split, rng, device)?, None))
    }

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

    /// Quality metrics of samples drawn for class `class`, where the dataset defines one (for the
    /// checkerboard: the fraction inside the requested square).
    fn class_metrics(&self, _samples: &Tensor, _class: usize) -> Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }
}
