//! SiLU `x * sigmoid(x)` and its backward, elementwise in parallel blocks.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::float::{dispatch_float, slice, Float};
use super::profile::timed;

const BLOCK: usize = 1 << 14;

/// Forward op: `x -> x * sigmoid(x)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Silu;

impl CustomOp1 for Silu {
    fn name(&self) -> &'static str {
        "ndm-silu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch_float!(s, "silu", |T| {
            let x = slice::<T>(s, l, "silu")?;
            let y = timed("silu fwd", || {
                let mut y = vec![T::zero(); x.len()];
                y.par_chunks_mut(BLOCK)
                    .zip(x.par_chunks(BLOCK))
                    .for_each(|(yo, xi)| {
                        for (o, v) in yo.iter_mut().zip(xi) {
                            *o = *v * v.sigmoid();
                        }
                    });
                y
            });
            Ok((T::into_storage(y), l.shape().clone()))
        })
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &SiluBwd)?))
    }
}

/// `(x, dy) -> dy * s * (1 + x * (1 - s))` with `s = sigmoid(x)`.
#[derive(Debug, Clone, Copy)]
struct SiluBwd;

impl CustomOp2 for SiluBwd {
    fn name(&self) -> &'static str {
        "ndm-silu-bwd"
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
                "silu backward: shape mismatch {:?} vs {:?}",
                l1.dims(),
                l2.dims()
            );
        }
        dispatch_float!(s1, "silu backward", |T| {
            let x = slice::<T>(s1, l1, "silu backward")?;
            let dy = slice::<T>(s2, l2, "silu backward")?;
            let dx = timed("silu bwd", || {
                let mut dx = vec![T::zero(); x.len()];
                dx.par_chunks_mut(BLOCK)
                    .zip(x.par_chunks(BLOCK).zip(dy.par_chunks(BLOCK)))
                    .for_each(|(o, (xi, di))| {
                        for (o, (v, d)) in o.iter_mut().zip(xi.iter().zip(di)) {
                            let sg = v.sigmoid();
                            *o = *d * sg * (T::one() + *v * (T::one() - sg));
                        }
                    });
                dx
            });
            Ok((T::into_storage(dx), l1.shape().clone()))
        })
    }
}
