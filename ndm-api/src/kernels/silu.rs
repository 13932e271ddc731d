//! SiLU `x * sigmoid(x)` and its backward, and SiLU's tangent `silu'(x) dx` (forward mode) with
//! its own backward, elementwise in parallel blocks.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::float::{dispatch_float, slice, wide, Float};
use super::profile::timed;

/// Elements per parallel task of the elementwise kernels.
pub(super) const BLOCK: usize = 1 << 14;

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
                    .for_each(|(yo, xi)| silu_into(xi, yo));
                y
            });
            Ok((T::into_storage(y), l.shape().clone()))
        })
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        // silu's backward is its tangent map: dy silu'(x).
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &SiluTangent)?))
    }
}

/// `silu'(x) = s (1 + x (1 - s))` with `s = sigmoid(x)`.
#[inline(always)]
fn silu_d1<T: Float>(x: T) -> T {
    silu_d1_given(x, x.sigmoid())
}

/// `silu'(x)` from `s = sigmoid(x)` already at hand.
#[inline(always)]
pub(super) fn silu_d1_given<T: Float>(x: T, s: T) -> T {
    s * (T::one() + x * (T::one() - s))
}

/// `out = sigmoid(x)`, elementwise, in the widest vector unit.
/// `silu(x) = x sigmoid(x)` into `out`, in the widest vector variant the CPU has.
pub(super) fn silu_into<T: Float>(x: &[T], out: &mut [T]) {
    wide(|| {
        for (o, v) in out.iter_mut().zip(x) {
            *o = *v * v.sigmoid();
        }
    })
}

pub(super) fn sigmoid_into<T: Float>(x: &[T], out: &mut [T]) {
    wide(|| {
        for (o, v) in out.iter_mut().zip(x) {
            *o = v.sigmoid();
        }
    })
}

/// `silu''(x) = s (1 - s) (2 + x (1 - 2 s))`.
#[inline(always)]
fn silu_d2<T: Float>(x: T) -> T {
    let s = x.sigmoid();
    let two = T::one() + T::one();
    s * (T::one() - s) * (two + x * (T::one() - two * s))
}

fn same_dims(a: &Layout, b: &Layout, op: &str) -> Result<()> {
    if a.dims() != b.dims() {
        candle_core::bail!("{op}: shape mismatch {:?} vs {:?}", a.dims(), b.dims());
    }
    Ok(())
}

/// Forward op over `(x, dx)`: `silu'(x) dx`, the tangent of `silu(x)` for the tangent `dx` of `x`
/// (and, with `dx` the output's gradient, SiLU's backward).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SiluTangent;

impl CustomOp2 for SiluTangent {
    fn name(&self) -> &'static str {
        "ndm-silu-tangent"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        same_dims(l1, l2, "silu tangent")?;
        dispatch_float!(s1, "silu tangent", |T| {
            let x = slice::<T>(s1, l1, "silu tangent")?;
            let dx = slice::<T>(s2, l2, "silu tangent")?;
            let y = timed("silu' x d (silu bwd, tangent fwd)", || {
                let mut y = vec![T::zero(); x.len()];
                y.par_chunks_mut(BLOCK)
                    .zip(x.par_chunks(BLOCK).zip(dx.par_chunks(BLOCK)))
                    .for_each(|(o, (xi, di))| {
                        wide(|| {
                            for (o, (v, d)) in o.iter_mut().zip(xi.iter().zip(di)) {
                                *o = silu_d1(*v) * *d;
                            }
                        })
                    });
                y
            });
            Ok((T::into_storage(y), l1.shape().clone()))
        })
    }
    fn bwd(
        &self,
        x: &Tensor,
        dx: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = x.elem_count();
        let packed = x.apply_op3_no_bwd(dx, &g.contiguous()?, &SiluTangentBwd)?;
        let gx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let gdx = packed.narrow(0, n, n)?.reshape(x.shape())?;
        Ok((x.track_op().then_some(gx), dx.track_op().then_some(gdx)))
    }
}

/// `(x, dx, g) -> [g dx silu''(x), g silu'(x)]`, flattened one after the other.
#[derive(Debug, Clone, Copy)]
struct SiluTangentBwd;

impl CustomOp3 for SiluTangentBwd {
    fn name(&self) -> &'static str {
        "ndm-silu-tangent-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        same_dims(l1, l2, "silu tangent backward")?;
        same_dims(l1, l3, "silu tangent backward")?;
        dispatch_float!(s1, "silu tangent backward", |T| {
            let x = slice::<T>(s1, l1, "silu tangent backward")?;
            let dx = slice::<T>(s2, l2, "silu tangent backward")?;
            let g = slice::<T>(s3, l3, "silu tangent backward")?;
            let n = x.len();
            let out = timed("silu tangent bwd", || {
                let mut out = vec![T::zero(); 2 * n];
                let (gx, gdx) = out.split_at_mut(n);
                gx.par_chunks_mut(BLOCK)
                    .zip(gdx.par_chunks_mut(BLOCK))
                    .zip(
                        x.par_chunks(BLOCK)
                            .zip(dx.par_chunks(BLOCK).zip(g.par_chunks(BLOCK))),
                    )
                    .for_each(|((a, b), (xi, (di, gi)))| {
                        wide(|| {
                            for i in 0..xi.len() {
                                a[i] = gi[i] * di[i] * silu_d2(xi[i]);
                                b[i] = gi[i] * silu_d1(xi[i]);
                            }
                        })
                    });
                out
            });
            Ok((T::into_storage(out), Shape::from(2 * n)))
        })
    }
}
