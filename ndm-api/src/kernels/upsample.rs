//! 2x nearest-neighbour upsampling of `[B, C, H, W]` and its backward (2x2 block sums).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::float::{dispatch_float, slice, Float};
use super::profile::timed;

fn dims4(d: &[usize], op: &str) -> Result<(usize, usize, usize, usize)> {
    match *d {
        [b, c, h, w] => Ok((b, c, h, w)),
        _ => candle_core::bail!("{op}: expected a [B, C, H, W] tensor, got {d:?}"),
    }
}

/// Forward op: `[B, C, H, W] -> [B, C, 2H, 2W]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Upsample2x;

impl CustomOp1 for Upsample2x {
    fn name(&self) -> &'static str {
        "ndm-upsample-nearest2x"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = dims4(l.dims(), "upsample_nearest2x")?;
        dispatch_float!(s, "upsample_nearest2x", |T| {
            let x = slice::<T>(s, l, "upsample_nearest2x")?;
            let y = timed("upsample2x fwd", || {
                let mut y = vec![T::zero(); b * c * 4 * h * w];
                y.par_chunks_mut((4 * h * w).max(1))
                    .zip(x.par_chunks((h * w).max(1)))
                    .for_each(|(yp, xp)| {
                        for (i, xrow) in xp.chunks(w.max(1)).enumerate() {
                            let r0 = &mut yp[2 * i * 2 * w..(2 * i + 1) * 2 * w];
                            for (o, v) in r0.chunks_exact_mut(2).zip(xrow) {
                                o.fill(*v);
                            }
                            let (top, bottom) = yp.split_at_mut((2 * i + 1) * 2 * w);
                            bottom[..2 * w].copy_from_slice(&top[2 * i * 2 * w..]);
                        }
                    });
                y
            });
            Ok((T::into_storage(y), Shape::from((b, c, 2 * h, 2 * w))))
        })
    }
    fn bwd(&self, _x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&Upsample2xBwd)?))
    }
}

/// `[B, C, 2H, 2W] -> [B, C, H, W]`, each output the sum of its 2x2 block.
#[derive(Debug, Clone, Copy)]
struct Upsample2xBwd;

impl CustomOp1 for Upsample2xBwd {
    fn name(&self) -> &'static str {
        "ndm-upsample-nearest2x-bwd"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h2, w2) = dims4(l.dims(), "upsample_nearest2x backward")?;
        if h2 % 2 != 0 || w2 % 2 != 0 {
            candle_core::bail!("upsample_nearest2x backward: odd gradient size {h2}x{w2}");
        }
        let (h, w) = (h2 / 2, w2 / 2);
        dispatch_float!(s, "upsample_nearest2x backward", |T| {
            let dy = slice::<T>(s, l, "upsample_nearest2x backward")?;
            let dx = timed("upsample2x bwd", || {
                let mut dx = vec![T::zero(); b * c * h * w];
                dx.par_chunks_mut((h * w).max(1))
                    .zip(dy.par_chunks((4 * h * w).max(1)))
                    .for_each(|(xp, yp)| {
                        for (i, xrow) in xp.chunks_mut(w.max(1)).enumerate() {
                            let r0 = &yp[2 * i * w2..(2 * i + 1) * w2];
                            let r1 = &yp[(2 * i + 1) * w2..(2 * i + 2) * w2];
                            for ((o, a), bb) in xrow.iter_mut().zip(r0.chunks(2)).zip(r1.chunks(2))
                            {
                                *o = (a[0] + a[1]) + (bb[0] + bb[1]);
                            }
                        }
                    });
                dx
            });
            Ok((T::into_storage(dx), Shape::from((b, c, h, w))))
        })
    }
}
