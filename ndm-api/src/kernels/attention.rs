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

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::float::{dispatch_float, lane_sum, slice, wide, Float};
use super::gemm::{matmul, Trans};
use super::profile::timed;

/// `(B, C, N, d)` of a `[B, 3C, N]` input split into `heads` heads.
fn dims(l: &Layout, heads: usize, op: &str) -> Result<(usize, usize, usize, usize)> {
    let &[b, c3, n] = l.dims() else {
        candle_core::bail!("{op}: expected [B, 3C, N], got {:?}", l.dims());
    };
    if c3 == 0 || !c3.is_multiple_of(3) || heads == 0 || !(c3 / 3).is_multiple_of(heads) {
        candle_core::bail!("{op}: {c3} channels are not 3 x C with C divisible by {heads} heads");
    }
    if n == 0 {
        candle_core::bail!("{op}: no positions (N = 0)");
    }
    Ok((b, c3 / 3, n, c3 / 3 / heads))
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
        if l2.dims() != [b, c, n] {
            candle_core::bail!(
                "attention backward: gradient {:?} does not match the output [{b}, {c}, {n}]",
                l2.dims()
            );
        }
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
                                for (dr, pr) in ds.chunks_exact_mut(n).zip(p.chunks_exact(n)) {
                                    let dot: f64 = dr
                                        .iter()
                                        .zip(pr)
                                        .map(|(a, b)| a.to_acc() * b.to_acc())
                                        .sum();
                                    let dot = T::from_acc(dot);
                                    for (o, pv) in dr.iter_mut().zip(pr) {
                                        *o = *pv * (*o - dot) * scale;
                                    }
                                }
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
