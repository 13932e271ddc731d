//! GroupNorm, optionally fused with the SiLU that follows it, with a one-kernel backward.
//!
//! For `x: [B, C, *]` the elements of group `g` of item `b` are one contiguous run of
//! `C/G * S` values (S = spatial size), so the work is a parallel loop over `B * G` runs.
//! Statistics are accumulated in f64 and kept by the forward op (2 f64 per group and item) for
//! its backward, which returns `dx`, `dgamma`, `dbeta` packed in one flat tensor that the
//! caller splits with views.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::float::{dispatch_float, lane_sum, slice, wide, Float, FLUSH, LANES};
use super::profile::timed;

/// Sizes of one group norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GnGeom {
    pub b: usize,
    pub c: usize,
    pub s: usize,
    pub groups: usize,
}

impl GnGeom {
    pub fn new(dims: &[usize], groups: usize) -> Result<Self> {
        if dims.len() < 3 {
            candle_core::bail!(
                "group_norm: input must be [B, C, ...] with rank >= 3, got {dims:?}"
            );
        }
        let (b, c) = (dims[0], dims[1]);
        if groups == 0 || c % groups != 0 {
            candle_core::bail!("group_norm: {groups} groups do not divide {c} channels evenly");
        }
        Ok(Self {
            b,
            c,
            s: dims[2..].iter().product(),
            groups,
        })
    }
    pub(crate) fn cpg(&self) -> usize {
        self.c / self.groups
    }
    pub(crate) fn run(&self) -> usize {
        (self.cpg() * self.s).max(1)
    }
    pub(crate) fn numel(&self) -> usize {
        self.b * self.c * self.s
    }
}

/// Mean and 1/sqrt(var + eps) of one run (two passes, f64 totals).
fn stats<T: Float>(x: &[T], eps: f64) -> (f64, f64) {
    let n = x.len().max(1) as f64;
    let mean = lane_sum(x, |v| v) / n;
    let m = T::from_acc(mean);
    let var = lane_sum(x, |v| (v - m) * (v - m)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Backward pass 1 over one channel plane: writes `dz` into `dzo` (the gradient at the
/// affine output, through the SiLU when fused) and returns `(sum dz * xhat, sum dz)`.
/// The elementwise map and the reductions are separate loops so both vectorise.
fn dz_plane<T: Float, const SILU: bool>(
    xi: &[T],
    dyi: &[T],
    dzo: &mut [T],
    (mean, rstd): (T, T),
    (ga, be): (T, T),
) -> (f64, f64) {
    wide(|| {
        for ((o, v), d) in dzo.iter_mut().zip(xi).zip(dyi) {
            *o = if SILU {
                let z = (*v - mean) * rstd * ga + be;
                let sg = z.sigmoid();
                *d * sg * (T::one() + z * (T::one() - sg))
            } else {
                *d
            };
        }
    });
    let (mut dgam, mut dbet) = (0f64, 0f64);
    for (xb, zb) in xi.chunks(FLUSH).zip(dzo.chunks(FLUSH)) {
        let (mut ag, mut ab) = ([T::zero(); LANES], [T::zero(); LANES]);
        let mut xs = xb.chunks_exact(LANES);
        let mut zs = zb.chunks_exact(LANES);
        for (xc, zc) in (&mut xs).zip(&mut zs) {
            for l in 0..LANES {
                ag[l] += zc[l] * ((xc[l] - mean) * rstd);
                ab[l] += zc[l];
            }
        }
        let (mut tg, mut tb) = (T::zero(), T::zero());
        for (v, z) in xs.remainder().iter().zip(zs.remainder()) {
            tg += *z * ((*v - mean) * rstd);
            tb += *z;
        }
        dgam += ag.iter().map(|v| v.to_acc()).sum::<f64>() + tg.to_acc();
        dbet += ab.iter().map(|v| v.to_acc()).sum::<f64>() + tb.to_acc();
    }
    (dgam, dbet)
}

/// Returns `y` and the `(mean, rstd)` of every run.
fn gn_fwd<T: Float>(
    g: &GnGeom,
    x: &[T],
    gamma: &[T],
    beta: &[T],
    eps: f64,
    silu: bool,
) -> (Vec<T>, Vec<f64>) {
    let (run, s, cpg) = (g.run(), g.s, g.cpg());
    let mut y = vec![T::zero(); g.numel()];
    let mut st = vec![0f64; 2 * g.b * g.groups];
    y.par_chunks_mut(run)
        .zip(x.par_chunks(run))
        .zip(st.par_chunks_mut(2))
        .enumerate()
        .for_each(|(i, ((yr, xr), sr))| {
            let (mean, rstd) = stats(xr, eps);
            sr[0] = mean;
            sr[1] = rstd;
            let c0 = (i % g.groups) * cpg;
            for j in 0..cpg {
                // y = x * a + b with a = rstd * gamma, b = beta - mean * a.
                let a = rstd * gamma[c0 + j].to_acc();
                let (a, bb) = (
                    T::from_acc(a),
                    T::from_acc(beta[c0 + j].to_acc() - mean * a),
                );
                let (yo, xi) = (&mut yr[j * s..(j + 1) * s], &xr[j * s..(j + 1) * s]);
                if silu {
                    wide(|| {
                        for (o, v) in yo.iter_mut().zip(xi) {
                            let z = *v * a + bb;
                            *o = z * z.sigmoid();
                        }
                    })
                } else {
                    for (o, v) in yo.iter_mut().zip(xi) {
                        *o = *v * a + bb;
                    }
                }
            }
        });
    (y, st)
}

/// Returns `[dx (numel), dgamma (C), dbeta (C)]`.
/// `saved`: the forward's `(mean, rstd)` per run, recomputed when absent.
fn gn_bwd<T: Float>(
    g: &GnGeom,
    x: &[T],
    gb: &[T],
    dy: &[T],
    eps: f64,
    silu: bool,
    saved: Option<&[f64]>,
) -> Vec<T> {
    let (run, s, cpg, c) = (g.run(), g.s, g.cpg(), g.c);
    let (gamma, beta) = gb.split_at(c);
    let mut out = vec![T::zero(); g.numel() + 2 * c];
    let (dx, dgb) = out.split_at_mut(g.numel());
    // Per-run partial sums of dgamma and dbeta: [B*G][cpg][2], reduced over the batch below.
    let mut partial = vec![0f64; g.b * g.groups * cpg * 2];
    dx.par_chunks_mut(run)
        .zip(x.par_chunks(run))
        .zip(dy.par_chunks(run))
        .zip(partial.par_chunks_mut(cpg * 2))
        .enumerate()
        .for_each(|(i, (((dxr, xr), dyr), pr))| {
            let (mean, rstd) = match saved {
                Some(st) => (st[2 * i], st[2 * i + 1]),
                None => stats(xr, eps),
            };
            let c0 = (i % g.groups) * cpg;
            let (mut s1, mut s2) = (0f64, 0f64);
            let (mean_t, rstd_t) = (T::from_acc(mean), T::from_acc(rstd));
            // Pass 1: dz (gradient at the norm's affine output) into dx, and its reductions.
            for j in 0..cpg {
                let (ga, be) = (gamma[c0 + j], beta[c0 + j]);
                let (xi, dyi, dxo) = (
                    &xr[j * s..(j + 1) * s],
                    &dyr[j * s..(j + 1) * s],
                    &mut dxr[j * s..(j + 1) * s],
                );
                let st = (mean_t, rstd_t);
                let (dgam, dbet) = if silu {
                    dz_plane::<T, true>(xi, dyi, dxo, st, (ga, be))
                } else {
                    dz_plane::<T, false>(xi, dyi, dxo, st, (ga, be))
                };
                pr[2 * j] = dgam;
                pr[2 * j + 1] = dbet;
                let gaf = ga.to_acc();
                s1 += dbet * gaf;
                s2 += dgam * gaf;
            }
            // Pass 2: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
            let n = run as f64;
            let (m1, m2) = (T::from_acc(s1 / n), T::from_acc(s2 / n));
            for j in 0..cpg {
                let ga = gamma[c0 + j];
                let (o, xi) = (&mut dxr[j * s..(j + 1) * s], &xr[j * s..(j + 1) * s]);
                for (o, v) in o.iter_mut().zip(xi) {
                    let xhat = (*v - mean_t) * rstd_t;
                    *o = rstd_t * (ga * *o - m1 - xhat * m2);
                }
            }
        });
    reduce_affine_partials(g, &partial, dgb);
    out
}

/// Sums per-run partial `(dgamma, dbeta)` pairs (`[B*G][C/G][2]`) over the batch into
/// `dgb = [dgamma (C), dbeta (C)]`.
pub(crate) fn reduce_affine_partials<T: Float>(g: &GnGeom, partial: &[f64], dgb: &mut [T]) {
    let (c, cpg) = (g.c, g.cpg());
    let (dgamma, dbeta) = dgb.split_at_mut(c);
    for ch in 0..c {
        let (gi, j) = (ch / cpg, ch % cpg);
        let (mut a, mut bsum) = (0f64, 0f64);
        for bi in 0..g.b {
            let base = ((bi * g.groups + gi) * cpg + j) * 2;
            a += partial[base];
            bsum += partial[base + 1];
        }
        dgamma[ch] = T::from_acc(a);
        dbeta[ch] = T::from_acc(bsum);
    }
}

/// Forward op: `(x, gamma, beta) -> y` (with SiLU applied when `silu`).
#[derive(Debug, Clone, Default)]
pub(crate) struct GroupNorm {
    pub groups: usize,
    pub eps: f64,
    pub silu: bool,
    /// `(mean, rstd)` per run from the forward, for the backward.
    pub saved: Arc<Mutex<Option<Vec<f64>>>>,
}

impl GroupNorm {
    fn label(&self, fwd: bool) -> &'static str {
        match (self.silu, fwd) {
            (true, true) => "group_norm+silu fwd",
            (true, false) => "group_norm+silu bwd",
            (false, true) => "group_norm fwd",
            (false, false) => "group_norm bwd",
        }
    }
}

fn check_affine(g: &GnGeom, gamma: &[usize], beta: &[usize]) -> Result<()> {
    if gamma != [g.c] || beta != [g.c] {
        candle_core::bail!(
            "group_norm: gamma and beta must be [{}], got {gamma:?} and {beta:?}",
            g.c
        );
    }
    Ok(())
}

impl CustomOp3 for GroupNorm {
    fn name(&self) -> &'static str {
        "ndm-group-norm"
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
        let g = GnGeom::new(l1.dims(), self.groups)?;
        check_affine(&g, l2.dims(), l3.dims())?;
        dispatch_float!(s1, "group_norm", |T| {
            let x = slice::<T>(s1, l1, "group_norm")?;
            let gamma = slice::<T>(s2, l2, "group_norm")?;
            let beta = slice::<T>(s3, l3, "group_norm")?;
            let (y, st) = timed(self.label(true), || {
                gn_fwd(&g, x, gamma, beta, self.eps, self.silu)
            });
            if let Ok(mut saved) = self.saved.lock() {
                *saved = Some(st);
            }
            Ok((T::into_storage(y), l1.shape().clone()))
        })
    }
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = GnGeom::new(x.dims(), self.groups)?;
        let gb = Tensor::cat(&[gamma, beta], 0)?;
        let saved = self.saved.lock().ok().and_then(|s| s.clone());
        let saved = saved.filter(|s| s.len() == 2 * g.b * g.groups);
        let bwd = GroupNormBwd {
            op: self.clone(),
            g,
            saved,
        };
        let packed = x.apply_op3_no_bwd(&gb, &dy.contiguous()?, &bwd)?;
        let n = g.numel();
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dgamma = packed.narrow(0, n, g.c)?;
        let dbeta = packed.narrow(0, n + g.c, g.c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// `(x, [gamma; beta], dy) -> [dx, dgamma, dbeta]` flattened.
#[derive(Debug, Clone)]
struct GroupNormBwd {
    op: GroupNorm,
    g: GnGeom,
    saved: Option<Vec<f64>>,
}

impl CustomOp3 for GroupNormBwd {
    fn name(&self) -> &'static str {
        "ndm-group-norm-bwd"
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
        let g = &self.g;
        dispatch_float!(s1, "group_norm backward", |T| {
            let x = slice::<T>(s1, l1, "group_norm backward")?;
            let gb = slice::<T>(s2, l2, "group_norm backward")?;
            let dy = slice::<T>(s3, l3, "group_norm backward")?;
            let out = timed(self.op.label(false), || {
                gn_bwd(
                    g,
                    x,
                    gb,
                    dy,
                    self.op.eps,
                    self.op.silu,
                    self.saved.as_deref(),
                )
            });
            let len = out.len();
            Ok((T::into_storage(out), Shape::from(len)))
        })
    }
}
