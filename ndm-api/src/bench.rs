//! What the benchmarks share: the device they run on, their repetition count, and timings that
//! wait for the device, so that a GPU's queued work is counted where it was issued.
//!
//! - `NDM_BENCH_DEVICE`: `cpu` (when unset) or `cuda:N`, read like the runner's `--device`
//!   ([`crate::device::open`]); a CUDA device needs a CUDA build (`.ci/cuda-build cargo bench
//!   --features ndm-api/cuda ...`).
//! - `NDM_BENCH_ITERS`: timed repetitions.

use crate::{Dataset, Result, Rng, Split};
use candle_core::{Device, Tensor};
use std::time::Instant;

/// The benchmark's device from `NDM_BENCH_DEVICE` (the CPU when unset).
pub fn device() -> Result<Device> {
    match std::env::var("NDM_BENCH_DEVICE") {
        Ok(name) => crate::device::open(name.trim()),
        Err(_) => Ok(Device::Cpu),
    }
}

/// `NDM_BENCH_ITERS`, or `default` when unset or not a positive number.
pub fn iters(default: usize) -> usize {
    std::env::var("NDM_BENCH_ITERS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// A device's name for the benchmarks' headers.
pub fn describe(dev: &Device) -> String {
    match dev {
        Device::Cpu => format!("cpu, {} rayon threads", crate::kernels::threads()),
        other => format!("{:?}", other.location()),
    }
}

/// Seconds of `f` up to the moment the device has finished what it queued.
pub fn timed<T>(dev: &Device, f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    dev.synchronize()?;
    let start = Instant::now();
    let out = f()?;
    dev.synchronize()?;
    Ok((out, start.elapsed().as_secs_f64()))
}

/// The median milliseconds of `f` over `iters` timed calls after 3 untimed ones.
pub fn median_ms(dev: &Device, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        times.push(timed(dev, &mut f)?.1 * 1e3);
    }
    Ok(crate::stats::median(&mut times))
}

/// Random 8-bit images of one shape `[C, H, W]` (each pixel a cell centre of `[-1, 1]`), so that a
/// benchmark on images needs no data files: a step's cost does not depend on what the pixels hold.
#[derive(Debug, Clone)]
pub struct RandomImages(pub [usize; 3]);

impl Dataset for RandomImages {
    fn data_shape(&self) -> Vec<usize> {
        self.0.to_vec()
    }
    fn sample(
        &self,
        n: usize,
        _split: Split,
        rng: &mut Rng,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let [c, h, w] = self.0;
        let v: Vec<f32> = (0..n * c * h * w)
            .map(|_| (rng.below(256) as f32 + 0.5) / 128.0 - 1.0)
            .collect();
        Tensor::from_vec(v, (n, c, h, w), device)
    }
}
