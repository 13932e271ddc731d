//! Sample-quality metrics between a set of samples and held-out data, in f64 on the host: the sliced
//! Wasserstein distance, the MMD (Gaussian kernel), the Fréchet distance between Gaussian fits
//! (FID when the points are classifier features), KID, and k-NN precision / recall.
//! `docs/math.md` ("Sample metrics") gives the formulas and the papers; every function takes the
//! points as a [`PointSet`] (rows of equal length).

use crate::linalg::{matmul, sym_eigen, sym_sqrt};
use crate::stats::Estimate;
use crate::Rng;
use candle_core::{DType, Tensor};

/// `n` points of dimension `dim`, row-major, all finite.
#[derive(Debug, Clone, PartialEq)]
pub struct PointSet {
    data: Vec<f64>,
    dim: usize,
}

impl PointSet {
    /// Checks that `data` holds whole rows of `dim` finite values, at least one.
    pub fn new(data: Vec<f64>, dim: usize) -> std::result::Result<Self, String> {
        if dim == 0 || data.is_empty() || !data.len().is_multiple_of(dim) {
            return Err(format!(
                "a point set needs whole rows of {dim} values, got {} values",
                data.len()
            ));
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "point {} has a non-finite coordinate ({})",
                i / dim,
                data[i]
            ));
        }
        Ok(PointSet { data, dim })
    }

    /// A `[B, ..]` tensor as `B` points of dimension `prod(..)`.
    pub fn from_tensor(t: &Tensor) -> crate::Result<Self> {
        let b = t.dim(0)?;
        let flat = t.flatten_from(1)?.to_dtype(DType::F64)?;
        let dim = flat.dim(1)?;
        let data: Vec<f64> = flat.flatten_all()?.to_vec1()?;
        debug_assert_eq!(data.len(), b * dim);
        PointSet::new(data, dim).map_err(crate::NdmError::invalid_param)
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The first `n` points (all of them when `n` is larger).
    pub fn head(&self, n: usize) -> PointSet {
        let n = n.min(self.len());
        PointSet {
            data: self.data[..n * self.dim].to_vec(),
            dim: self.dim,
        }
    }

    fn rows(&self) -> impl Iterator<Item = &[f64]> {
        self.data.chunks_exact(self.dim)
    }

    fn check_same_dim(&self, other: &PointSet) -> std::result::Result<(), String> {
        if self.dim != other.dim {
            return Err(format!(
                "point sets of dimension {} and {} cannot be compared",
                self.dim, other.dim
            ));
        }
        Ok(())
    }
}

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// The sorted 1-D projections of `p` on `dir`.
fn sorted_projection(p: &PointSet, dir: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = p
        .rows()
        .map(|r| r.iter().zip(dir).map(|(x, d)| x * d).sum())
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The empirical quantile of sorted values at level `u` in (0, 1): the order statistic whose
/// probability mass holds `u` (the inverse of the empirical CDF).
fn quantile(sorted: &[f64], u: f64) -> f64 {
    let i = ((u * sorted.len() as f64).floor() as usize).min(sorted.len() - 1);
    sorted[i]
}

/// The sliced 2-Wasserstein distance `sqrt(E_theta W_2^2(theta.a, theta.b))` over `projections`
/// random unit directions (the same directions for every call with the same `rng` state). Each
/// 1-D `W_2` compares the empirical quantile functions on a common grid of `max(|a|, |b|)` levels,
/// which is exact for sets of equal size.
pub fn sliced_wasserstein(
    a: &PointSet,
    b: &PointSet,
    projections: usize,
    rng: &mut Rng,
) -> std::result::Result<f64, String> {
    a.check_same_dim(b)?;
    if projections == 0 {
        return Err("the sliced Wasserstein distance needs at least one projection".into());
    }
    let m = a.len().max(b.len());
    let mut total = 0.0;
    for _ in 0..projections {
        let mut dir = rng.normal_vec(a.dim);
        let norm = dir.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-300);
        dir.iter_mut().for_each(|v| *v /= norm);
        let (pa, pb) = (sorted_projection(a, &dir), sorted_projection(b, &dir));
        let w2: f64 = (0..m)
            .map(|k| {
                let u = (k as f64 + 0.5) / m as f64;
                (quantile(&pa, u) - quantile(&pb, u)).powi(2)
            })
            .sum::<f64>()
            / m as f64;
        total += w2;
    }
    Ok((total / projections as f64).sqrt())
}

/// The median distance between distinct points of `p` over at most `max_pairs` pairs (taken in a
/// fixed order): the usual bandwidth of a Gaussian-kernel MMD. Computed on the reference set, it
/// stays the same for every model compared against that set.
pub fn median_distance(p: &PointSet, max_pairs: usize) -> f64 {
    let n = p.len();
    let mut d = Vec::new();
    'outer: for i in 0..n {
        for j in i + 1..n {
            if d.len() >= max_pairs {
                break 'outer;
            }
            d.push(sq_dist(p.row(i), p.row(j)).sqrt());
        }
    }
    if d.is_empty() {
        return 1.0;
    }
    d.sort_by(f64::total_cmp);
    d[d.len() / 2]
}

/// Mean of `k` over pairs of rows of `a` and `b`; with `skip_diagonal` (a = b) the pairs `i = j`
/// are left out.
fn kernel_mean(
    a: &PointSet,
    b: &PointSet,
    skip_diagonal: bool,
    k: &dyn Fn(&[f64], &[f64]) -> f64,
) -> f64 {
    let mut sum = 0.0;
    let mut count = 0usize;
    for (i, x) in a.rows().enumerate() {
        for (j, y) in b.rows().enumerate() {
            if skip_diagonal && i == j {
                continue;
            }
            sum += k(x, y);
            count += 1;
        }
    }
    sum / count.max(1) as f64
}

/// The unbiased estimate of `MMD^2` (Gretton et al., 2012) with kernel `k`: zero in expectation for
/// two samples of one distribution, so it can come out slightly negative.
fn mmd2_unbiased(
    a: &PointSet,
    b: &PointSet,
    k: &dyn Fn(&[f64], &[f64]) -> f64,
) -> std::result::Result<f64, String> {
    a.check_same_dim(b)?;
    if a.len() < 2 || b.len() < 2 {
        return Err("the MMD needs at least two points in each set".into());
    }
    Ok(kernel_mean(a, a, true, k) + kernel_mean(b, b, true, k) - 2.0 * kernel_mean(a, b, false, k))
}

/// Unbiased `MMD^2` with the Gaussian kernel `exp(-|x - y|^2 / (2 bandwidth^2))`.
pub fn mmd2_rbf(a: &PointSet, b: &PointSet, bandwidth: f64) -> std::result::Result<f64, String> {
    mmd2_rbf_multiscale(a, b, &[bandwidth])
}

/// Unbiased `MMD^2` with the mean of Gaussian kernels of several bandwidths (still a
/// characteristic kernel): one bandwidth at the median distance sees only the coarse shape of a
/// distribution, smaller ones see its fine structure (a checkerboard's edges).
pub fn mmd2_rbf_multiscale(
    a: &PointSet,
    b: &PointSet,
    bandwidths: &[f64],
) -> std::result::Result<f64, String> {
    if bandwidths.is_empty() || bandwidths.iter().any(|h| !(*h > 0.0 && h.is_finite())) {
        return Err(format!(
            "MMD bandwidths must be positive and finite, got {bandwidths:?}"
        ));
    }
    let gammas: Vec<f64> = bandwidths.iter().map(|h| 1.0 / (2.0 * h * h)).collect();
    let scale = 1.0 / gammas.len() as f64;
    mmd2_unbiased(a, b, &|x, y| {
        let d = sq_dist(x, y);
        scale * gammas.iter().map(|g| (-g * d).exp()).sum::<f64>()
    })
}

/// KID (Bińkowski et al., 2018): the unbiased `MMD^2` with the cubic polynomial kernel
/// `(x.y / d + 1)^3`, averaged over `subsets` random subsets of `subset_size` points of each set
/// (drawn without replacement within a subset); the estimate's `n` is the number of subsets.
pub fn kid(
    a: &PointSet,
    b: &PointSet,
    subset_size: usize,
    subsets: usize,
    rng: &mut Rng,
) -> std::result::Result<Estimate, String> {
    a.check_same_dim(b)?;
    let m = subset_size.min(a.len()).min(b.len());
    if m < 2 || subsets == 0 {
        return Err("KID needs subsets of at least two points from each set".into());
    }
    let d = a.dim as f64;
    let k = move |x: &[f64], y: &[f64]| {
        (x.iter().zip(y).map(|(u, v)| u * v).sum::<f64>() / d + 1.0).powi(3)
    };
    let pick = |p: &PointSet, rng: &mut Rng| {
        let mut idx: Vec<usize> = (0..p.len()).collect();
        for i in 0..m {
            let j = i + rng.below(p.len() - i);
            idx.swap(i, j);
        }
        let data = idx[..m].iter().flat_map(|&i| p.row(i).to_vec()).collect();
        PointSet { data, dim: p.dim }
    };
    let values: Vec<f64> = (0..subsets)
        .map(|_| {
            let (sa, sb) = (pick(a, rng), pick(b, rng));
            mmd2_unbiased(&sa, &sb, &k)
        })
        .collect::<std::result::Result<_, _>>()?;
    Ok(Estimate::of(&values).expect("at least one subset"))
}

/// The mean and covariance (unbiased, `n - 1`) of a point set: the Gaussian fit behind FID.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianFit {
    pub mean: Vec<f64>,
    /// Row-major `d x d`.
    pub cov: Vec<f64>,
    pub n: usize,
}

impl GaussianFit {
    pub fn of(p: &PointSet) -> std::result::Result<Self, String> {
        let (n, d) = (p.len(), p.dim);
        if n < 2 {
            return Err("a Gaussian fit needs at least two points".into());
        }
        let mut mean = vec![0.0; d];
        for r in p.rows() {
            mean.iter_mut().zip(r).for_each(|(m, v)| *m += v);
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut cov = vec![0.0; d * d];
        for r in p.rows() {
            for i in 0..d {
                let di = r[i] - mean[i];
                for j in i..d {
                    cov[i * d + j] += di * (r[j] - mean[j]);
                }
            }
        }
        for i in 0..d {
            for j in i..d {
                let v = cov[i * d + j] / (n - 1) as f64;
                cov[i * d + j] = v;
                cov[j * d + i] = v;
            }
        }
        Ok(GaussianFit { mean, cov, n })
    }
}

/// The squared Fréchet (2-Wasserstein) distance between `N(m1, C1)` and `N(m2, C2)`:
/// `|m1 - m2|^2 + tr(C1) + tr(C2) - 2 tr((C1^1/2 C2 C1^1/2)^1/2)`. On classifier features this is
/// FID (Heusel et al., 2017); the matrix square roots go through symmetric eigen-decompositions,
/// so the middle matrix stays symmetric and its square root real.
pub fn frechet_distance(a: &GaussianFit, b: &GaussianFit) -> std::result::Result<f64, String> {
    let d = a.mean.len();
    if b.mean.len() != d {
        return Err(format!(
            "Gaussian fits of dimension {d} and {} cannot be compared",
            b.mean.len()
        ));
    }
    let mean_term: f64 = a
        .mean
        .iter()
        .zip(&b.mean)
        .map(|(x, y)| (x - y).powi(2))
        .sum();
    let trace = |m: &[f64]| (0..d).map(|i| m[i * d + i]).sum::<f64>();
    let s1 = sym_sqrt(&a.cov, d);
    let mut mid = matmul(&matmul(&s1, &b.cov, d), &s1, d);
    // Symmetrise against round-off before the eigen-decomposition.
    for i in 0..d {
        for j in i + 1..d {
            let v = 0.5 * (mid[i * d + j] + mid[j * d + i]);
            mid[i * d + j] = v;
            mid[j * d + i] = v;
        }
    }
    let (vals, _) = sym_eigen(&mid, d);
    let cross: f64 = vals.iter().map(|l| l.max(0.0).sqrt()).sum();
    Ok((mean_term + trace(&a.cov) + trace(&b.cov) - 2.0 * cross).max(0.0))
}

/// The distance from each point of `p` to its `k`-th nearest other point of `p`.
fn kth_neighbour_radii(p: &PointSet, k: usize) -> Vec<f64> {
    (0..p.len())
        .map(|i| {
            let mut d: Vec<f64> = (0..p.len())
                .filter(|&j| j != i)
                .map(|j| sq_dist(p.row(i), p.row(j)))
                .collect();
            let k = k.min(d.len()).max(1);
            d.select_nth_unstable_by(k - 1, f64::total_cmp);
            d[k - 1].sqrt()
        })
        .collect()
}

/// The fraction of `query` points inside the union of balls around the `support` points, each of
/// radius its `k`-th nearest-neighbour distance within `support`.
fn coverage(support: &PointSet, query: &PointSet, k: usize) -> f64 {
    let radii = kth_neighbour_radii(support, k);
    let inside = query
        .rows()
        .filter(|q| {
            support
                .rows()
                .zip(&radii)
                .any(|(s, r)| sq_dist(q, s) <= r * r)
        })
        .count();
    inside as f64 / query.len() as f64
}

/// Improved precision and recall (Kynkäänniemi et al., 2019) with `k` nearest neighbours:
/// precision, the fraction of samples inside the data's k-NN manifold (fidelity); recall, the
/// fraction of data inside the samples' manifold (coverage). Both are 1 for a set against itself.
pub fn precision_recall(
    data: &PointSet,
    samples: &PointSet,
    k: usize,
) -> std::result::Result<(f64, f64), String> {
    data.check_same_dim(samples)?;
    if k == 0 || data.len() <= k || samples.len() <= k {
        return Err(format!(
            "precision / recall with k = {k} needs more than {k} points in each set"
        ));
    }
    Ok((coverage(data, samples, k), coverage(samples, data, k)))
}

/// At most this many points of each set enter the quadratic-cost metrics (MMD, precision /
/// recall) of [`distribution_metrics`]; the sliced Wasserstein distance uses every point.
pub const PAIRWISE_POINTS: usize = 2000;

/// The bandwidths of [`distribution_metrics`]'s MMD, as fractions of the reference's median
/// pairwise distance.
pub const MMD_SCALES: [f64; 5] = [1.0 / 16.0, 1.0 / 8.0, 1.0 / 4.0, 1.0 / 2.0, 1.0];

/// The sample-quality metrics of flat (non-image) samples against held-out data, by name:
/// `sliced_w2` (100 projections, every point), `mmd2_rbf` (the mean of Gaussian kernels with
/// bandwidths [`MMD_SCALES`] times the median distance of the reference), `precision` and `recall` (k = 3), the last three on the first [`PAIRWISE_POINTS`]
/// points of each set. Each name carries its sample size in `metrics_n` (points per set for the
/// quadratic metrics).
pub fn distribution_metrics(
    samples: &PointSet,
    reference: &PointSet,
    rng: &mut Rng,
) -> std::result::Result<Vec<(String, f64)>, String> {
    let sw = sliced_wasserstein(samples, reference, 100, rng)?;
    let (s, r) = (
        samples.head(PAIRWISE_POINTS),
        reference.head(PAIRWISE_POINTS),
    );
    let median = median_distance(&r, 200_000);
    let bandwidths: Vec<f64> = MMD_SCALES.iter().map(|f| f * median).collect();
    let mmd = mmd2_rbf_multiscale(&s, &r, &bandwidths)?;
    let (precision, recall) = precision_recall(&r, &s, 3)?;
    Ok(vec![
        ("sliced_w2".into(), sw),
        ("mmd2_rbf".into(), mmd),
        ("precision".into(), precision),
        ("recall".into(), recall),
        ("metrics_n".into(), s.len().min(r.len()) as f64),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` draws of `N(mean, diag(var))`.
    fn gaussian(n: usize, mean: &[f64], var: &[f64], rng: &mut Rng) -> PointSet {
        let d = mean.len();
        let data = (0..n)
            .flat_map(|_| {
                let e = rng.normal_vec(d);
                (0..d)
                    .map(|i| mean[i] + var[i].sqrt() * e[i])
                    .collect::<Vec<_>>()
            })
            .collect();
        PointSet::new(data, d).unwrap()
    }

    #[test]
    fn point_sets_refuse_ragged_and_non_finite_rows() {
        assert!(PointSet::new(vec![1.0, 2.0, 3.0], 2).is_err());
        assert!(PointSet::new(vec![], 2).is_err());
        let e = PointSet::new(vec![0.0, 1.0, f64::NAN, 2.0], 2).unwrap_err();
        assert!(e.contains("point 1"), "{e}");
        let a = PointSet::new(vec![0.0; 4], 2).unwrap();
        let b = PointSet::new(vec![0.0; 3], 3).unwrap();
        assert!(mmd2_rbf(&a, &b, 1.0)
            .unwrap_err()
            .contains("dimension 2 and 3"));
    }

    #[test]
    fn a_set_against_itself_scores_the_floor() {
        let mut rng = Rng::new(1);
        let x = gaussian(300, &[0.5, -1.0, 2.0], &[1.0, 0.25, 4.0], &mut rng);
        assert_eq!(sliced_wasserstein(&x, &x, 50, &mut rng).unwrap(), 0.0);
        let f = GaussianFit::of(&x).unwrap();
        assert!(frechet_distance(&f, &f).unwrap().abs() < 1e-9);
        assert_eq!(precision_recall(&x, &x, 3).unwrap(), (1.0, 1.0));
        let named = distribution_metrics(&x, &x, &mut rng).unwrap();
        let get = |k: &str| named.iter().find(|(n, _)| n == k).unwrap().1;
        assert_eq!(
            (get("sliced_w2"), get("precision"), get("recall")),
            (0.0, 1.0, 1.0)
        );
        assert_eq!(get("metrics_n"), 300.0);
        assert!(get("mmd2_rbf") <= 0.0);
        // The unbiased MMD^2 of a set with itself is 2 (mean off-diagonal - mean over all pairs)
        // = -2 (1 - mean off-diagonal) / n: its known floor, just below zero.
        let h = median_distance(&x, 10_000);
        let n = x.len() as f64;
        let off = kernel_mean(&x, &x, true, &|a, b| (-sq_dist(a, b) / (2.0 * h * h)).exp());
        let floor = -2.0 * (1.0 - off) / n;
        assert!((mmd2_rbf(&x, &x, h).unwrap() - floor).abs() < 1e-12);
    }

    #[test]
    fn sliced_wasserstein_between_gaussians_matches_the_closed_form() {
        // theta uniform on the circle: E (theta.delta)^2 = |delta|^2 / 2; with covariances I and
        // 4 I every projection's standard deviations differ by 1, adding 1.
        let mut rng = Rng::new(2);
        let a = gaussian(20_000, &[0.0, 0.0], &[1.0, 1.0], &mut rng);
        let b = gaussian(20_000, &[1.0, 0.0], &[4.0, 4.0], &mut rng);
        let sw = sliced_wasserstein(&a, &b, 400, &mut rng).unwrap();
        let exact = (0.5f64 + 1.0).sqrt();
        assert!((sw - exact).abs() < 0.03 * exact, "{sw} vs {exact}");
        // Unequal sizes use the common quantile grid.
        let c = gaussian(5_000, &[1.0, 0.0], &[1.0, 1.0], &mut rng);
        let sw = sliced_wasserstein(&a, &c, 400, &mut rng).unwrap();
        let exact = 0.5f64.sqrt();
        assert!((sw - exact).abs() < 0.05 * exact, "{sw} vs {exact}");
    }

    #[test]
    fn frechet_distance_matches_the_closed_form() {
        // Exact fits: diagonal covariances give |m1 - m2|^2 + sum (sqrt a_i - sqrt b_i)^2, and a
        // rotation of both covariances does not change it.
        let (a_var, b_var) = ([1.0, 4.0, 0.25], [9.0, 1.0, 0.25]);
        let diag = |v: &[f64; 3]| {
            let mut c = vec![0.0; 9];
            (0..3).for_each(|i| c[i * 3 + i] = v[i]);
            c
        };
        let exact = 1.0 + 4.0 + (1.0f64 - 3.0).powi(2) + (2.0f64 - 1.0).powi(2);
        let (c, s) = (0.6, 0.8);
        let rot = [c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0];
        let rot_t = [c, s, 0.0, -s, c, 0.0, 0.0, 0.0, 1.0];
        let rotate = |m: &[f64]| matmul(&matmul(&rot, m, 3), &rot_t, 3);
        let fit = |mean: Vec<f64>, cov: Vec<f64>| GaussianFit { mean, cov, n: 0 };
        let fa = fit(vec![0.0, 0.0, 0.0], rotate(&diag(&a_var)));
        let fb = fit(vec![1.0, 0.0, 2.0], rotate(&diag(&b_var)));
        let fd = frechet_distance(&fa, &fb).unwrap();
        assert!((fd - exact).abs() < 1e-9, "{fd} vs {exact}");
        // Fitted on samples of those Gaussians (diagonal), within Monte Carlo error.
        let mut rng = Rng::new(3);
        let xa = gaussian(40_000, &[0.0, 0.0, 0.0], &a_var, &mut rng);
        let xb = gaussian(40_000, &[1.0, 0.0, 2.0], &b_var, &mut rng);
        let fd = frechet_distance(
            &GaussianFit::of(&xa).unwrap(),
            &GaussianFit::of(&xb).unwrap(),
        )
        .unwrap();
        assert!((fd - exact).abs() < 0.02 * exact, "{fd} vs {exact}");
    }

    #[test]
    fn mmd_and_kid_separate_distributions_and_not_samples_of_one() {
        let mut rng = Rng::new(4);
        let a = gaussian(400, &[0.0, 0.0], &[1.0, 1.0], &mut rng);
        let a2 = gaussian(400, &[0.0, 0.0], &[1.0, 1.0], &mut rng);
        let b = gaussian(400, &[0.7, 0.0], &[1.0, 1.0], &mut rng);
        let h = median_distance(&a, 20_000);
        let same = mmd2_rbf(&a, &a2, h).unwrap();
        let diff = mmd2_rbf(&a, &b, h).unwrap();
        assert!(
            same.abs() < 0.01 && diff > 0.03,
            "same {same}, different {diff}"
        );
        let k_same = kid(&a, &a2, 200, 20, &mut rng).unwrap();
        let k_diff = kid(&a, &b, 200, 20, &mut rng).unwrap();
        assert_eq!(k_same.n, 20);
        assert!(k_same.mean.abs() < 3.0 * k_same.stderr + 1e-3, "{k_same}");
        assert!(k_diff.mean > 10.0 * k_diff.stderr, "{k_diff}");
    }

    #[test]
    fn precision_and_recall_see_a_collapsed_model() {
        // Samples that cover half of the data's modes: precise (inside the data) but low recall.
        let mut rng = Rng::new(5);
        let mode = |c: f64, n: usize, rng: &mut Rng| gaussian(n, &[c, 0.0], &[0.01, 0.01], rng);
        let join = |sets: &[PointSet]| {
            PointSet::new(sets.iter().flat_map(|s| s.data.clone()).collect(), 2).unwrap()
        };
        let data = join(&[mode(-2.0, 200, &mut rng), mode(2.0, 200, &mut rng)]);
        let samples = mode(2.0, 400, &mut rng);
        let (p, r) = precision_recall(&data, &samples, 3).unwrap();
        assert!(p > 0.9, "precision {p}");
        assert!((0.35..0.65).contains(&r), "recall {r}");
    }
}
