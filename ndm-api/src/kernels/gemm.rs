//! A safe, row-major wrapper over the `gemm` crate (the same GEMM candle uses on CPU).

use super::float::Float;

/// Whether a matrix operand is read as stored or transposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trans {
    N,
    T,
}

/// `c[m, n] (+)= op(a)[m, k] * op(b)[k, n]`, all row-major and dense.
///
/// `a` is stored `[m, k]` (or `[k, m]` if transposed), `b` `[k, n]` (or `[n, k]`).
/// Single-threaded unless `parallel`: callers parallelise over batch items themselves and ask
/// for a threaded GEMM only when there are fewer items than threads (e.g. batch 1).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    ta: Trans,
    b: &[T],
    tb: Trans,
    c: &mut [T],
    accumulate: bool,
    parallel: bool,
) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "gemm: operand too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    let (a_rs, a_cs) = match ta {
        Trans::N => (k as isize, 1),
        Trans::T => (1, m as isize),
    };
    let (b_rs, b_cs) = match tb {
        Trans::N => (n as isize, 1),
        Trans::T => (1, k as isize),
    };
    // SAFETY: the assertion above guarantees every index the strides reach lies inside the
    // slices (a: m*k, b: k*n, c: m*n elements, all dense), and `c` is uniquely borrowed.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            T::one(),
            T::one(),
            false,
            false,
            false,
            if parallel {
                gemm::Parallelism::Rayon(rayon::current_num_threads())
            } else {
                gemm::Parallelism::None
            },
        )
    }
}
