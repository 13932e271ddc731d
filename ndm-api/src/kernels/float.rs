//! The element types the kernels run on (f32 for training, f64 for gradient checks).

use std::cell::RefCell;
use std::thread::LocalKey;

use candle_core::{CpuStorage, Layout, Result, WithDType};

/// A float element type usable by every kernel in this crate.
pub trait Float: WithDType + num_traits::Float {
    /// Widens to the f64 accumulator.
    fn to_acc(self) -> f64 {
        <Self as WithDType>::to_f64(self)
    }
    /// Narrows from the f64 accumulator.
    fn from_acc(v: f64) -> Self {
        <Self as WithDType>::from_f64(v)
    }
    /// Wraps a result buffer as candle CPU storage.
    fn into_storage(v: Vec<Self>) -> CpuStorage {
        <Self as WithDType>::to_cpu_storage_owned(v)
    }
    /// `1 / (1 + exp(-self))`: exact `exp` for f64 (gradient checks), a vectorisable
    /// polynomial `exp` (relative error ~2e-7) for f32.
    fn sigmoid(self) -> Self;
    /// `exp(self)`: exact for f64, the vectorisable polynomial [`fast_exp_f32`] for f32.
    fn exp_fast(self) -> Self;
    /// Runs `f` on this thread's reusable scratch buffer of `len` elements (stale contents).
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
}

thread_local! {
    static SCRATCH_F32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static SCRATCH_F64: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// Per-thread scratch (e.g. im2col buffers): rayon's workers live for the whole process, so
/// after the first step no kernel allocates (and page-faults) its large temporaries again.
/// A nested use on the same thread gets a fresh buffer instead of panicking.
fn with_thread_scratch<T: Copy + Default + 'static, R>(
    key: &'static LocalKey<RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < len {
                v.resize(len, T::default());
            }
            f(&mut v[..len])
        }
        Err(_) => f(&mut vec![T::default(); len]),
    })
}

impl Float for f32 {
    #[inline(always)]
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + fast_exp_f32(-self))
    }
    #[inline(always)]
    fn exp_fast(self) -> Self {
        fast_exp_f32(self)
    }
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
        with_thread_scratch(&SCRATCH_F32, len, f)
    }
}

impl Float for f64 {
    #[inline(always)]
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
    #[inline(always)]
    fn exp_fast(self) -> Self {
        self.exp()
    }
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
        with_thread_scratch(&SCRATCH_F64, len, f)
    }
}

/// `exp(x)` for f32 without a libm call, so loops over it vectorise (also on baseline SSE2):
/// round-to-nearest range reduction `x = n ln2 + r` (ln2 split in two parts),
/// the classic degree-6 minimax polynomial for `exp(r)` on `|r| <= ln2/2`, and `2^n` built in
/// the exponent bits. Inputs are clamped to [-87, 88] so `2^n` stays a normal number.
#[inline(always)]
pub(crate) fn fast_exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer.
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let k = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((k + 127) as u32) << 23)
}

/// Runs `f` compiled for the widest vector unit the CPU has (AVX-512F, else AVX2 with FMA, else
/// the build's baseline), chosen at run time: the elementwise loops inside (`exp`, `sigmoid`)
/// then vectorise 16 or 8 lanes wide instead of the baseline's 4, without building for one
/// machine. `f` is inlined into each variant, so keep it one loop, not a whole kernel.
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU was just found to have AVX-512F, the only feature it enables.
            return unsafe { wide_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU was just found to have AVX2 and FMA, the features it enables.
            return unsafe { wide_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn wide_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn wide_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// The contiguous slice a layout describes inside a CPU storage.
///
/// Every public entry point makes its inputs contiguous first, so a strided layout here is
/// a programming error that is reported, never a panic.
pub(crate) fn slice<'a, T: Float>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &'static str,
) -> Result<&'a [T]> {
    let data = T::cpu_storage_as_slice(s)?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Lanes of the short element-type partial sums (lets the loops vectorise).
pub(crate) const LANES: usize = 8;
/// Elements summed in the element type before flushing into the f64 total.
pub(crate) const FLUSH: usize = 256;

/// `sum f(x_i)`: 8 lane partials in `T` over blocks of 256 elements, blocks summed in f64.
pub(crate) fn lane_sum<T: Float>(x: &[T], f: impl Fn(T) -> T) -> f64 {
    let mut total = 0f64;
    for blk in x.chunks(FLUSH) {
        let mut acc = [T::zero(); LANES];
        let mut it = blk.chunks_exact(LANES);
        for c in &mut it {
            for l in 0..LANES {
                acc[l] += f(c[l]);
            }
        }
        let tail = it.remainder().iter().fold(T::zero(), |a, v| a + f(*v));
        total += acc.iter().map(|v| v.to_acc()).sum::<f64>() + tail.to_acc();
    }
    total
}

/// Runs `$body` with `$t` bound to the element type of storage `$s` (f32 or f64).
macro_rules! dispatch_float {
    ($s:expr, $op:expr, |$t:ident| $body:expr) => {
        match $s {
            candle_core::CpuStorage::F32(_) => {
                #[allow(unused_imports)]
                use num_traits::{One as _, Zero as _};
                type $t = f32;
                $body
            }
            candle_core::CpuStorage::F64(_) => {
                #[allow(unused_imports)]
                use num_traits::{One as _, Zero as _};
                type $t = f64;
                $body
            }
            _ => candle_core::bail!("{}: unsupported dtype (f32 and f64 only)", $op),
        }
    };
}
pub(crate) use dispatch_float;

#[cfg(test)]
mod tests {
    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        // Inside the clamp range [-87, 88].
        for i in -86_999..=87_999 {
            let x = i as f32 * 1e-3;
            let (a, b) = (super::fast_exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 2e-7, "fast_exp_f32 relative error {worst:e}");
    }
}
