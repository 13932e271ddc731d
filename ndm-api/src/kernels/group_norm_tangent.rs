//! The tangent of GroupNorm (optionally fused with the SiLU that follows it) in forward mode, as
//! one op with its own backward: what a network's time derivative (NDM's `dF/dt` through a
//! U-Net) runs at every normalisation.
//!
//! Per item and group (one contiguous run of `n = C/G * S` values), with `mu` and
//! `r = 1 / sqrt(var + eps)` the run's statistics and `xhat = (x - mu) r`, the tangent of
//! `y = gamma xhat + beta` for the input tangent `dx` is
//!
//! ```text
//! a = mean(dx)    b = mean(xhat dx)    dn = r (dx - a - xhat b)    u = gamma dn
//! out = silu'(y) u    (or u without the SiLU)
//! ```
//!
//! Backward, for the gradient `G` of `out`, with `s1 = silu'(y)`, `s2 = silu''(y)` (1 and 0
//! without the SiLU): `Gu = G s1`, `Gy = G u s2`, `Gdn = gamma Gu`, and the run's means
//! `m1 = mean(Gdn)`, `m2 = mean(Gdn xhat)`, `m3 = mean(Gdn dn)`:
//!
//! ```text
//! d dx    = r (Gdn - m1 - xhat m2)                       (the map dx -> dn is symmetric)
//! Gxhat   = gamma Gy - r (b Gdn + dx m2)                 (through y and through dn)
//! d x     = r (Gxhat - mean(Gxhat) - xhat (m3 + mean(Gxhat xhat)))
//! d gamma = sum over the batch and positions of (Gu dn + Gy xhat)       d beta = sum of Gy
//! ```
//!
//! (`d x` collects `Gxhat` through `xhat = (x - mu) r` and the explicit `r` of `dn`, whose
//! gradient is `n m3 / r`.) Statistics and sums are accumulated in f64.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::float::{dispatch_float, lane_sum, slice, wide, Float, FLUSH, LANES};
use super::group_norm::{reduce_affine_partials, GnGeom};
use super::profile::timed;

/// `sum f(x_i, y_i)` with [`LANES`] accumulators in `T`, flushed to f64 every [`FLUSH`] elements.
fn lane_sum2<T: Float>(x: &[T], y: &[T], f: impl Fn(T, T) -> T) -> f64 {
    let mut total = 0f64;
    for (xb, yb) in x.chunks(FLUSH).zip(y.chunks(FLUSH)) {
        let mut acc = [T::zero(); LANES];
        let mut xs = xb.chunks_exact(LANES);
        let mut ys = yb.chunks_exact(LANES);
        for (xc, yc) in (&mut xs).zip(&mut ys) {
            for l in 0..LANES {
                acc[l] += f(xc[l], yc[l]);
            }
        }
        let tail = xs
            .remainder()
            .iter()
            .zip(ys.remainder())
            .fold(T::zero(), |a, (u, v)| a + f(*u, *v));
        total += acc.iter().map(|v| v.to_acc()).sum::<f64>() + tail.to_acc();
    }
    total
}

/// One run's `(mu, r, a, b)` as `T`.
fn run_stats<T: Float>(x: &[T], dx: &[T], eps: f64) -> [T; 4] {
    let n = x.len().max(1) as f64;
    let mu = lane_sum(x, |v| v) / n;
    let m = T::from_acc(mu);
    let var = lane_sum(x, |v| (v - m) * (v - m)) / n;
    let r = 1.0 / (var + eps).sqrt();
    let a = lane_sum(dx, |v| v) / n;
    let b = lane_sum2(x, dx, |v, d| (v - m) * d) / n * r;
    [m, T::from_acc(r), T::from_acc(a), T::from_acc(b)]
}

/// `silu'(y)` and `silu''(y)`.
#[inline(always)]
fn silu_derivatives<T: Float>(y: T) -> (T, T) {
    let (one, sg) = (T::one(), y.sigmoid());
    let s1 = sg * (one + y * (one - sg));
    let s2 = sg * (one - sg) * (one + one + y * (one - sg - sg));
    (s1, s2)
}

fn tangent_fwd<T: Float, const SILU: bool>(
    g: &GnGeom,
    x: &[T],
    dx: &[T],
    gb: &[T],
    eps: f64,
) -> Vec<T> {
    let (run, s, cpg) = (g.run(), g.s, g.cpg());
    let (gamma, beta) = gb.split_at(g.c);
    let mut out = vec![T::zero(); g.numel()];
    out.par_chunks_mut(run)
        .zip(x.par_chunks(run))
        .zip(dx.par_chunks(run))
        .enumerate()
        .for_each(|(i, ((or, xr), dr))| {
            // One AVX2 region per run: the statistics' reductions and the map vectorise alike.
            wide(|| {
                let [mu, r, a, b] = run_stats(xr, dr, eps);
                let c0 = (i % g.groups) * cpg;
                for j in 0..cpg {
                    let (ga, be) = (gamma[c0 + j], beta[c0 + j]);
                    let gr = ga * r;
                    let span = j * s..(j + 1) * s;
                    let (o, xi, di) = (&mut or[span.clone()], &xr[span.clone()], &dr[span]);
                    for ((o, v), d) in o.iter_mut().zip(xi).zip(di) {
                        let xh = (*v - mu) * r;
                        let u = gr * (*d - a - xh * b);
                        *o = if SILU {
                            silu_derivatives(ga * xh + be).0 * u
                        } else {
                            u
                        };
                    }
                }
            })
        });
    out
}

/// Returns `[dx (numel), d dx (numel), dgamma (C), dbeta (C)]`.
fn tangent_bwd<T: Float, const SILU: bool>(
    g: &GnGeom,
    x: &[T],
    dx: &[T],
    gb: &[T],
    grad: &[T],
    eps: f64,
) -> Vec<T> {
    let (run, cpg, c, numel) = (g.run(), g.cpg(), g.c, g.numel());
    let mut out = vec![T::zero(); 2 * numel + 2 * c];
    let (gx, rest) = out.split_at_mut(numel);
    let (gdx, _) = rest.split_at_mut(numel);
    // Per-run partial sums of dgamma and dbeta: [B*G][cpg][2].
    let mut partial = vec![0f64; g.b * g.groups * cpg * 2];
    gx.par_chunks_mut(run)
        .zip(gdx.par_chunks_mut(run))
        .zip(x.par_chunks(run))
        .zip(dx.par_chunks(run))
        .zip(grad.par_chunks(run))
        .zip(partial.par_chunks_mut(cpg * 2))
        .enumerate()
        .for_each(|(i, (((((gxr, gdr), xr), dr), grr), pr))| {
            // xhat, dn and Gy of the run in this thread's scratch; gdx holds Gu until pass 2
            // overwrites it.
            T::with_scratch(3 * run, |buf| {
                wide(|| bwd_run::<T, SILU>(g, i, (xr, dr, grr), (gxr, gdr, pr), buf, gb, eps))
            })
        });
    reduce_affine_partials(g, &partial, &mut out[2 * numel..]);
    out
}

/// The backward of one run `i`: inputs `(x, dx, grad)`, outputs `(d x, d dx, affine partials)`,
/// `buf` scratch of three runs.
#[inline(always)]
fn bwd_run<T: Float, const SILU: bool>(
    g: &GnGeom,
    i: usize,
    (xr, dr, grr): (&[T], &[T], &[T]),
    (gxr, gdr, pr): (&mut [T], &mut [T], &mut [f64]),
    buf: &mut [T],
    gb: &[T],
    eps: f64,
) {
    let (run, s, cpg) = (g.run(), g.s, g.cpg());
    let (gamma, beta) = gb.split_at(g.c);
    let [mu, r, a, b] = run_stats(xr, dr, eps);
    let n = run as f64;
    let c0 = (i % g.groups) * cpg;
    let (xh, rest) = buf.split_at_mut(run);
    let (dn, gy) = rest.split_at_mut(run);
    let (mut m1, mut m2, mut m3) = (0f64, 0f64, 0f64);
    // Pass 1: the elementwise terms, the means of Gdn, Gdn xhat, Gdn dn, and the affine
    // gradients.
    for ch in 0..cpg {
        let (ga, be) = (gamma[c0 + ch], beta[c0 + ch]);
        let sp = ch * s..(ch + 1) * s;
        let (xo, no, gyo, guo) = (
            &mut xh[sp.clone()],
            &mut dn[sp.clone()],
            &mut gy[sp.clone()],
            &mut gdr[sp.clone()],
        );
        let (xi, di, gi) = (&xr[sp.clone()], &dr[sp.clone()], &grr[sp]);
        for (((((xo, no), gyo), guo), v), (d, gr)) in xo
            .iter_mut()
            .zip(no.iter_mut())
            .zip(gyo.iter_mut())
            .zip(guo.iter_mut())
            .zip(xi)
            .zip(di.iter().zip(gi))
        {
            let h = (*v - mu) * r;
            let dnv = r * (*d - a - h * b);
            *xo = h;
            *no = dnv;
            if SILU {
                let (s1, s2) = silu_derivatives(ga * h + be);
                *guo = *gr * s1;
                *gyo = *gr * ga * dnv * s2;
            } else {
                *guo = *gr;
                *gyo = T::zero();
            }
        }
        let gaf = ga.to_acc();
        let sum_gu = lane_sum(guo, |v| v);
        let gu_xh = lane_sum2(guo, xo, |u, h| u * h);
        let gu_dn = lane_sum2(guo, no, |u, d| u * d);
        let gy_xh = lane_sum2(gyo, xo, |u, h| u * h);
        m1 += gaf * sum_gu;
        m2 += gaf * gu_xh;
        m3 += gaf * gu_dn;
        pr[2 * ch] = gu_dn + gy_xh;
        pr[2 * ch + 1] = lane_sum(gyo, |v| v);
    }
    let (m1, m2, m3) = (
        T::from_acc(m1 / n),
        T::from_acc(m2 / n),
        T::from_acc(m3 / n),
    );
    // Pass 2: d dx over Gu, and Gxhat into gx.
    for ch in 0..cpg {
        let ga = gamma[c0 + ch];
        let sp = ch * s..(ch + 1) * s;
        let (go, xo) = (&mut gxr[sp.clone()], &mut gdr[sp.clone()]);
        let (hs, gys, ds) = (&xh[sp.clone()], &gy[sp.clone()], &dr[sp]);
        for ((((go, xo), h), gyv), d) in go.iter_mut().zip(xo.iter_mut()).zip(hs).zip(gys).zip(ds) {
            let gdn = ga * *xo;
            *xo = r * (gdn - m1 - *h * m2);
            *go = ga * *gyv - r * (b * gdn + *d * m2);
        }
    }
    let k1 = T::from_acc(lane_sum(gxr, |v| v) / n);
    let k2 = T::from_acc(lane_sum2(gxr, xh, |u, h| u * h) / n);
    // Pass 3: d x from Gxhat.
    let m = m3 + k2;
    for (o, h) in gxr.iter_mut().zip(xh.iter()) {
        *o = r * (*o - k1 - *h * m);
    }
}

/// Forward op: `(x, dx, [gamma; beta]) -> tangent of the output`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupNormTangent {
    pub groups: usize,
    pub eps: f64,
    pub silu: bool,
}

impl GroupNormTangent {
    fn geom(&self, x: &Layout, dx: &Layout, gb: &Layout) -> Result<GnGeom> {
        let g = GnGeom::new(x.dims(), self.groups)?;
        if dx.dims() != x.dims() {
            candle_core::bail!(
                "group_norm tangent: tangent {:?} and input {:?} differ",
                dx.dims(),
                x.dims()
            );
        }
        if gb.dims() != [2 * g.c] {
            candle_core::bail!(
                "group_norm tangent: [gamma; beta] must be [{}], got {:?}",
                2 * g.c,
                gb.dims()
            );
        }
        Ok(g)
    }
}

impl CustomOp3 for GroupNormTangent {
    fn name(&self) -> &'static str {
        "ndm-group-norm-tangent"
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
        let g = self.geom(l1, l2, l3)?;
        dispatch_float!(s1, "group_norm tangent", |T| {
            let x = slice::<T>(s1, l1, "group_norm tangent")?;
            let dx = slice::<T>(s2, l2, "group_norm tangent")?;
            let gb = slice::<T>(s3, l3, "group_norm tangent")?;
            let out = timed("group_norm tangent fwd", || {
                if self.silu {
                    tangent_fwd::<T, true>(&g, x, dx, gb, self.eps)
                } else {
                    tangent_fwd::<T, false>(&g, x, dx, gb, self.eps)
                }
            });
            Ok((T::into_storage(out), l1.shape().clone()))
        })
    }
    fn bwd(
        &self,
        x: &Tensor,
        dx: &Tensor,
        gb: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = GnGeom::new(x.dims(), self.groups)?;
        let n = g.numel();
        // A CustomOp takes at most three inputs: the op carries the fourth, `grad`.
        let op = GroupNormTangentBwd {
            op: *self,
            g,
            grad: grad.contiguous()?,
        };
        let packed = x.apply_op3_no_bwd(dx, gb, &op)?;
        let gx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let gdx = packed.narrow(0, n, n)?.reshape(x.shape())?;
        let ggb = packed.narrow(0, 2 * n, 2 * g.c)?;
        Ok((Some(gx), Some(gdx), Some(ggb)))
    }
}

/// `(x, dx, [gamma; beta]) -> [d x, d dx, dgamma, dbeta]` flattened, for the gradient `grad`
/// of the op's output.
#[derive(Debug, Clone)]
struct GroupNormTangentBwd {
    op: GroupNormTangent,
    g: GnGeom,
    grad: Tensor,
}

impl CustomOp3 for GroupNormTangentBwd {
    fn name(&self) -> &'static str {
        "ndm-group-norm-tangent-bwd"
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
        let (g, n) = (&self.g, self.g.numel());
        let what = "group_norm tangent backward";
        let (gs, gl) = self.grad.storage_and_layout();
        let Storage::Cpu(gs) = &*gs else {
            candle_core::bail!("{what}: the gradient is not on the CPU");
        };
        dispatch_float!(s1, what, |T| {
            let x = slice::<T>(s1, l1, what)?;
            let dx = slice::<T>(s2, l2, what)?;
            let gb = slice::<T>(s3, l3, what)?;
            let grad = slice::<T>(gs, gl, what)?;
            if dx.len() != n || grad.len() != n {
                candle_core::bail!("{what}: tangent or gradient is not the input's size {n}");
            }
            let out = timed("group_norm tangent bwd", || {
                if self.op.silu {
                    tangent_bwd::<T, true>(g, x, dx, gb, grad, self.op.eps)
                } else {
                    tangent_bwd::<T, false>(g, x, dx, gb, grad, self.op.eps)
                }
            });
            let len = out.len();
            Ok((T::into_storage(out), Shape::from(len)))
        })
    }
}
