//! An opt-in, process-wide timer for the kernels (used by the benchmark's per-op table).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<BTreeMap<&'static str, (Duration, u64)>> = Mutex::new(BTreeMap::new());

/// Turns kernel timing on or off (off by default; when off a timer costs one atomic load).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Clears the accumulated timings.
pub fn reset() {
    if let Ok(mut t) = TABLE.lock() {
        t.clear();
    }
}

/// The accumulated (total time, calls) per kernel name, sorted by name.
pub fn snapshot() -> Vec<(&'static str, Duration, u64)> {
    TABLE
        .lock()
        .map(|t| t.iter().map(|(k, (d, n))| (*k, *d, *n)).collect())
        .unwrap_or_default()
}

/// Times the closure under `name` when profiling is enabled.
pub(crate) fn timed<R>(name: &'static str, f: impl FnOnce() -> R) -> R {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    let start = Instant::now();
    let r = f();
    let dt = start.elapsed();
    if let Ok(mut t) = TABLE.lock() {
        let e = t.entry(name).or_insert((Duration::ZERO, 0));
        e.0 += dt;
        e.1 += 1;
    }
    r
}

/// Runs `step` `steps` times with the timers on and returns a markdown table of the kernels'
/// calls and milliseconds per step, a row with all kernels, and one with the rest of the step (its
/// wall time minus the kernels': candle's own ops, the graph walk, the optimizer).
pub fn per_step_table<E>(
    title: &str,
    steps: usize,
    mut step: impl FnMut() -> Result<(), E>,
) -> Result<String, E> {
    reset();
    set_enabled(true);
    let start = Instant::now();
    let run = (0..steps).try_for_each(|_| step());
    let wall = start.elapsed().as_secs_f64() * 1e3 / steps.max(1) as f64;
    set_enabled(false);
    run?;
    let n = steps.max(1) as f64;
    let mut out = format!("| {title}: fused kernel | calls | ms |\n|---|---|---|\n");
    let mut total = 0.0;
    for (name, d, calls) in snapshot() {
        let ms = d.as_secs_f64() * 1e3 / n;
        total += ms;
        out += &format!("| {name} | {} | {ms:.3} |\n", calls as f64 / n);
    }
    out += &format!("| all kernels | | {total:.3} |\n");
    out += &format!(
        "| the rest (candle ops, graph, optimizer) | | {:.3} |\n",
        wall - total
    );
    Ok(out)
}
