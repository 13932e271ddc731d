//! The core of multi-head self-attention in one op: from packed queries, keys and values to the
//! attended values, with a backward that recomputes the attention weights.
//!
//! Input `qkv: [B, 3C, N]`, channel `part * C + head * d + c` (`part` 0 = query, 1 = key,
//! 2 = value; `d = C / heads`); output `[B, C, N]`, channel `head * d + c`. Per item and head,
//! with `q, k, v` the `[d, N]` blocks and `s = 1 / sqrt(d)`:
//!
//! ```text
//! P = softmax_rows(s q^T k)   [N, N]        out = v P^T   [d, N]
//! dV = dout P    dP = dout^T v    dS = P * (dP - rowsum(dP * P))    dq = s k dS^T    dk = s q dS
//! ```
//!
//! Items run in parallel, the heads of an item in turn, each with single-threaded GEMMs; the
//! `N x N` weights live in per-thread scratch and are not kept between forward and backward.
//!
//! [`AttentionTangent`] is the forward-mode derivative of the same map (NDM's `dF/dt` through a
//! U-Net with attention): for a tangent `dqkv` of the input, packed the same way, with
//! `S = s q^T k`,
//!
//! ```text
//! dS = s (dq^T k + q^T dk)    r = rowsum(P * dS)    dP = P * (dS - r)    dout = dv P^T + v dP^T
//! ```
//!
//! Its backward, for a gradient `H` of `dout` (`A = H^T v`, `c = rowsum(A * P)`):
//!
//! ```text
//! d dv = H P        dv = H dP
//! B = P * (A - c)                                    (the gradient of dS)
//! E = H^T dv + A * (dS - r) - c dS                   (of P)
//! G = s P * (E - rowsum(E * P))                      (of q^T k)
//! dq = k G^T + s dk B^T    dk = q G + s dq B    d dq = s k B^T    d dk = s q B
//! ```

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::float::{dispatch_float, lane_sum, slice, wide, Float};
use super::gemm::{matmul, Trans};
use super::profile::timed;
use super::softmax::jacobian_row;

/// `(C, d)` of `3C` packed channels split into `heads` heads, or a one-line error.
pub(crate) fn head_dims(c3: usize, heads: usize, op: &str) -> Result<(usize, usize)> {
    if c3 == 0 || !c3.is_multiple_of(3) || heads == 0 || !(c3 / 3).is_multiple_of(heads) {
        candle_core::bail!("{op}: {c3} channels are not 3 x C with C divisible by {heads} heads");
    }
    Ok((c3 / 3, c3 / 3 / heads))
}

/// `(B, C, N, d)` of a `[B, 3C, N]` input split into `heads` heads.
fn dims(l: &Layout, heads: usize, op: &str) -> Result<(usize, usize, usize, usize)> {
    let &[b, c3, n] = l.dims() else {
        candle_core::bail!("{op}: expected [B, 3C, N], got {:?}", l.dims());
    };
    let (c, d) = head_dims(c3, heads, op)?;
    if n == 0 {
        candle_core::bail!("{op}: no positions (N = 0)");
    }
    Ok((b, c, n, d))
}

/// Checks that a backward's output gradient is `[B, C, N]`, the output's shape.
fn output_grad_dims(l: &Layout, [b, c, n]: [usize; 3], op: &str) -> Result<()> {
    if l.dims() != [b, c, n] {
        candle_core::bail!(
            "{op}: gradient {:?} does not match the output [{b}, {c}, {n}]",
            l.dims()
        );
    }
    Ok(())
}

/// `P = softmax_rows(scale * q^T k)` into `p` (`[N, N]`), `q` and `k` `[d, N]`.
fn weights<T: Float>(q: &[T], k: &[T], d: usize, n: usize, scale: T, p: &mut [T]) {
    matmul(n, n, d, q, Trans::T, k, Trans::N, p, false, false);
    for row in p.chunks_exact_mut(n) {
        let m = row
            .iter()
            .copied()
            .fold(<T as num_traits::Float>::neg_infinity(), |a, b| {
                if b > a {
                    b
                } else {
                    a
                }
            });
        wide(|| {
            for v in row.iter_mut() {
                *v = ((*v - m) * scale).exp_fast();
            }
        });
        let sum = lane_sum(row, |v| v);
        let inv = T::from_acc(1.0 / sum);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

/// Forward op over `qkv: [B, 3C, N]` -> `[B, C, N]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attention {
    pub heads: usize,
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "ndm-attention"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, n, d) = dims(l, self.heads, "attention")?;
        let heads = self.heads;
        dispatch_float!(s, "attention", |T| {
            let x = slice::<T>(s, l, "attention")?;
            let scale = T::from_acc(1.0 / (d as f64).sqrt());
            let y = timed("attention fwd", || {
                let mut y = vec![T::zero(); b * c * n];
                y.par_chunks_mut(c * n)
                    .zip(x.par_chunks(3 * c * n))
                    .for_each(|(yb, xb)| {
                        T::with_scratch(n * n, |p| {
                            for h in 0..heads {
                                let blk = |part: usize| &xb[(part * c + h * d) * n..][..d * n];
                                weights(blk(0), blk(1), d, n, scale, p);
                                let out = &mut yb[h * d * n..][..d * n];
                                matmul(d, n, n, blk(2), Trans::N, p, Trans::T, out, false, false);
                            }
                        })
                    });
                y
            });
            Ok((T::into_storage(y), Shape::from((b, c, n))))
        })
    }
    fn bwd(&self, qkv: &Tensor, _out: &Tensor, dout: &Tensor) -> Result<Option<Tensor>> {
        let op = AttentionBwd { heads: self.heads };
        Ok(Some(qkv.apply_op2_no_bwd(&dout.contiguous()?, &op)?))
    }
}

/// `(qkv, dout) -> dqkv`, packed like `qkv`.
#[derive(Debug, Clone, Copy)]
struct AttentionBwd {
    heads: usize,
}

impl CustomOp2 for AttentionBwd {
    fn name(&self) -> &'static str {
        "ndm-attention-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, n, d) = dims(l1, self.heads, "attention backward")?;
        output_grad_dims(l2, [b, c, n], "attention backward")?;
        let heads = self.heads;
        dispatch_float!(s1, "attention backward", |T| {
            let x = slice::<T>(s1, l1, "attention backward")?;
            let dy = slice::<T>(s2, l2, "attention backward")?;
            let scale = T::from_acc(1.0 / (d as f64).sqrt());
            let dx = timed("attention bwd", || {
                let mut dx = vec![T::zero(); b * 3 * c * n];
                dx.par_chunks_mut(3 * c * n)
                    .zip(x.par_chunks(3 * c * n).zip(dy.par_chunks(c * n)))
                    .for_each(|(dxb, (xb, dyb))| {
                        let mut dots = vec![0.0; n];
                        T::with_scratch(2 * n * n, |buf| {
                            let (p, ds) = buf.split_at_mut(n * n);
                            for h in 0..heads {
                                let off = |part: usize| (part * c + h * d) * n;
                                let blk = |part: usize| &xb[off(part)..][..d * n];
                                let (q, k, v) = (blk(0), blk(1), blk(2));
                                let g = &dyb[h * d * n..][..d * n];
                                weights(q, k, d, n, scale, p);
                                // dV = dout P.
                                let dv = &mut dxb[off(2)..][..d * n];
                                matmul(d, n, n, g, Trans::N, p, Trans::N, dv, false, false);
                                // dP = dout^T v, then dS = s P (dP - rowsum(dP P)) in place.
                                matmul(n, n, d, g, Trans::T, v, Trans::N, ds, false, false);
                                jacobian_rows(p, ds, n, scale, &mut dots);
                                // dq = k dS^T, dk = q dS.
                                let dq = &mut dxb[off(0)..][..d * n];
                                matmul(d, n, n, k, Trans::N, ds, Trans::T, dq, false, false);
                                let dk = &mut dxb[off(1)..][..d * n];
                                matmul(d, n, n, q, Trans::N, ds, Trans::N, dk, false, false);
                            }
                        })
                    });
                dx
            });
            Ok((T::into_storage(dx), l1.shape().clone()))
        })
    }
}

/// [`jacobian_row`] on each of the `n`-long rows of `x` with the same row of `p`, the row sums
/// `sum(p * x)` into `dots`.
fn jacobian_rows<T: Float>(p: &[T], x: &mut [T], n: usize, scale: T, dots: &mut [f64]) {
    for ((d, pr), xr) in dots
        .iter_mut()
        .zip(p.chunks_exact(n))
        .zip(x.chunks_exact_mut(n))
    {
        *d = jacobian_row(pr, xr, scale);
    }
}

/// One head's tangent pieces: `P` (from `q, k`), `dS` and `dP` into `p, ds, dp` (`[N, N]` each),
/// `r = rowsum(P * dS)` into `r`. `q, k, dq, dk` are `[d, N]`.
#[allow(clippy::too_many_arguments)]
fn tangent_weights<T: Float>(
    [q, k, dq, dk]: [&[T]; 4],
    d: usize,
    n: usize,
    scale: T,
    p: &mut [T],
    ds: &mut [T],
    dp: &mut [T],
    r: &mut [f64],
) {
    weights(q, k, d, n, scale, p);
    matmul(n, n, d, dq, Trans::T, k, Trans::N, ds, false, false);
    matmul(n, n, d, q, Trans::T, dk, Trans::N, ds, true, false);
    for v in ds.iter_mut() {
        *v *= scale;
    }
    dp.copy_from_slice(ds);
    jacobian_rows(p, dp, n, T::one(), r);
}

/// Checks that a second `[B, 3C, N]` operand (`what`) matches `qkv`'s dims.
pub(crate) fn same_dims(l: &Layout, other: &Layout, op: &str, what: &str) -> Result<()> {
    if other.dims() != l.dims() {
        candle_core::bail!(
            "{op}: {what} {:?} does not match qkv {:?}",
            other.dims(),
            l.dims()
        );
    }
    Ok(())
}

/// The tangent of the attention core: `(qkv, dqkv: [B, 3C, N]) -> dout: [B, C, N]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttentionTangent {
    pub heads: usize,
}

impl CustomOp2 for AttentionTangent {
    fn name(&self) -> &'static str {
        "ndm-attention-tangent"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "attention tangent";
        let (b, c, n, d) = dims(l1, self.heads, op)?;
        same_dims(l1, l2, op, "tangent")?;
        let heads = self.heads;
        dispatch_float!(s1, op, |T| {
            let x = slice::<T>(s1, l1, op)?;
            let dx = slice::<T>(s2, l2, op)?;
            let scale = T::from_acc(1.0 / (d as f64).sqrt());
            let y = timed("attention tangent fwd", || {
                let mut y = vec![T::zero(); b * c * n];
                y.par_chunks_mut(c * n)
                    .zip(x.par_chunks(3 * c * n).zip(dx.par_chunks(3 * c * n)))
                    .for_each(|(yb, (xb, dxb))| {
                        let mut r = vec![0.0; n];
                        T::with_scratch(3 * n * n, |buf| {
                            let (p, rest) = buf.split_at_mut(n * n);
                            let (ds, dp) = rest.split_at_mut(n * n);
                            for h in 0..heads {
                                let off = |part: usize| (part * c + h * d) * n;
                                let blk = |part: usize| &xb[off(part)..][..d * n];
                                let dblk = |part: usize| &dxb[off(part)..][..d * n];
                                let qk = [blk(0), blk(1), dblk(0), dblk(1)];
                                tangent_weights(qk, d, n, scale, p, ds, dp, &mut r);
                                // dout = dv P^T + v dP^T.
                                let out = &mut yb[h * d * n..][..d * n];
                                matmul(d, n, n, dblk(2), Trans::N, p, Trans::T, out, false, false);
                                matmul(d, n, n, blk(2), Trans::N, dp, Trans::T, out, true, false);
                            }
                        })
                    });
                y
            });
            Ok((T::into_storage(y), Shape::from((b, c, n))))
        })
    }
    fn bwd(
        &self,
        qkv: &Tensor,
        dqkv: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = AttentionTangentBwd { heads: self.heads };
        let g = qkv.apply_op3_no_bwd(dqkv, &grad.contiguous()?, &op)?;
        let c3 = qkv.dim(1)?;
        Ok((Some(g.narrow(1, 0, c3)?), Some(g.narrow(1, c3, c3)?)))
    }
}

/// `(qkv, dqkv, H) -> [B, 6C, N]`: per item the gradient of `qkv` then that of `dqkv`, each
/// packed like `qkv`.
#[derive(Debug, Clone, Copy)]
struct AttentionTangentBwd {
    heads: usize,
}

impl CustomOp3 for AttentionTangentBwd {
    fn name(&self) -> &'static str {
        "ndm-attention-tangent-bwd"
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
        let op = "attention tangent backward";
        let (b, c, n, d) = dims(l1, self.heads, op)?;
        same_dims(l1, l2, op, "tangent")?;
        output_grad_dims(l3, [b, c, n], op)?;
        let heads = self.heads;
        dispatch_float!(s1, op, |T| {
            let x = slice::<T>(s1, l1, op)?;
            let dx = slice::<T>(s2, l2, op)?;
            let gy = slice::<T>(s3, l3, op)?;
            let scale = T::from_acc(1.0 / (d as f64).sqrt());
            let g = timed("attention tangent bwd", || {
                let mut g = vec![T::zero(); b * 6 * c * n];
                g.par_chunks_mut(6 * c * n)
                    .zip(x.par_chunks(3 * c * n))
                    .zip(dx.par_chunks(3 * c * n).zip(gy.par_chunks(c * n)))
                    .for_each(|((gb, xb), (dxb, hb))| {
                        let (mut r, mut cr, mut er) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
                        let (gx, gdx) = gb.split_at_mut(3 * c * n);
                        T::with_scratch(6 * n * n, |buf| {
                            let (p, rest) = buf.split_at_mut(n * n);
                            let (ds, rest) = rest.split_at_mut(n * n);
                            let (dp, rest) = rest.split_at_mut(n * n);
                            let (a, rest) = rest.split_at_mut(n * n);
                            let (e, bm) = rest.split_at_mut(n * n);
                            for h in 0..heads {
                                let off = |part: usize| (part * c + h * d) * n;
                                let blk = |part: usize| &xb[off(part)..][..d * n];
                                let dblk = |part: usize| &dxb[off(part)..][..d * n];
                                let (q, k, v) = (blk(0), blk(1), blk(2));
                                let (dq, dk, dv) = (dblk(0), dblk(1), dblk(2));
                                let hg = &hb[h * d * n..][..d * n];
                                tangent_weights([q, k, dq, dk], d, n, scale, p, ds, dp, &mut r);
                                // d dv = H P, dv = H dP.
                                let gdv = &mut gdx[off(2)..][..d * n];
                                matmul(d, n, n, hg, Trans::N, p, Trans::N, gdv, false, false);
                                let gv = &mut gx[off(2)..][..d * n];
                                matmul(d, n, n, hg, Trans::N, dp, Trans::N, gv, false, false);
                                // A = H^T v; B = s P (A - c), c = rowsum(A P) (B scaled
                                // by s for the products below); E = H^T dv + A (dS - r) - c dS.
                                matmul(n, n, d, hg, Trans::T, v, Trans::N, a, false, false);
                                bm.copy_from_slice(a);
                                jacobian_rows(p, bm, n, scale, &mut cr);
                                matmul(n, n, d, hg, Trans::T, dv, Trans::N, e, false, false);
                                let rows = e.chunks_exact_mut(n).zip(a.chunks_exact(n));
                                for (((er, ar), sr), (ci, ri)) in
                                    rows.zip(ds.chunks_exact(n)).zip(cr.iter().zip(&r))
                                {
                                    let (ci, ri) = (T::from_acc(*ci), T::from_acc(*ri));
                                    for (ev, (av, sv)) in er.iter_mut().zip(ar.iter().zip(sr)) {
                                        *ev += *av * (*sv - ri) - ci * *sv;
                                    }
                                }
                                // G = s P (E - rowsum(E P)), over E.
                                jacobian_rows(p, e, n, scale, &mut er);
                                let gm = &*e;
                                // dq = k G^T + dk B^T, dk = q G + dq B (B holds s B).
                                let gq = &mut gx[off(0)..][..d * n];
                                matmul(d, n, n, k, Trans::N, gm, Trans::T, gq, false, false);
                                matmul(d, n, n, dk, Trans::N, bm, Trans::T, gq, true, false);
                                let gk = &mut gx[off(1)..][..d * n];
                                matmul(d, n, n, q, Trans::N, gm, Trans::N, gk, false, false);
                                matmul(d, n, n, dq, Trans::N, bm, Trans::N, gk, true, false);
                                // d dq = k B^T, d dk = q B.
                                let gdq = &mut gdx[off(0)..][..d * n];
                                matmul(d, n, n, k, Trans::N, bm, Trans::T, gdq, false, false);
                                let gdk = &mut gdx[off(1)..][..d * n];
                                matmul(d, n, n, q, Trans::N, bm, Trans::N, gdk, false, false);
                            }
                        })
                    });
                g
            });
            Ok((T::into_storage(g), Shape::from((b, 6 * c, n))))
        })
    }
}
