//! A small seeded random number generator (xoshiro256**, seeded by splitmix64).
//!
//! candle's CPU RNG cannot be seeded, so every random draw of ndm (initial weights, noise, time
//! samples, data batches) comes from this generator and is moved to the device with
//! `Tensor::from_vec`. Its whole state is four `u64`s, saved in the training state for `--resume`.

use candle_core::{DType, Device, Result, Tensor};

/// xoshiro256** with a cached second Box-Muller normal.
#[derive(Debug, Clone, PartialEq)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator whose whole stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let s = [
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
        ];
        Rng { s }
    }

    /// An independent stream derived from this seed and a label (e.g. a parameter name), so that
    /// what one consumer draws never shifts what another gets.
    pub fn derived(seed: u64, label: &str) -> Self {
        // FNV-1a of the label, mixed with the seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in label.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Rng::new(seed ^ h.rotate_left(17))
    }

    /// The raw state, for checkpoints.
    pub fn state(&self) -> [u64; 4] {
        self.s
    }

    /// Restores a state saved by [`Rng::state`].
    pub fn from_state(s: [u64; 4]) -> Self {
        Rng { s }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `[0, n)`; `n` must be positive.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.uniform() * n as f64) as usize).min(n.saturating_sub(1))
    }

    /// A standard normal draw (Box-Muller; both halves are used by [`Rng::normal_vec`]).
    pub fn normal(&mut self) -> f64 {
        let (a, _) = self.normal_pair();
        a
    }

    fn normal_pair(&mut self) -> (f64, f64) {
        // 1 - u is in (0, 1], so the log is finite.
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let th = std::f64::consts::TAU * u2;
        (r * th.cos(), r * th.sin())
    }

    /// `n` standard normal draws.
    pub fn normal_vec(&mut self, n: usize) -> Vec<f64> {
        let mut v = Vec::with_capacity(n + 1);
        while v.len() < n {
            let (a, b) = self.normal_pair();
            v.push(a);
            v.push(b);
        }
        v.truncate(n);
        v
    }

    /// `n` uniform draws in `[lo, hi)`.
    pub fn uniform_vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| lo + (hi - lo) * self.uniform()).collect()
    }

    /// A tensor of standard normal noise of the given shape, dtype and device.
    pub fn normal_tensor(
        &mut self,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let n = shape.iter().product();
        host_tensor(self.normal_vec(n), shape, dtype, device)
    }

    /// A tensor of uniform draws in `[lo, hi)`.
    pub fn uniform_tensor(
        &mut self,
        shape: &[usize],
        lo: f64,
        hi: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let n = shape.iter().product();
        host_tensor(self.uniform_vec(n, lo, hi), shape, dtype, device)
    }

    /// Rademacher (+-1) draws.
    pub fn rademacher_tensor(
        &mut self,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v = (0..n)
            .map(|_| {
                if self.next_u64() >> 63 == 0 {
                    -1.0
                } else {
                    1.0
                }
            })
            .collect();
        host_tensor(v, shape, dtype, device)
    }
}

/// A host `f64` vector as a tensor of `dtype` on `device`.
pub fn host_tensor(v: Vec<f64>, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_normal_moments() {
        let a = Rng::new(7).normal_vec(20_000);
        let b = Rng::new(7).normal_vec(20_000);
        assert_eq!(a, b);
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.04, "var {var}");
        assert_ne!(
            Rng::derived(1, "a").next_u64(),
            Rng::derived(1, "b").next_u64()
        );
    }
}
