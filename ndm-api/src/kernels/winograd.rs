//! 3x3, stride-1, padding-1 convolution by Winograd's minimal filtering F(2x2, 3x3).
//!
//! Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks": a 2x2 output tile of a
//! 3x3 correlation is `Y = A^T [(G g G^T) * (B^T d B)] A` for the 4x4 input tile `d` around it,
//! with `*` elementwise. For F(2, 3) with interpolation points 0, 1, -1 (and infinity), the 1-D
//! algorithm on `d0..d3`, `g0..g2` is
//!
//! ```text
//! m1 = (d0 - d2) g0             m2 = (d1 + d2) (g0 + g1 + g2) / 2
//! m4 = (d1 - d3) g2             m3 = (d2 - d1) (g0 - g1 + g2) / 2
//! y0 = m1 + m2 + m3  (= d0 g0 + d1 g1 + d2 g2)
//! y1 = m2 - m3 - m4  (= d1 g0 + d2 g1 + d3 g2)
//! ```
//!
//! so, nesting it in both dimensions,
//!
//! ```text
//!        | 1  0 -1  0 |        | 1    0    0  |
//! B^T =  | 0  1  1  0 |   G =  | 1/2  1/2  1/2 |   A^T = | 1  1  1  0 |
//!        | 0 -1  1  0 |        | 1/2 -1/2  1/2 |         | 0  1 -1 -1 |
//!        | 0  1  0 -1 |        | 0    0    1  |
//! ```
//!
//! Layout: the weights are transformed once per call into 16 matrices `U_xi [Cout, Cin]`
//! (`xi = 4 i + j` indexes the 4x4 transformed tile); the input tiles of a group of images into
//! 16 matrices `V_xi [Cin, T]` (T tiles, `ceil(H/2) * ceil(W/2)` per image, edge tiles read zeros
//! past the image); 16 GEMMs give `M_xi = U_xi V_xi [Cout, T]`, and the inverse transform writes
//! each 2x2 output tile (clipped at odd edges) with the bias. Groups of images run in parallel with
//! rayon, `V` and `M` in the per-thread scratch. 16 products per 4 outputs instead of 36: 2.25x
//! fewer multiply-adds in the GEMMs than im2col. When a tile row is at least
//! `WIDE_ROWS_MIN_TILES` tiles long, each tile row gets one spare tile (`ceil(H/2)
//! (ceil(W/2) + 1)` tiles per image, the spare's output dropped), so both transforms run as
//! unit-stride loops over whole planes instead of short loops over one tile row.
//!
//! The weight gradient ([`conv3x3_bwd_weight_bias`]) is the transpose of the same algorithm.
//! `Y` is linear in the kernel `g`, so for a loss with output gradient `dY` (zero at the clipped
//! positions of an odd edge), summed over the tiles of one (co, ci) pair,
//!
//! ```text
//! dg = G^T [ sum_tiles (A dY A^T) * (B^T d B) ] G
//! ```
//!
//! with `d` the forward's 4x4 input tile. Layout: per group of images, the input tiles into
//! `V_xi [Cin, T]` and the 2x2 output-gradient tiles into `W_xi = (A dY A^T)_xi [Cout, T]`; 16
//! GEMMs accumulate `M_xi += W_xi V_xi^T [Cout, Cin]`, reducing over the tiles. Each rayon fold
//! keeps its own `M`; the partial sums are added and `G^T M G` maps each (co, ci) back to its 3x3
//! kernel once. Here a tile row has one spare tile (`T = ceil(H/2) (ceil(W/2) + 1)` per image, the
//! spare's `W` zero), so both transforms are unit-stride loops over whole planes instead of
//! loops over one tile row. The bias gradient (each `dY` plane's sum, in f64) comes out of the
//! same pass over `dY`.

use rayon::prelude::*;

use super::conv::ConvGeom;
use super::float::{lane_sum, Float};
use super::gemm::{matmul, Trans};

/// Tiles aimed for per GEMM: small images are grouped until a group has about this many columns.
const TARGET_TILES: usize = 256;

/// Shortest tile row (`ceil(W / 2)` tiles) that the forward pads with a spare tile for the
/// whole-plane transforms ([`input_transform_wide_rows`]); shorter rows would pay more in extra
/// GEMM columns than the transforms save. With the transforms in AVX2, 4 tiles already gain
/// (64 images of 64 channels, 2 threads, forward / forward+backward: 14x14 4.2-4.7 against
/// 5.7-6.0 ms and 13.8-16.1 against 17.5-19.0 ms; 7x7 2.1 against 2.4 ms, 6.6-6.8 against
/// 7.2-7.4 ms).
const WIDE_ROWS_MIN_TILES: usize = 4;

/// Fewest input and output channels for Winograd: with fewer, the transforms cost more than the
/// GEMM work they save (a 1-channel input conv took 2.5 ms against im2col's 1.4 ms).
const MIN_CHANNELS: usize = 8;

/// Whether `conv_fwd` runs this convolution as [`conv3x3`] (which computes any 3x3, stride-1,
/// padding-1 geometry; the channel counts only decide whether it is faster).
pub(crate) fn applies(g: &ConvGeom) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == 1 && g.pad == 1 && g.cin.min(g.cout) >= MIN_CHANNELS
}

/// `$wide` runs the `#[inline(always)]` transform `$name` compiled for AVX2 with FMA when the CPU
/// has them (chosen at run time), else for the build's baseline. Unlike `float::wide`, which
/// takes a closure that LLVM declines to inline when it holds a whole transform (the transforms
/// then ran as 4-lane SSE code), the transform is inlined into a `target_feature` function here.
macro_rules! wide_variant {
    ($wide:ident, $avx2:ident, $name:ident, ($($arg:ident: $ty:ty),* $(,)?)) => {
        #[inline(always)]
        fn $wide<T: Float>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU was just found to have AVX2 and FMA, the features it enables.
                return unsafe { $avx2($($arg),*) };
            }
            $name($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2<T: Float>($($arg: $ty),*) {
            $name($($arg),*)
        }
    };
}

wide_variant!(input_transform_wide, input_transform_avx2, input_transform,
    (g: &ConvGeom, x: &[T], imgs: usize, v: &mut [T]));
wide_variant!(input_transform_wide_rows_wide, input_transform_wide_rows_avx2,
    input_transform_wide_rows, (g: &ConvGeom, x: &[T], imgs: usize, v: &mut [T]));
wide_variant!(output_transform_wide, output_transform_avx2, output_transform,
    (g: &ConvGeom, m: &[T], imgs: usize, bias: &dyn Fn(usize, usize) -> T, y: &mut [T]));
wide_variant!(output_transform_wide_rows_wide, output_transform_wide_rows_avx2,
    output_transform_wide_rows,
    (g: &ConvGeom, m: &[T], imgs: usize, bias: &dyn Fn(usize, usize) -> T, y: &mut [T]));
wide_variant!(grad_output_transform_wide, grad_output_transform_avx2, grad_output_transform,
    (g: &ConvGeom, dy: &[T], imgs: usize, wt: &mut [T], sums: &mut [f64]));

/// `(B^T d) B` along one row of tiles: with `[e0, e1, o0, o1]` the row's even and odd columns
/// seen from each tile (`E[t], E[t + 1], O[t], O[t + 1]`), writes `E[t] - E[t + 1]`,
/// `O[t] + E[t + 1]`, `E[t + 1] - O[t]` and `O[t] - O[t + 1]` for the tiles `t` of the row into
/// `v[at(j)..]`, `j = 0..4`.
#[inline(always)]
fn bt_along_row<T: Float>([e0, e1, o0, o1]: [&[T]; 4], v: &mut [T], at: impl Fn(usize) -> usize) {
    let n = e0.len();
    for (t, d) in v[at(0)..at(0) + n].iter_mut().enumerate() {
        *d = e0[t] - e1[t];
    }
    for (t, d) in v[at(1)..at(1) + n].iter_mut().enumerate() {
        *d = o0[t] + e1[t];
    }
    for (t, d) in v[at(2)..at(2) + n].iter_mut().enumerate() {
        *d = e1[t] - o0[t];
    }
    for (t, d) in v[at(3)..at(3) + n].iter_mut().enumerate() {
        *d = o0[t] - o1[t];
    }
}

/// `B^T d` down the columns of four equal rows `d0..d3`: `d0 - d2, d1 + d2, d2 - d1, d1 - d3`
/// into the four consecutive rows of `c` (`c.len() = 4 d0.len()`), each one unit-stride loop.
#[inline(always)]
fn bt_down<T: Float>([d0, d1, d2, d3]: [&[T]; 4], c: &mut [T]) {
    let n = d0.len();
    // Equal lengths, stated once, so the loop has no bounds checks and vectorises.
    let (d1, d2, d3) = (&d1[..n], &d2[..n], &d3[..n]);
    let (c0, rest) = c[..4 * n].split_at_mut(n);
    let (c1, rest) = rest.split_at_mut(n);
    let (c2, c3) = rest.split_at_mut(n);
    for k in 0..n {
        c0[k] = d0[k] - d2[k];
        c1[k] = d1[k] + d2[k];
        c2[k] = d2[k] - d1[k];
        c3[k] = d1[k] - d3[k];
    }
}

/// Splits a row by column parity: `src[2k]` into `even[k]`, `src[2k + 1]` into `odd[k]` (an odd
/// length's last element into `even`). Whole pairs first, as one branch-free loop that
/// vectorises, then the odd tail.
#[inline(always)]
fn deinterleave<T: Copy>(src: &[T], even: &mut [T], odd: &mut [T]) {
    let (pairs, tail) = src.split_at(src.len() & !1);
    let n = pairs.len() / 2;
    for ((p, e), o) in pairs.chunks_exact(2).zip(&mut even[..n]).zip(&mut odd[..n]) {
        *e = p[0];
        *o = p[1];
    }
    if let Some(&last) = tail.first() {
        even[n] = last;
    }
}

/// The inverse of [`deinterleave`] into `dst`: `dst[2k] = even[k]`, `dst[2k + 1] = odd[k]`.
#[inline(always)]
fn interleave<T: Copy>(even: &[T], odd: &[T], dst: &mut [T]) {
    let w = dst.len();
    let (pairs, tail) = dst.split_at_mut(w & !1);
    let n = pairs.len() / 2;
    for ((p, &e), &o) in pairs.chunks_exact_mut(2).zip(&even[..n]).zip(&odd[..n]) {
        p[0] = e;
        p[1] = o;
    }
    if let Some(last) = tail.first_mut() {
        *last = even[n];
    }
}

/// `U = G g G^T` for every (co, ci): `u[xi][co][ci]`, 16 matrices of `[Cout, Cin]`.
fn weight_transform<T: Float>(g: &ConvGeom, w: &[T]) -> Vec<T> {
    let (cout, cin) = (g.cout, g.cin);
    let cc = cout * cin;
    let half = T::from_acc(0.5);
    let mut u = vec![T::zero(); 16 * cc];
    for (idx, k) in w.chunks_exact(9).enumerate().take(cc) {
        // G k: rows g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2 of the 3x3 kernel.
        let mut gk = [[T::zero(); 3]; 4];
        for c in 0..3 {
            let (a, b, d) = (k[c], k[3 + c], k[6 + c]);
            gk[0][c] = a;
            gk[1][c] = (a + b + d) * half;
            gk[2][c] = (a - b + d) * half;
            gk[3][c] = d;
        }
        // (G k) G^T: the same combination along each row.
        for (i, r) in gk.iter().enumerate() {
            let (a, b, d) = (r[0], r[1], r[2]);
            let row = [a, (a + b + d) * half, (a - b + d) * half, d];
            for (j, v) in row.into_iter().enumerate() {
                u[(4 * i + j) * cc + idx] = v;
            }
        }
    }
    u
}

/// `V = B^T d B` for every 4x4 input tile of `imgs` images `x [imgs, Cin, H, W]`:
/// `v[xi][ci][t]` with tile `t = img * tpi + ty * tw + tx`.
///
/// Each plane is first copied with one zero row and column of padding around it and its columns
/// split into even and odd halves (`E[k]` = padded column `2k`, `O[k]` = `2k + 1`), so both
/// transform passes are unit-stride loops that vectorise.
#[inline(always)]
fn input_transform<T: Float>(g: &ConvGeom, x: &[T], imgs: usize, v: &mut [T]) {
    let (h, w, cin) = (g.h, g.w, g.cin);
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let (tpi, nt) = (th * tw, imgs * th * tw);
    let cs = cin * nt;
    // Padded rows 0 ..= 2 th + 1 (row r is input row r - 1), each [E (te) | O (te)].
    let te = tw + 1;
    let rw = 2 * te;
    // Positions outside the image are never written, so they stay zero for every plane.
    let mut pad = vec![T::zero(); (2 * th + 2) * rw];
    let mut c = vec![T::zero(); 4 * rw];
    for img in 0..imgs {
        for ci in 0..cin {
            let plane = &x[(img * cin + ci) * h * w..(img * cin + ci + 1) * h * w];
            for (iy, src) in plane.chunks_exact(w).enumerate() {
                let (e, o) = pad[(iy + 1) * rw..(iy + 2) * rw].split_at_mut(te);
                // Input column ix is padded column ix + 1: odd ix -> E[(ix + 1) / 2], even -> O[ix / 2].
                deinterleave(src, o, &mut e[1..]);
            }
            for ty in 0..th {
                let p = &pad[2 * ty * rw..(2 * ty + 4) * rw];
                let (p0, rest) = p.split_at(rw);
                let (p1, rest) = rest.split_at(rw);
                let (p2, p3) = rest.split_at(rw);
                bt_down([p0, p1, p2, p3], &mut c);
                let (c0, rest) = c.split_at(rw);
                let (c1, rest) = rest.split_at(rw);
                let (c2, c3) = rest.split_at(rw);
                // (B^T d) B: the same combinations along each row; tile tx reads padded columns
                // 2tx .. 2tx + 3 = E[tx], O[tx], E[tx + 1], O[tx + 1].
                let t0 = ci * nt + img * tpi + ty * tw;
                for (i, row) in [c0, c1, c2, c3].into_iter().enumerate() {
                    let (e, o) = row.split_at(te);
                    let cols = [&e[..tw], &e[1..te], &o[..tw], &o[1..te]];
                    bt_along_row(cols, v, |j| (4 * i + j) * cs + t0);
                }
            }
        }
    }
}

/// `Y = A^T M A` per tile into `y [imgs, Cout, H, W]`, plus the bias row of each image.
#[inline(always)]
fn output_transform<T: Float>(
    g: &ConvGeom,
    m: &[T],
    imgs: usize,
    bias: &dyn Fn(usize, usize) -> T,
    y: &mut [T],
) {
    let (h, w, cout) = (g.h, g.w, g.cout);
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let (tpi, nt) = (th * tw, imgs * th * tw);
    let ms = cout * nt;
    // The four outputs of each tile of one tile row: (even, odd) column of the top and bottom row.
    let mut out = vec![T::zero(); 4 * tw];
    for img in 0..imgs {
        for co in 0..cout {
            let b = bias(img, co);
            let plane = &mut y[(img * cout + co) * h * w..(img * cout + co + 1) * h * w];
            for ty in 0..th {
                let t0 = co * nt + img * tpi + ty * tw;
                let mm: [&[T]; 16] = std::array::from_fn(|xi| &m[xi * ms + t0..xi * ms + t0 + tw]);
                let (top, bottom) = out.split_at_mut(2 * tw);
                let (y00, y01) = top.split_at_mut(tw);
                let (y10, y11) = bottom.split_at_mut(tw);
                for tx in 0..tw {
                    // A^T along each row i: s_i = m_i0 + m_i1 + m_i2, d_i = m_i1 - m_i2 - m_i3;
                    let s = |i: usize| mm[4 * i][tx] + mm[4 * i + 1][tx] + mm[4 * i + 2][tx];
                    let d = |i: usize| mm[4 * i + 1][tx] - mm[4 * i + 2][tx] - mm[4 * i + 3][tx];
                    let (s0, s1, s2, s3) = (s(0), s(1), s(2), s(3));
                    let (d0, d1, d2, d3) = (d(0), d(1), d(2), d(3));
                    // then down the columns.
                    y00[tx] = s0 + s1 + s2 + b;
                    y01[tx] = d0 + d1 + d2 + b;
                    y10[tx] = s1 - s2 - s3 + b;
                    y11[tx] = d1 - d2 - d3 + b;
                }
                let oy = 2 * ty;
                for (r, (ev, od)) in [(&*y00, &*y01), (&*y10, &*y11)].into_iter().enumerate() {
                    if oy + r >= h {
                        break;
                    }
                    let row = &mut plane[(oy + r) * w..(oy + r + 1) * w];
                    // An odd width's last tile keeps only its even column.
                    interleave(ev, od, row);
                }
            }
        }
    }
}

/// [`output_transform`] for `M` in [`input_transform_wide_rows`]'s tile order (a spare tile
/// ending each tile row, skipped here): `A^T M A` as unit-stride loops over the whole plane,
/// first along the rows (`s_i = m_i0 + m_i1 + m_i2`, `d_i = m_i1 - m_i2 - m_i3`), then down the
/// columns, and only the final copy into the image row by row.
#[inline(always)]
fn output_transform_wide_rows<T: Float>(
    g: &ConvGeom,
    m: &[T],
    imgs: usize,
    bias: &dyn Fn(usize, usize) -> T,
    y: &mut [T],
) {
    let (h, w, cout) = (g.h, g.w, g.cout);
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let te = tw + 1;
    let (tpi, nt) = (th * te, imgs * th * te);
    let ms = cout * nt;
    // s_0..s_3, d_0..d_3, then the tiles' outputs (even, odd) column of the top and bottom row.
    let mut sd = vec![T::zero(); 8 * tpi];
    let mut out = vec![T::zero(); 4 * tpi];
    for img in 0..imgs {
        for co in 0..cout {
            let b = bias(img, co);
            let t0 = co * nt + img * tpi;
            let mx = |xi: usize| &m[xi * ms + t0..xi * ms + t0 + tpi];
            let (sv, dv) = sd.split_at_mut(4 * tpi);
            for (i, (si, di)) in sv
                .chunks_exact_mut(tpi)
                .zip(dv.chunks_exact_mut(tpi))
                .enumerate()
            {
                let (m0, m1, m2, m3) = (mx(4 * i), mx(4 * i + 1), mx(4 * i + 2), mx(4 * i + 3));
                for k in 0..tpi {
                    si[k] = m0[k] + m1[k] + m2[k];
                    di[k] = m1[k] - m2[k] - m3[k];
                }
            }
            let (sv, dv) = sd.split_at(4 * tpi);
            let (s0, s1, s2, s3) = (
                &sv[..tpi],
                &sv[tpi..2 * tpi],
                &sv[2 * tpi..3 * tpi],
                &sv[3 * tpi..],
            );
            let (d0, d1, d2, d3) = (
                &dv[..tpi],
                &dv[tpi..2 * tpi],
                &dv[2 * tpi..3 * tpi],
                &dv[3 * tpi..],
            );
            let (top, bottom) = out.split_at_mut(2 * tpi);
            let (y00, y01) = top.split_at_mut(tpi);
            let (y10, y11) = bottom.split_at_mut(tpi);
            for k in 0..tpi {
                y00[k] = s0[k] + s1[k] + s2[k] + b;
                y01[k] = d0[k] + d1[k] + d2[k] + b;
                y10[k] = s1[k] - s2[k] - s3[k] + b;
                y11[k] = d1[k] - d2[k] - d3[k] + b;
            }
            let plane = &mut y[(img * cout + co) * h * w..(img * cout + co + 1) * h * w];
            for (oy, row) in plane.chunks_exact_mut(w).enumerate() {
                let (r, ty) = (oy % 2, oy / 2);
                let ev = &out[2 * r * tpi + ty * te..2 * r * tpi + ty * te + tw];
                let od = &out[(2 * r + 1) * tpi + ty * te..(2 * r + 1) * tpi + ty * te + tw];
                // An odd width's last tile keeps only its even column.
                interleave(ev, od, row);
            }
        }
    }
}

/// `y = conv2d(x, w) + bias` for a 3x3, stride-1, padding-1 geometry ([`applies`]).
/// `bias`: `[Cout]`, or `[B, Cout]` when its length is `B * Cout`.
pub(crate) fn conv3x3<T: Float>(g: &ConvGeom, x: &[T], w: &[T], bias: Option<&[T]>) -> Vec<T> {
    debug_assert!(g.kh == 3 && g.kw == 3 && g.stride == 1 && g.pad == 1);
    let (cin, cout, hw) = (g.cin, g.cout, g.h * g.w);
    let mut y = vec![T::zero(); g.b * cout * hw];
    if y.is_empty() {
        return y;
    }
    let u = weight_transform(g, w);
    // Long tile rows get a spare tile each ([`input_transform_wide_rows`]): unit-stride
    // transforms over whole planes, for 1 / tw more GEMM columns.
    let wide_rows = g.w.div_ceil(2) >= WIDE_ROWS_MIN_TILES;
    let tpi = g.h.div_ceil(2) * (g.w.div_ceil(2) + usize::from(wide_rows));
    let threads = rayon::current_num_threads();
    // Images per group: about TARGET_TILES tiles, but at least one group per thread.
    let ipg = (TARGET_TILES / tpi).clamp(1, g.b.div_ceil(threads).max(1));
    let groups = g.b.div_ceil(ipg);
    let par = groups < threads;
    let per_item = bias.is_some_and(|b| b.len() != cout);
    y.par_chunks_mut(ipg * cout * hw)
        .zip(x.par_chunks(ipg * cin * hw))
        .enumerate()
        .for_each(|(gi, (yg, xg))| {
            let imgs = yg.len() / (cout * hw);
            let nt = imgs * tpi;
            T::with_scratch(16 * (cin + cout) * nt, |buf| {
                let (v, m) = buf.split_at_mut(16 * cin * nt);
                if wide_rows {
                    input_transform_wide_rows_wide(g, xg, imgs, v);
                } else {
                    input_transform_wide(g, xg, imgs, v);
                }
                for xi in 0..16 {
                    matmul(
                        cout,
                        nt,
                        cin,
                        &u[xi * cout * cin..(xi + 1) * cout * cin],
                        Trans::N,
                        &v[xi * cin * nt..(xi + 1) * cin * nt],
                        Trans::N,
                        &mut m[xi * cout * nt..(xi + 1) * cout * nt],
                        false,
                        par,
                    );
                }
                let bias_of = |img: usize, co: usize| match bias {
                    None => T::zero(),
                    Some(b) if per_item => b[(gi * ipg + img) * cout + co],
                    Some(b) => b[co],
                };
                if wide_rows {
                    output_transform_wide_rows_wide(g, m, imgs, &bias_of, yg);
                } else {
                    output_transform_wide(g, m, imgs, &bias_of, yg);
                }
            });
        });
    y
}

/// `V = B^T d B` like [`input_transform`], but in the weight gradient's tile order: each image
/// row of tiles is `te = ceil(W / 2) + 1` long, the last tile (`tx = te - 1`) a spare whose
/// `V` is finite but meaningless (its `W` from [`grad_output_transform`] is zero). Tile
/// `t = img * th * te + ty * te + tx` of `v[xi][ci][t]`.
///
/// The spare column makes every pass one unit-stride loop over the whole plane: the padded plane
/// is split by row and column parity into four `[th + 1, te]` arrays `X_rc` (`X_rc[k][x]` =
/// padded `(2k + r, 2x + c)`), so tile element `d_kl` is `X_{k % 2, l % 2}` at
/// `s + (k / 2) te + l / 2` for `s = ty te + tx`.
#[inline(always)]
fn input_transform_wide_rows<T: Float>(g: &ConvGeom, x: &[T], imgs: usize, v: &mut [T]) {
    let (h, w, cin) = (g.h, g.w, g.cin);
    let (th, te) = (h.div_ceil(2), w.div_ceil(2) + 1);
    let (tpi, nt) = (th * te, imgs * th * te);
    let cs = cin * nt;
    // X_00, X_01, X_10, X_11, each (th + 1) te plus one element read by the spare tile.
    let xl = (th + 1) * te + 1;
    // Positions outside the image are never written, so they stay zero for every plane.
    let mut xs = vec![T::zero(); 4 * xl];
    // B^T d for both column parities: C_i^c[s], s < tpi + 1 (the spare tile reads s + 1).
    let cl = tpi + 1;
    let mut cb = vec![T::zero(); 8 * cl];
    for img in 0..imgs {
        for ci in 0..cin {
            let plane = &x[(img * cin + ci) * h * w..(img * cin + ci + 1) * h * w];
            for (iy, src) in plane.chunks_exact(w).enumerate() {
                // Padded row iy + 1, column ix + 1: odd ix -> even column (ix + 1) / 2,
                // even ix -> odd column ix / 2.
                let (r, k) = ((iy + 1) % 2, iy.div_ceil(2));
                let (e, o) = xs[2 * r * xl..(2 * r + 2) * xl].split_at_mut(xl);
                let (e, o) = (&mut e[k * te..(k + 1) * te], &mut o[k * te..(k + 1) * te]);
                deinterleave(src, o, &mut e[1..]);
            }
            // Rows d0..d3 of the tiles: X_0c[s], X_1c[s], X_0c[s + te], X_1c[s + te].
            for c in 0..2 {
                let x0 = &xs[c * xl..(c + 1) * xl];
                let x1 = &xs[(2 + c) * xl..(3 + c) * xl];
                let (d0, d2) = (&x0[..cl], &x0[te..te + cl]);
                let (d1, d3) = (&x1[..cl], &x1[te..te + cl]);
                bt_down([d0, d1, d2, d3], &mut cb[4 * c * cl..4 * (c + 1) * cl]);
            }
            // (B^T d) B along each row i: columns E[s], O[s], E[s + 1], O[s + 1].
            let t0 = ci * nt + img * tpi;
            for i in 0..4 {
                let (ev, od) = (&cb[i * cl..(i + 1) * cl], &cb[(4 + i) * cl..(5 + i) * cl]);
                let cols = [&ev[..tpi], &ev[1..], &od[..tpi], &od[1..]];
                bt_along_row(cols, v, |j| (4 * i + j) * cs + t0);
            }
        }
    }
}

/// `W = A dY A^T` for every 2x2 output-gradient tile of `imgs` images `dy [imgs, Cout, H, W]`:
/// `wt[xi][co][t]` in [`input_transform_wide_rows`]'s tile order, zero for the spare tile of
/// each row and for the positions of a tile clipped at an odd edge. Also writes each plane's sum
/// (the bias gradient) into `sums [imgs * Cout]`.
///
/// With `a, b` the top row of the tile and `c, d` the bottom one, `A dY` has rows
/// `(a, b), (a + c, b + d), (a - c, b - d), (-c, -d)`, and `[p, q] A^T = [p, p + q, p - q, -q]`.
/// The plane is first split by row and column parity into `a, b, c, d [th, te]`, so both passes
/// are unit-stride loops over the whole plane.
#[inline(always)]
fn grad_output_transform<T: Float>(
    g: &ConvGeom,
    dy: &[T],
    imgs: usize,
    wt: &mut [T],
    sums: &mut [f64],
) {
    let (h, w, cout) = (g.h, g.w, g.cout);
    let (th, te) = (h.div_ceil(2), w.div_ceil(2) + 1);
    let (tpi, nt) = (th * te, imgs * th * te);
    let ws = cout * nt;
    // [a | b | c | d]; the spare column and the clipped positions are never written.
    let mut abcd = vec![T::zero(); 4 * tpi];
    for img in 0..imgs {
        for co in 0..cout {
            let plane = &dy[(img * cout + co) * h * w..(img * cout + co + 1) * h * w];
            sums[img * cout + co] = lane_sum(plane, |v| v);
            for (oy, src) in plane.chunks_exact(w).enumerate() {
                let (r, ty) = (oy % 2, oy / 2);
                let (e, o) = abcd[2 * r * tpi..(2 * r + 2) * tpi].split_at_mut(tpi);
                let (e, o) = (&mut e[ty * te..ty * te + te], &mut o[ty * te..ty * te + te]);
                deinterleave(src, e, o);
            }
            let (ab, cd) = abcd.split_at(2 * tpi);
            let (a, b) = ab.split_at(tpi);
            let (c, d) = cd.split_at(tpi);
            let t0 = co * nt + img * tpi;
            let at = |xi: usize| xi * ws + t0;
            // Row i of A dY is (p_i, q_i); [p, q] A^T = [p, p + q, p - q, -q].
            for (n, d0) in wt[at(0)..at(0) + tpi].iter_mut().enumerate() {
                *d0 = a[n];
            }
            for (n, d1) in wt[at(1)..at(1) + tpi].iter_mut().enumerate() {
                *d1 = a[n] + b[n];
            }
            for (n, d2) in wt[at(2)..at(2) + tpi].iter_mut().enumerate() {
                *d2 = a[n] - b[n];
            }
            for (n, d3) in wt[at(3)..at(3) + tpi].iter_mut().enumerate() {
                *d3 = -b[n];
            }
            for (i, sign) in [(1, T::one()), (2, -T::one())] {
                // p = a + sign c, q = b + sign d.
                let base = 4 * i;
                for (n, o) in wt[at(base)..at(base) + tpi].iter_mut().enumerate() {
                    *o = a[n] + sign * c[n];
                }
                for (n, o) in wt[at(base + 1)..at(base + 1) + tpi].iter_mut().enumerate() {
                    *o = (a[n] + sign * c[n]) + (b[n] + sign * d[n]);
                }
                for (n, o) in wt[at(base + 2)..at(base + 2) + tpi].iter_mut().enumerate() {
                    *o = (a[n] + sign * c[n]) - (b[n] + sign * d[n]);
                }
                for (n, o) in wt[at(base + 3)..at(base + 3) + tpi].iter_mut().enumerate() {
                    *o = -(b[n] + sign * d[n]);
                }
            }
            for (n, d0) in wt[at(12)..at(12) + tpi].iter_mut().enumerate() {
                *d0 = -c[n];
            }
            for (n, d1) in wt[at(13)..at(13) + tpi].iter_mut().enumerate() {
                *d1 = -c[n] - d[n];
            }
            for (n, d2) in wt[at(14)..at(14) + tpi].iter_mut().enumerate() {
                *d2 = d[n] - c[n];
            }
            for (n, d3) in wt[at(15)..at(15) + tpi].iter_mut().enumerate() {
                *d3 = d[n];
            }
        }
    }
}

/// `dg = G^T M G` for every (co, ci) of the 16 accumulated `M_xi [Cout, Cin]`, into
/// `dw [Cout, Cin, 3, 3]`. `G^T` maps `m0..m3` to `m0 + (m1 + m2) / 2, (m1 - m2) / 2,
/// (m1 + m2) / 2 + m3`.
fn weight_grad_transform<T: Float>(cc: usize, m: &[T], dw: &mut [T]) {
    let half = T::from_acc(0.5);
    let gt = |m0: T, m1: T, m2: T, m3: T| {
        let (s, d) = ((m1 + m2) * half, (m1 - m2) * half);
        [m0 + s, d, s + m3]
    };
    for (idx, k) in dw.chunks_exact_mut(9).enumerate().take(cc) {
        let at = |xi: usize| m[xi * cc + idx];
        // Along each row i (the kernel's column direction), then down the columns.
        let r: [[T; 3]; 4] =
            std::array::from_fn(|i| gt(at(4 * i), at(4 * i + 1), at(4 * i + 2), at(4 * i + 3)));
        for c in 0..3 {
            let col = gt(r[0][c], r[1][c], r[2][c], r[3][c]);
            for (row, v) in col.into_iter().enumerate() {
                k[3 * row + c] = v;
            }
        }
    }
}

/// The weight and bias gradients of [`conv3x3`]: `[dW (Cout * Cin * 9), dbias]` flattened, the
/// layout of `conv::conv_bwd_weight_bias`. `dbias` is `[Cout]`, or `[B, Cout]` (not reduced over
/// the batch) when `per_item`.
///
/// Per group of images, `V` ([`input_transform`]) and `W` ([`grad_output_transform`]) feed 16
/// GEMMs `M_xi += W_xi V_xi^T [Cout, Cin]` that reduce over the group's tiles; each rayon fold
/// keeps its own `M`, the partial sums are added, and [`weight_grad_transform`] maps the total
/// back to 3x3 kernels once.
pub(crate) fn conv3x3_bwd_weight_bias<T: Float>(
    g: &ConvGeom,
    x: &[T],
    dy: &[T],
    per_item: bool,
) -> Vec<T> {
    debug_assert!(g.kh == 3 && g.kw == 3 && g.stride == 1 && g.pad == 1);
    let (cin, cout, hw) = (g.cin, g.cout, g.h * g.w);
    let cc = cout * cin;
    let nb = if per_item { g.b * cout } else { cout };
    let mut out = vec![T::zero(); 9 * cc + nb];
    if g.b == 0 || hw == 0 || cc == 0 {
        return out;
    }
    // Tiles per image, with the spare one per tile row.
    let tpi = g.h.div_ceil(2) * (g.w.div_ceil(2) + 1);
    let threads = rayon::current_num_threads();
    let ipg = (TARGET_TILES / tpi).clamp(1, g.b.div_ceil(threads).max(1));
    let par = g.b.div_ceil(ipg) < threads;
    let mut sums = vec![0f64; g.b * cout];
    let m = sums
        .par_chunks_mut(ipg * cout)
        .zip(x.par_chunks(ipg * cin * hw))
        .zip(dy.par_chunks(ipg * cout * hw))
        .fold(
            || vec![T::zero(); 16 * cc],
            |mut acc, ((s, xg), dyg)| {
                let imgs = dyg.len() / (cout * hw);
                let nt = imgs * tpi;
                T::with_scratch(16 * (cin + cout) * nt, |buf| {
                    let (v, wt) = buf.split_at_mut(16 * cin * nt);
                    input_transform_wide_rows_wide(g, xg, imgs, v);
                    grad_output_transform_wide(g, dyg, imgs, wt, s);
                    for xi in 0..16 {
                        matmul(
                            cout,
                            cin,
                            nt,
                            &wt[xi * cout * nt..(xi + 1) * cout * nt],
                            Trans::N,
                            &v[xi * cin * nt..(xi + 1) * cin * nt],
                            Trans::T,
                            &mut acc[xi * cc..(xi + 1) * cc],
                            true,
                            par,
                        );
                    }
                });
                acc
            },
        )
        .reduce_with(|mut a, b| {
            for (s, v) in a.iter_mut().zip(b) {
                *s += v;
            }
            a
        })
        .unwrap_or_else(|| vec![T::zero(); 16 * cc]);
    let (dw, db) = out.split_at_mut(9 * cc);
    weight_grad_transform(cc, &m, dw);
    if per_item {
        for (o, s) in db.iter_mut().zip(&sums) {
            *o = T::from_acc(*s);
        }
    } else {
        let mut tot = vec![0f64; cout];
        for row in sums.chunks_exact(cout) {
            for (t, s) in tot.iter_mut().zip(row) {
                *t += s;
            }
        }
        for (o, t) in db.iter_mut().zip(tot) {
            *o = T::from_acc(t);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::{conv_bwd_weight_bias_im2col, conv_fwd_im2col};

    /// Deterministic values in [-1, 1) (a 64-bit LCG's top bits).
    fn values(seed: u64, n: usize) -> Vec<f64> {
        let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    fn max_rel(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
        a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// Winograd against im2col on one shape: f64 (relative to the output's largest value) and
    /// f32 against the f64 im2col result. `bias`: 0 none, 1 `[Cout]`, 2 `[B, Cout]`.
    fn compare(dims: [usize; 5], bias: usize) -> (f64, f64, f64) {
        let [b, cin, cout, h, w] = dims;
        let g = ConvGeom::new(&[b, cin, h, w], &[cout, cin, 3, 3], 1, 1).unwrap();
        let x = values(1 + dims.iter().sum::<usize>() as u64, b * cin * h * w);
        let k = values(2, cout * cin * 9);
        let nb = [0, cout, b * cout][bias];
        let bv = values(3, nb);
        let bias64 = (bias > 0).then_some(&bv[..]);
        let reference = conv_fwd_im2col(&g, &x, &k, bias64);
        let wino = conv3x3(&g, &x, &k, bias64);
        let e64 = max_rel(&wino, &reference);
        let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let (x32, k32, b32) = (f(&x), f(&k), f(&bv));
        let bias32 = (bias > 0).then_some(&b32[..]);
        let up = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
        let e32 = max_rel(&up(conv3x3(&g, &x32, &k32, bias32)), &reference);
        let e32_im2col = max_rel(&up(conv_fwd_im2col(&g, &x32, &k32, bias32)), &reference);
        (e64, e32, e32_im2col)
    }

    /// Every edge case of the tiling (odd sizes, 1x1 and 1xN images, batch 1, images grouped
    /// per GEMM with a partial last group, per-item bias across groups): f64 to rounding, so a
    /// wrong entry in B, G or A fails here.
    #[test]
    fn winograd_matches_im2col_on_edge_shapes() {
        let shapes = [
            [1, 1, 1, 1, 1],
            [1, 3, 4, 1, 1],
            [2, 2, 3, 1, 5],
            [2, 2, 3, 6, 1],
            [1, 2, 5, 2, 2],
            [2, 3, 4, 7, 5],
            [3, 4, 2, 5, 6],
            [5, 2, 3, 3, 3],
            [7, 5, 6, 4, 4],
            [2, 16, 8, 9, 11],
            [1, 8, 16, 14, 14],
            // Tile rows of 8 and more: the forward's spare-tile layout, odd and even widths.
            [3, 8, 9, 5, 17],
            [2, 9, 8, 6, 16],
        ];
        for dims in shapes {
            for bias in 0..3 {
                let (e64, e32, e32_im2col) = compare(dims, bias);
                assert!(
                    e64 < 1e-12,
                    "{dims:?} bias {bias}: f64 relative error {e64:e}"
                );
                assert!(
                    e32 < 1e-5,
                    "{dims:?} bias {bias}: f32 relative error {e32:e} (im2col {e32_im2col:e})"
                );
            }
        }
    }

    /// The f32 error at the U-Net's sizes, against the f64 im2col result, next to im2col's own
    /// f32 error (printed with `--nocapture`).
    #[test]
    fn winograd_f32_error_at_unet_sizes() {
        for dims in [
            [2, 32, 32, 28, 28],
            [2, 64, 64, 14, 14],
            [2, 128, 128, 7, 7],
            [2, 3, 32, 32, 32],
        ] {
            let (e64, e32, e32_im2col) = compare(dims, 1);
            println!(
                "winograd {dims:?}: max |err| / max |y|: f64 {e64:.2e}, f32 {e32:.2e} \
                 (im2col f32 {e32_im2col:.2e})"
            );
            assert!(e64 < 1e-12, "{dims:?}: f64 {e64:e}");
            assert!(e32 < 2e-5, "{dims:?}: f32 {e32:e}");
        }
    }

    /// The Winograd weight and bias gradients against im2col's on one shape: f64 (relative to
    /// the largest reference value, weight and bias apart) and f32 (weight only) against the f64
    /// im2col result, next to im2col's own f32 error.
    fn compare_weight_grad(dims: [usize; 5], per_item: bool) -> (f64, f64, f64, f64) {
        let [b, cin, cout, h, w] = dims;
        let g = ConvGeom::new(&[b, cin, h, w], &[cout, cin, 3, 3], 1, 1).unwrap();
        let x = values(5 + dims.iter().sum::<usize>() as u64, b * cin * h * w);
        let dy = values(6 + per_item as u64, b * cout * h * w);
        let reference = conv_bwd_weight_bias_im2col(&g, &x, &dy, per_item);
        let wino = conv3x3_bwd_weight_bias(&g, &x, &dy, per_item);
        let nw = cout * cin * 9;
        assert_eq!(wino.len(), reference.len());
        assert_eq!(wino.len(), nw + if per_item { b * cout } else { cout });
        let e64_w = max_rel(&wino[..nw], &reference[..nw]);
        let e64_b = max_rel(&wino[nw..], &reference[nw..]);
        let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let (x32, dy32) = (f(&x), f(&dy));
        let up = |v: Vec<f32>| v[..nw].iter().map(|&a| f64::from(a)).collect::<Vec<f64>>();
        let e32 = max_rel(
            &up(conv3x3_bwd_weight_bias(&g, &x32, &dy32, per_item)),
            &reference[..nw],
        );
        let e32_im2col = max_rel(
            &up(conv_bwd_weight_bias_im2col(&g, &x32, &dy32, per_item)),
            &reference[..nw],
        );
        (e64_w, e64_b, e32, e32_im2col)
    }

    /// The weight gradient's tiling edge cases (odd and even H, W; batch 1 and 3, so one image
    /// per group and several; both bias layouts) equal im2col's to f64 rounding.
    #[test]
    fn winograd_weight_grad_matches_im2col() {
        let shapes = [
            [1, 8, 9, 7, 6],
            [3, 8, 9, 7, 6],
            [1, 9, 8, 8, 8],
            [3, 9, 8, 8, 8],
            [3, 8, 8, 5, 3],
            [2, 8, 10, 1, 1],
            [2, 8, 8, 1, 4],
            [5, 16, 8, 9, 11],
        ];
        for dims in shapes {
            for per_item in [false, true] {
                let (e64_w, e64_b, e32, e32_im2col) = compare_weight_grad(dims, per_item);
                assert!(
                    e64_w < 1e-12 && e64_b < 1e-12,
                    "{dims:?} per-item {per_item}: f64 relative error {e64_w:e} (bias {e64_b:e})"
                );
                assert!(
                    e32 < 1e-5,
                    "{dims:?} per-item {per_item}: f32 relative error {e32:e} \
                     (im2col {e32_im2col:e})"
                );
            }
        }
    }

    /// The weight gradient's f32 error at the U-Net's sizes (batch 8), against the f64 im2col
    /// result, next to im2col's own f32 error (printed with `--nocapture`).
    #[test]
    fn winograd_weight_grad_f32_error_at_unet_sizes() {
        for dims in [
            [8, 32, 32, 28, 28],
            [8, 64, 64, 14, 14],
            [8, 128, 128, 7, 7],
        ] {
            let (e64, _, e32, e32_im2col) = compare_weight_grad(dims, false);
            println!(
                "winograd dW {dims:?}: max |err| / max |dW|: f64 {e64:.2e}, f32 {e32:.2e} \
                 (im2col f32 {e32_im2col:.2e})"
            );
            assert!(e64 < 1e-12, "{dims:?}: f64 {e64:e}");
            assert!(e32 < 2e-5, "{dims:?}: f32 {e32:e}");
        }
    }
}
