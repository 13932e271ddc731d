//! The element types the kernels run on (f32 for training, f64 for gradient checks).

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
}
impl Float for f32 {}
impl Float for f64 {}

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
