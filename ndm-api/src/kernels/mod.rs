//! Fused CPU kernels for the networks' hot ops, as candle CustomOps with their own backward.
//!
//! The public, device-dispatching functions (`linear`, `conv2d`, `group_norm`, `group_norm_silu`, `group_norm_tangent`, `silu`, `silu_tangent`,
//! `softmax_last_dim`, `attention`, `upsample_nearest2x`) and the [`KernelBackend`] switch (fused CPU kernels
//! or candle's ops, with [`KernelBackend::attention_tangent`] as a method only) live here; [`profile`] is opt-in per-kernel timing. Kernels run on f32/f64 CPU tensors, parallel over
//! batch items and channel groups with rayon, with GEMMs through the `gemm` crate and long sums
//! accumulated in f64.

mod attention;
mod conv;
mod float;
mod gemm;
mod group_norm;
mod group_norm_tangent;
mod linear;
mod ops;
pub mod profile;
mod silu;
mod softmax;
mod upsample;
mod winograd;

pub use ops::{
    attention, conv2d, group_norm, group_norm_silu, group_norm_tangent, linear, silu, silu_tangent,
    softmax_last_dim, upsample_nearest2x, KernelBackend,
};

/// The threads the kernels (and candle's CPU ops) run on: rayon's pool, `RAYON_NUM_THREADS`.
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// Makes glibc's `malloc` keep freed memory for reuse (buffers up to 32 MiB come from the heap
/// instead of fresh `mmap`s, and the heap is not trimmed back to the system after each free).
///
/// A network's forward and backward allocate and free buffers of a few megabytes per layer; by
/// default glibc maps each one anew, and the first write to every page then faults, which cost
/// more than a third of a 10,000-point sampling step of the `ddpm` preset's MLP (110 ms against
/// 72 ms with the memory kept; `benches/mlp_step.rs`). The runner and the benchmarks call this
/// first; a program embedding ndm may too. Returns whether the settings took (false off glibc).
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        // SAFETY: `mallopt` only sets allocator parameters (both values are in glibc's documented
        // ranges: the mmap threshold's maximum is 32 MiB on 64-bit targets); it touches no memory
        // of ours and is safe to call at any time.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Leaves the cores to rayon's pool, on which the kernels and every GEMM run: candle 0.11 runs its
/// own large elementwise ops (64 Ki elements and up: a residual add of a 512 x 128 batch) on a
/// second pool of `RAYON_NUM_THREADS - 1` workers, each of which spins for 25,000 rounds after
/// every op before it sleeps, so the next GEMM shares its cores with a spinning thread. This sets
/// `CANDLE_NUM_THREADS=1` (no workers: candle runs those ops on the calling thread) unless the
/// user set it. candle reads it once, so call this first, before any tensor op, as the runner
/// and the benchmarks do; only speed depends on it. Returns whether it set the variable.
pub fn keep_cores_for_rayon() -> bool {
    if std::env::var_os("CANDLE_NUM_THREADS").is_some() {
        return false;
    }
    std::env::set_var("CANDLE_NUM_THREADS", "1");
    true
}

/// What a program running ndm on the CPU calls first, before any tensor op: both of
/// [`retain_freed_memory`] and [`keep_cores_for_rayon`]. The runner and the examples do.
pub fn prepare_process() {
    retain_freed_memory();
    keep_cores_for_rayon();
}

thread_local! {
    static BACKWARD_EXPECTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the hint that a backward pass will follow its forward on this thread (the
/// trainer's loss): kernels then keep what their backward needs (the dense layer its
/// `sigmoid(x)`) instead of computing it again. Outside, forwards keep nothing, which suits
/// sampling; a backward that comes anyway computes what it needs. Only speed depends on it.
pub fn expect_backward<R>(f: impl FnOnce() -> R) -> R {
    let before = BACKWARD_EXPECTED.with(|b| b.replace(true));
    let r = f();
    BACKWARD_EXPECTED.with(|b| b.set(before));
    r
}

/// Whether this thread is inside [`expect_backward`].
pub fn backward_expected() -> bool {
    BACKWARD_EXPECTED.with(|b| b.get())
}
