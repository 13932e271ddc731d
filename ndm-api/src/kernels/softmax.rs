//! Softmax over the last dimension and its backward, row by row in parallel.
//!
//! candle 0.11's `softmax_last_dim` has no backward; this op has one:
//! `dx = y * (dy - sum_j dy_j y_j)` per row, from the saved output `y`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::float::{dispatch_float, lane_sum, slice, wide, Float};
use super::profile::timed;

/// Rows per parallel task: at least this many elements per task.
fn rows_per_task(n: usize) -> usize {
    (4096 / n.max(1)).max(1)
}

fn last_dim(l: &Layout, op: &str) -> Result<usize> {
    match l.dims().last() {
        Some(&n) if n > 0 => Ok(n),
        _ => candle_core::bail!("{op}: needs a non-empty last dimension, got {:?}", l.dims()),
    }
}

/// Forward op: `softmax` over the last dimension (max-shifted, sums in f64).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "ndm-softmax-last-dim"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = last_dim(l, "softmax")?;
        dispatch_float!(s, "softmax", |T| {
            let x = slice::<T>(s, l, "softmax")?;
            let y = timed("softmax fwd", || {
                let mut y = vec![T::zero(); x.len()];
                let chunk = n * rows_per_task(n);
                y.par_chunks_mut(chunk)
                    .zip(x.par_chunks(chunk))
                    .for_each(|(yo, xi)| {
                        for (yr, xr) in yo.chunks_exact_mut(n).zip(xi.chunks_exact(n)) {
                            let m = xr.iter().copied().fold(
                                <T as num_traits::Float>::neg_infinity(),
                                |a, b| {
                                    if b > a {
                                        b
                                    } else {
                                        a
                                    }
                                },
                            );
                            wide(|| {
                                for (o, v) in yr.iter_mut().zip(xr) {
                                    *o = (*v - m).exp_fast();
                                }
                            });
                            let sum = lane_sum(yr, |v| v);
                            let inv = T::from_acc(1.0 / sum);
                            for o in yr.iter_mut() {
                                *o *= inv;
                            }
                        }
                    });
                y
            });
            Ok((T::into_storage(y), l.shape().clone()))
        })
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxBwd)?))
    }
}

/// `x <- scale * p * (x - sum(p * x))` over one row, returning `sum(p * x)` (in f64): `x` times
/// the Jacobian of a softmax whose output is `p` (symmetric, so the same map serves the backward
/// and forward mode). The softmax's backward and the attention kernels' use it.
#[inline]
pub(super) fn jacobian_row<T: Float>(p: &[T], x: &mut [T], scale: T) -> f64 {
    let dot: f64 = p
        .iter()
        .zip(x.iter())
        .map(|(a, b)| a.to_acc() * b.to_acc())
        .sum();
    let d = T::from_acc(dot);
    for (o, pv) in x.iter_mut().zip(p) {
        *o = *pv * (*o - d) * scale;
    }
    dot
}

/// `(y, dy) -> y * (dy - sum(dy * y))` per row of the last dimension.
#[derive(Debug, Clone, Copy)]
struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "ndm-softmax-last-dim-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            candle_core::bail!(
                "softmax backward: shape mismatch {:?} vs {:?}",
                l1.dims(),
                l2.dims()
            );
        }
        let n = last_dim(l1, "softmax backward")?;
        dispatch_float!(s1, "softmax backward", |T| {
            let y = slice::<T>(s1, l1, "softmax backward")?;
            let dy = slice::<T>(s2, l2, "softmax backward")?;
            let dx = timed("softmax bwd", || {
                let mut dx = vec![T::zero(); y.len()];
                let chunk = n * rows_per_task(n);
                dx.par_chunks_mut(chunk)
                    .zip(y.par_chunks(chunk).zip(dy.par_chunks(chunk)))
                    .for_each(|(o, (yc, dc))| {
                        for (or, (yr, dr)) in o
                            .chunks_exact_mut(n)
                            .zip(yc.chunks_exact(n).zip(dc.chunks_exact(n)))
                        {
                            or.copy_from_slice(dr);
                            jacobian_row(yr, or, T::one());
                        }
                    });
                dx
            });
            Ok((T::into_storage(dx), l1.shape().clone()))
        })
    }
}
