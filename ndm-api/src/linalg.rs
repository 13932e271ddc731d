//! Small dense linear algebra in f64 on the host (candle has none): enough for the Gaussian data
//! set's density, the exact Gaussian denoiser, the Fréchet distance of `crate::metrics` and the LU
//! factors and inverse of a Glow flow's 1x1 convolution.

/// Eigen-decomposition of a symmetric `n x n` matrix (row major) by cyclic Jacobi rotations.
/// Returns `(eigenvalues, eigenvectors)` with eigenvector `k` in column `k` (row major `n x n`).
pub fn sym_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        if off < 1e-30 {
            break;
        }
        for p in 0..n {
            for q in (p + 1)..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let akp = a[k * n + p];
                    let akq = a[k * n + q];
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let apk = a[p * n + k];
                    let aqk = a[q * n + k];
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let vkp = v[k * n + p];
                    let vkq = v[k * n + q];
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// `A B` for row-major `d x d` matrices.
pub fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut c = vec![0.0; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            for j in 0..d {
                c[i * d + j] += aik * b[k * d + j];
            }
        }
    }
    c
}

/// The symmetric square root `Q sqrt(max(Lambda, 0)) Q^T` of a symmetric PSD matrix.
pub fn sym_sqrt(a: &[f64], d: usize) -> Vec<f64> {
    let (vals, vecs) = sym_eigen(a, d);
    let mut out = vec![0.0; d * d];
    for (k, &l) in vals.iter().enumerate() {
        let s = l.max(0.0).sqrt();
        for i in 0..d {
            for j in 0..d {
                out[i * d + j] += vecs[i * d + k] * s * vecs[j * d + k];
            }
        }
    }
    out
}

/// LU decomposition with partial pivoting of a row-major `n x n` matrix: `(perm, l, u)` with
/// `a[perm[i]][j] = (L U)[i][j]`, `L` unit lower triangular and `U` upper triangular (row major).
/// `None` for a singular matrix.
pub fn lu(a: &[f64], n: usize) -> Option<(Vec<usize>, Vec<f64>, Vec<f64>)> {
    let mut u = a.to_vec();
    let mut l = vec![0.0; n * n];
    let mut perm: Vec<usize> = (0..n).collect();
    for k in 0..n {
        let p = (k..n).max_by(|&i, &j| u[i * n + k].abs().total_cmp(&u[j * n + k].abs()))?;
        if u[p * n + k].abs() < 1e-300 {
            return None;
        }
        if p != k {
            for j in 0..n {
                u.swap(k * n + j, p * n + j);
                l.swap(k * n + j, p * n + j);
            }
            perm.swap(k, p);
        }
        for i in (k + 1)..n {
            let f = u[i * n + k] / u[k * n + k];
            l[i * n + k] = f;
            for j in k..n {
                u[i * n + j] -= f * u[k * n + j];
            }
        }
    }
    for i in 0..n {
        l[i * n + i] = 1.0;
    }
    Some((perm, l, u))
}

/// The inverse of a row-major `n x n` matrix (Gauss-Jordan with partial pivoting); `None` when
/// it is singular.
pub fn inverse(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut m = a.to_vec();
    let mut inv = vec![0.0; n * n];
    for i in 0..n {
        inv[i * n + i] = 1.0;
    }
    for k in 0..n {
        let p = (k..n).max_by(|&i, &j| m[i * n + k].abs().total_cmp(&m[j * n + k].abs()))?;
        if m[p * n + k].abs() < 1e-300 {
            return None;
        }
        for j in 0..n {
            m.swap(k * n + j, p * n + j);
            inv.swap(k * n + j, p * n + j);
        }
        let d = m[k * n + k];
        for j in 0..n {
            m[k * n + j] /= d;
            inv[k * n + j] /= d;
        }
        for i in (0..n).filter(|&i| i != k) {
            let f = m[i * n + k];
            if f != 0.0 {
                for j in 0..n {
                    m[i * n + j] -= f * m[k * n + j];
                    inv[i * n + j] -= f * inv[k * n + j];
                }
            }
        }
    }
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconstructs_a_symmetric_matrix() {
        let a = [4.0, 1.0, 0.5, 1.0, 3.0, -0.2, 0.5, -0.2, 2.0];
        let (l, v) = sym_eigen(&a, 3);
        for i in 0..3 {
            for j in 0..3 {
                let r: f64 = (0..3).map(|k| v[i * 3 + k] * l[k] * v[j * 3 + k]).sum();
                assert!((r - a[i * 3 + j]).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn symmetric_square_root_squares_back() {
        let a = [4.0, 1.0, 0.5, 1.0, 3.0, -0.2, 0.5, -0.2, 2.0];
        let r = sym_sqrt(&a, 3);
        let back = matmul(&r, &r, 3);
        for (x, y) in back.iter().zip(&a) {
            assert!((x - y).abs() < 1e-12, "{x} vs {y}");
        }
    }

    #[test]
    fn lu_and_inverse_reconstruct() {
        let a = [0.0, 2.0, 1.0, 1.0, -1.0, 3.0, 4.0, 0.5, -2.0];
        let (perm, l, u) = lu(&a, 3).unwrap();
        let prod = matmul(&l, &u, 3);
        for i in 0..3 {
            assert_eq!(l[i * 3 + i], 1.0);
            for j in 0..3 {
                if j > i {
                    assert_eq!(l[i * 3 + j], 0.0);
                }
                if j < i {
                    assert_eq!(u[i * 3 + j], 0.0);
                }
                assert!((prod[i * 3 + j] - a[perm[i] * 3 + j]).abs() < 1e-12);
            }
        }
        let inv = inverse(&a, 3).unwrap();
        let id = matmul(&a, &inv, 3);
        for i in 0..3 {
            for j in 0..3 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((id[i * 3 + j] - want).abs() < 1e-12);
            }
        }
        assert!(inverse(&[1.0, 2.0, 2.0, 4.0], 2).is_none());
        assert!(lu(&[1.0, 2.0, 2.0, 4.0], 2).is_none());
    }
}

/// A multivariate Gaussian `N(mean, cov)` in f64 with its eigen-decomposition: shared by the
/// `gaussian` data set (sampling, exact density) and the `gaussian-oracle` backbone (exact denoiser).
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianModel {
    pub mean: Vec<f64>,
    /// Row-major `d x d`.
    pub cov: Vec<f64>,
    /// Eigenvalues of `cov` (all positive).
    pub eigvals: Vec<f64>,
    /// Eigenvectors in columns, row-major `d x d`.
    pub eigvecs: Vec<f64>,
}

impl GaussianModel {
    /// Checks shapes, symmetry and positive definiteness.
    pub fn new(mean: Vec<f64>, cov: Vec<Vec<f64>>) -> std::result::Result<Self, String> {
        let d = mean.len();
        if d == 0 || cov.len() != d || cov.iter().any(|r| r.len() != d) {
            return Err(format!("mean has {d} entries, so cov must be {d} x {d}"));
        }
        let flat: Vec<f64> = cov.iter().flatten().copied().collect();
        for i in 0..d {
            for j in 0..d {
                if (flat[i * d + j] - flat[j * d + i]).abs() > 1e-12 {
                    return Err("cov must be symmetric".into());
                }
            }
        }
        let (eigvals, eigvecs) = sym_eigen(&flat, d);
        if eigvals.iter().any(|&l| l.is_nan() || l <= 0.0) {
            return Err("cov must be positive definite".into());
        }
        Ok(GaussianModel {
            mean,
            cov: flat,
            eigvals,
            eigvecs,
        })
    }

    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// `mean + Q sqrt(Lambda) eps` for one standard normal vector.
    pub fn transform_noise(&self, eps: &[f64]) -> Vec<f64> {
        let d = self.dim();
        (0..d)
            .map(|i| {
                self.mean[i]
                    + (0..d)
                        .map(|k| self.eigvecs[i * d + k] * self.eigvals[k].sqrt() * eps[k])
                        .sum::<f64>()
            })
            .collect()
    }

    /// `log N(x; mean, cov)`.
    pub fn log_density(&self, x: &[f64]) -> f64 {
        let d = self.dim();
        let maha: f64 = (0..d)
            .map(|k| {
                let proj: f64 = (0..d)
                    .map(|i| self.eigvecs[i * d + k] * (x[i] - self.mean[i]))
                    .sum();
                proj * proj / self.eigvals[k]
            })
            .sum();
        let logdet: f64 = self.eigvals.iter().map(|l| l.ln()).sum();
        -0.5 * (maha + logdet + d as f64 * (2.0 * std::f64::consts::PI).ln())
    }

    /// Differential entropy in nats.
    pub fn entropy(&self) -> f64 {
        let logdet: f64 = self.eigvals.iter().map(|l| l.ln()).sum();
        0.5 * (logdet + self.dim() as f64 * (1.0 + (2.0 * std::f64::consts::PI).ln()))
    }
}
