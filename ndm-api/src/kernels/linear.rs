//! A dense layer `y = act(x) W^T + b` in one op, forward and backward: `act` the identity or
//! SiLU applied to the input (the pre-activation residual MLP's `W silu(h) + b`), `b` one bias row
//! `[out]` or one per example `[n, out]` (a bias plus e.g. a time-embedding projection).
//!
//! candle composes the same layer from four graph nodes (silu, transpose, matmul, broadcast add),
//! each with its own allocations in both passes, and its broadcast-add backward is a strided
//! reduction; here the forward is one GEMM per block of rows on the activated input (built in a
//! per-thread scratch buffer), and the backward two GEMMs with `silu'` applied in place, both
//! from one `sigmoid(x)`: kept by the forward inside a training step ([`super::expect_backward`]),
//! computed once by the backward otherwise (a sampler's forward keeps nothing).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::float::{dispatch_float, slice, Float};
use super::gemm::{matmul, Trans};
use super::profile::timed;
use super::silu::{sigmoid_into, silu_d1_given, silu_into, BLOCK};

/// Rows per parallel block: every thread gets work, no block is too small to amortise a GEMM's
/// packing, and a block's activated input stays in cache.
fn rows_per_block(n: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    n.div_ceil(threads).clamp(32, 1024)
}

/// `x` or `silu(x)`, written into `out`: from a computed `sigmoid(x)` where there is one.
fn activate<T: Float>(x: &[T], silu: bool, sig: Option<&[T]>, out: &mut [T]) {
    match (silu, sig) {
        (false, _) => out.copy_from_slice(x),
        (true, Some(s)) => {
            for ((o, v), s) in out.iter_mut().zip(x).zip(s) {
                *o = *v * *s;
            }
        }
        (true, None) => silu_into(x, out),
    }
}

/// `sigmoid(x)` of a SiLU layer's input, computed once by a backward whose forward kept none.
fn sigmoid_of(x: &Tensor) -> Result<Arc<CpuStorage>> {
    let (s, l) = x.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*s else {
        candle_core::bail!("linear backward: the input is not on the CPU");
    };
    dispatch_float!(s, "linear backward", |T| {
        let x = slice::<T>(s, l, "linear backward")?;
        let sig = timed("linear bwd sigmoid", || {
            let mut sig = vec![T::zero(); x.len()];
            sig.par_chunks_mut(BLOCK)
                .zip(x.par_chunks(BLOCK))
                .for_each(|(o, xi)| sigmoid_into(xi, o));
            sig
        });
        Ok(Arc::new(T::into_storage(sig)))
    })
}

/// A backward op's `sigmoid(x)` as a slice of `len` elements of `T`: `None` without SiLU, and an
/// error if a SiLU layer's backward was given none (its `silu'` would silently be left out).
fn sigmoid_for<T: Float>(
    silu: bool,
    sig: &Option<Arc<CpuStorage>>,
    len: usize,
) -> Result<Option<&[T]>> {
    if !silu {
        return Ok(None);
    }
    match sig.as_deref().map(T::cpu_storage_as_slice) {
        Some(Ok(s)) if s.len() == len => Ok(Some(s)),
        _ => candle_core::bail!("linear backward: no sigmoid of the input for a SiLU layer"),
    }
}

/// Checks `x: [n, k]`, `w: [m, k]`, `b: [m]` or `[n, m]`; returns `(n, k, m, per_row_bias)`.
fn dims(x: &Layout, w: &Layout, b: &Layout) -> Result<(usize, usize, usize, bool)> {
    let (xd, wd, bd) = (x.dims(), w.dims(), b.dims());
    if xd.len() != 2 || wd.len() != 2 || xd[1] != wd[1] {
        candle_core::bail!("linear: input {xd:?} and weight {wd:?} are not [n, k] and [m, k]");
    }
    let (n, k, m) = (xd[0], xd[1], wd[0]);
    if k == 0 || m == 0 {
        candle_core::bail!("linear: empty weight {wd:?}");
    }
    match bd {
        [len] if *len == m => Ok((n, k, m, false)),
        [rows, len] if *rows == n && *len == m => Ok((n, k, m, true)),
        _ => candle_core::bail!("linear: bias {bd:?} is neither [{m}] nor [{n}, {m}]"),
    }
}

/// Forward op over `(x, w, b)`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Linear {
    /// Whether SiLU is applied to the input first.
    pub silu: bool,
    /// Whether the forward keeps `sigmoid(x)` for a backward (inside [`super::expect_backward`]);
    /// otherwise the backward, if one comes, computes it.
    pub keep: bool,
    /// The kept `sigmoid(x)`.
    pub kept: Arc<Mutex<Option<Arc<CpuStorage>>>>,
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "ndm-linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, k, m, per_row) = dims(lx, lw, lb)?;
        let silu = self.silu;
        dispatch_float!(sx, "linear", |T| {
            let x = slice::<T>(sx, lx, "linear")?;
            let w = slice::<T>(sw, lw, "linear")?;
            let b = slice::<T>(sb, lb, "linear")?;
            let y = timed("linear fwd", || {
                let rows = rows_per_block(n);
                let mut y = vec![T::zero(); n * m];
                let keep = silu && self.keep;
                let mut sig = vec![T::zero(); if keep { n * k } else { 0 }];
                // One block of the kept sigmoid per block of rows (none when nothing is kept).
                let mut sig_blocks: Vec<Option<&mut [T]>> =
                    sig.chunks_mut(rows * k).map(Some).collect();
                sig_blocks.resize_with(n.div_ceil(rows), || None);
                y.par_chunks_mut(rows * m)
                    .zip(x.par_chunks(rows * k))
                    .zip(sig_blocks.into_par_iter())
                    .enumerate()
                    .for_each(|(i, ((yb, xb), sb))| {
                        let r = xb.len() / k;
                        if per_row {
                            yb.copy_from_slice(&b[i * rows * m..i * rows * m + r * m]);
                        } else {
                            for row in yb.chunks_mut(m) {
                                row.copy_from_slice(b);
                            }
                        }
                        let sb: Option<&[T]> = sb.map(|sb| {
                            sigmoid_into(xb, sb);
                            &*sb
                        });
                        T::with_scratch(r * k, |a| {
                            activate(xb, silu, sb, a);
                            matmul(r, m, k, a, Trans::N, w, Trans::T, yb, true, false);
                        });
                    });
                if keep {
                    if let Ok(mut kept) = self.kept.lock() {
                        *kept = Some(Arc::new(T::into_storage(sig)));
                    }
                }
                y
            });
            Ok((T::into_storage(y), Shape::from((n, m))))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let kept = self.kept.lock().ok().and_then(|k| k.clone());
        let sig = match kept {
            Some(s) => Some(s),
            None if self.silu && (x.track_op() || w.track_op()) => Some(sigmoid_of(x)?),
            None => None,
        };
        let dx = if x.track_op() {
            let op = LinearBwdInput {
                silu: self.silu,
                sig: sig.clone(),
            };
            Some(dy.apply_op3_no_bwd(w, x, &op)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let op = LinearBwdWeight {
                silu: self.silu,
                sig,
            };
            Some(x.apply_op2_no_bwd(&dy, &op)?)
        } else {
            None
        };
        let db = if !b.track_op() {
            None
        } else if b.rank() == 2 {
            Some(dy.clone())
        } else {
            Some(dy.apply_op1_no_bwd(&SumRows)?)
        };
        Ok((dx, dw, db))
    }
}

/// `(dy, w, x) -> dx = (dy W) * act'(x)`.
#[derive(Debug, Clone)]
struct LinearBwdInput {
    silu: bool,
    /// `sigmoid(x)`, computed once for the backward's two ops.
    sig: Option<Arc<CpuStorage>>,
}

impl CustomOp3 for LinearBwdInput {
    fn name(&self) -> &'static str {
        "ndm-linear-bwd-input"
    }

    fn cpu_fwd(
        &self,
        sd: &CpuStorage,
        ld: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sx: &CpuStorage,
        lx: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, k) = lx.shape().dims2()?;
        let m = lw.dims()[0];
        let silu = self.silu;
        dispatch_float!(sd, "linear backward", |T| {
            let dy = slice::<T>(sd, ld, "linear backward")?;
            let w = slice::<T>(sw, lw, "linear backward")?;
            let x = slice::<T>(sx, lx, "linear backward")?;
            let sig = sigmoid_for::<T>(silu, &self.sig, x.len())?;
            let dx = timed("linear bwd input", || {
                let rows = rows_per_block(n);
                let mut dx = vec![T::zero(); n * k];
                dx.par_chunks_mut(rows * k)
                    .zip(dy.par_chunks(rows * m).zip(x.par_chunks(rows * k)))
                    .enumerate()
                    .for_each(|(i, (db, (dyb, xb)))| {
                        let r = xb.len() / k;
                        matmul(r, k, m, dyb, Trans::N, w, Trans::N, db, false, false);
                        if let Some(sig) = sig {
                            let sb = &sig[i * rows * k..i * rows * k + r * k];
                            for ((d, v), s) in db.iter_mut().zip(xb).zip(sb) {
                                *d *= silu_d1_given(*v, *s);
                            }
                        }
                    });
                dx
            });
            Ok((T::into_storage(dx), Shape::from((n, k))))
        })
    }
}

/// `(x, dy) -> dW = dy^T act(x)`, `[m, k]`: partial products over blocks of rows, summed.
#[derive(Debug, Clone)]
struct LinearBwdWeight {
    silu: bool,
    /// `sigmoid(x)`, computed once for the backward's two ops.
    sig: Option<Arc<CpuStorage>>,
}

impl CustomOp2 for LinearBwdWeight {
    fn name(&self) -> &'static str {
        "ndm-linear-bwd-weight"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sd: &CpuStorage,
        ld: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, k) = lx.shape().dims2()?;
        let (_, m) = ld.shape().dims2()?;
        let silu = self.silu;
        dispatch_float!(sx, "linear backward", |T| {
            let x = slice::<T>(sx, lx, "linear backward")?;
            let dy = slice::<T>(sd, ld, "linear backward")?;
            let sig = sigmoid_for::<T>(silu, &self.sig, x.len())?;
            let dw = timed("linear bwd weight", || {
                let threads = rayon::current_num_threads().max(1);
                let rows = n.div_ceil(threads).max(64);
                let mut partials: Vec<Vec<T>> = x
                    .par_chunks(rows * k)
                    .zip(dy.par_chunks(rows * m))
                    .enumerate()
                    .map(|(i, (xb, dyb))| {
                        let r = xb.len() / k;
                        let mut p = vec![T::zero(); m * k];
                        let sb = sig.map(|s| &s[i * rows * k..i * rows * k + r * k]);
                        T::with_scratch(r * k, |a| {
                            activate(xb, silu, sb, a);
                            matmul(m, k, r, dyb, Trans::T, a, Trans::N, &mut p, false, false);
                        });
                        p
                    })
                    .collect();
                let mut dw = partials.pop().unwrap_or_else(|| vec![T::zero(); m * k]);
                for p in &partials {
                    for (d, v) in dw.iter_mut().zip(p) {
                        *d += *v;
                    }
                }
                dw
            });
            Ok((T::into_storage(dw), Shape::from((m, k))))
        })
    }
}

/// `[n, m] -> [m]`, the sum over rows (a bias gradient), accumulated in f64.
#[derive(Debug, Clone, Copy)]
struct SumRows;

impl candle_core::CustomOp1 for SumRows {
    fn name(&self) -> &'static str {
        "ndm-sum-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, m) = l.shape().dims2()?;
        dispatch_float!(s, "linear backward", |T| {
            let dy = slice::<T>(s, l, "linear backward")?;
            let sums = timed("linear bwd bias", || {
                let mut acc = vec![0f64; m];
                for row in dy.chunks(m.max(1)).take(n) {
                    for (a, v) in acc.iter_mut().zip(row) {
                        *a += v.to_acc();
                    }
                }
                acc.into_iter().map(T::from_acc).collect::<Vec<T>>()
            });
            Ok((T::into_storage(sums), Shape::from(m)))
        })
    }
}
