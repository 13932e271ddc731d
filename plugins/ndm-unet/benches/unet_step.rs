//! The reference U-Net's training step, built from candle's native ops and from this crate's
//! fused kernels, timed in one process with identical seeded weights and data.
//!
//! `cargo bench -p ndm-unet --bench unet_step`
//! Environment: `NDM_BENCH_ITERS` (timed steps per build, default 7), `NDM_BENCH_ONLY`
//! (`native` or `fused`: run one build only, for peak-memory measurements),
//! `NDM_BENCH_CONFIGS` (`mnist`, `cifar` or both, default both), `NDM_BENCH_UNET` (the network's
//! config as TOML, e.g. `blocks_per_level = 2`; default the `backbone.unet` defaults),
//! `NDM_BENCH_BATCH` (the batch of both shapes; default 64 for 28x28x1 and 32 for 32x32x3),
//! `NDM_BENCH_TANGENT` (set: time the step of NDM's F instead, the forward with its time
//! tangent, `forward_and_time_tangent`, and the backward of a loss of both; compare with an unset
//! run for the tangent's cost),
//! `NDM_BENCH_DEVICE` (`cpu` when unset, or `cuda:N` in a CUDA build: `.ci/cuda-build cargo bench
//! -p ndm-unet --bench unet_step --features ndm-api/cuda`; off the CPU "fused" is the fused
//! backend's fallback to candle's ops, and each phase's timing waits for the device),
//! `NDM_DEFAULT_MALLOC` (set: glibc's default of returning freed memory, see
//! `ndm_api::kernels::retain_freed_memory`).

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use ndm_api::stats::median;
use ndm_api::vars::seeded_var_builder;
use ndm_api::Rng;
use ndm_unet::kernels::profile;
use ndm_unet::unet::{UNet, UNetConfig};
use ndm_unet::KernelBackend;

struct Case {
    label: &'static str,
    batch: usize,
    channels: usize,
    size: usize,
}

impl Case {
    /// `28x28x1 b64`.
    fn key(&self) -> String {
        format!(
            "{}x{}x{} b{}",
            self.size, self.size, self.channels, self.batch
        )
    }
}

struct Model {
    net: UNet,
    opt: AdamW,
}

/// One diffusion training batch: x_t, t and the noise to predict.
struct Batch {
    xt: Tensor,
    t: Tensor,
    noise: Tensor,
}

fn batch(case: &Case, seed: u64, dev: &Device) -> Result<Batch> {
    let mut rng = Rng::new(seed);
    let dims = (case.batch, case.channels, case.size, case.size);
    let n = case.batch * case.channels * case.size * case.size;
    let x0: Vec<f32> = (0..n).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect();
    let noise: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    let t: Vec<f32> = (0..case.batch).map(|_| rng.uniform() as f32).collect();
    let per = n / case.batch;
    let xt: Vec<f32> = (0..n)
        .map(|i| {
            // Cosine schedule: alpha_bar = cos^2(pi t / 2).
            let a = (std::f32::consts::FRAC_PI_2 * t[i / per]).cos();
            a * x0[i] + (1.0 - a * a).max(0.0).sqrt() * noise[i]
        })
        .collect();
    Ok(Batch {
        xt: Tensor::from_vec(xt, dims, dev)?,
        t: Tensor::from_vec(t, case.batch, dev)?,
        noise: Tensor::from_vec(noise, dims, dev)?,
    })
}

fn config() -> UNetConfig {
    match std::env::var("NDM_BENCH_UNET") {
        Ok(s) => ndm_api::toml::from_str(&s).expect("NDM_BENCH_UNET: a UNetConfig in TOML"),
        Err(_) => UNetConfig::default(),
    }
}

fn build(case: &Case, backend: KernelBackend, dev: &Device) -> Result<Model> {
    let vm = VarMap::new();
    let net = UNet::new(
        seeded_var_builder(&vm, 1234, DType::F32, dev),
        &config(),
        case.channels,
        case.channels,
        (case.size, case.size),
        backend,
    )?;
    let params: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
    println!("{backend:?} network: {params} parameters");
    let opt = AdamW::new(
        vm.all_vars(),
        ParamsAdamW {
            lr: 1e-3,
            ..Default::default()
        },
    )?;
    Ok(Model { net, opt })
}

/// `NDM_BENCH_TANGENT` set: each step is the forward with the time tangent (NDM's F:
/// `forward_and_time_tangent`) and a loss of both outputs, instead of the plain forward.
fn tangent_mode() -> bool {
    std::env::var_os("NDM_BENCH_TANGENT").is_some()
}

/// (forward incl. loss, backward, AdamW) seconds and the loss.
/// Each phase's end waits for the device (reading the loss does for the forward).
fn step(m: &mut Model, b: &Batch) -> Result<([f64; 3], f32)> {
    let dev = b.xt.device();
    dev.synchronize()?;
    let t0 = Instant::now();
    let loss = if tangent_mode() {
        // NDM's use of F: the network and its time derivative, both in the loss.
        let (y, dy) = m
            .net
            .forward_and_time_tangent(&b.xt, &b.t, None)?
            .ok_or_else(|| candle_core::Error::Msg("the network ignores t".into()))?;
        ((y - &b.noise)?.sqr()?.mean_all()? + dy.sqr()?.mean_all()?)?
    } else {
        let pred = m.net.forward(&b.xt, &b.t)?;
        (pred - &b.noise)?.sqr()?.mean_all()?
    };
    let lv = loss.to_scalar::<f32>()?;
    let t1 = Instant::now();
    let grads = loss.backward()?;
    dev.synchronize()?;
    let t2 = Instant::now();
    m.opt.step(&grads)?;
    dev.synchronize()?;
    let t3 = Instant::now();
    drop(grads);
    let s = |a: Instant, b: Instant| (b - a).as_secs_f64();
    Ok(([s(t0, t1), s(t1, t2), s(t2, t3)], lv))
}

/// Medians of forward, backward, AdamW and the full step, and the fastest full step (ms).
fn medians(samples: &[[f64; 3]]) -> [f64; 5] {
    let mut out = [0.0; 5];
    for (k, o) in out.iter_mut().enumerate().take(3) {
        let mut col: Vec<f64> = samples.iter().map(|s| s[k] * 1e3).collect();
        *o = median(&mut col);
    }
    let mut full: Vec<f64> = samples.iter().map(|s| (s[0] + s[1] + s[2]) * 1e3).collect();
    out[3] = median(&mut full);
    out[4] = full.iter().copied().fold(f64::INFINITY, f64::min);
    out
}

fn run_case(case: &Case, iters: usize, only: Option<&str>, dev: &Device) -> Result<()> {
    let data = batch(case, 99, dev)?;
    let want = |k: &str| only.is_none_or(|o| o == k);
    let mut native = if want("native") {
        Some(build(case, KernelBackend::Native, dev)?)
    } else {
        None
    };
    let mut fused = if want("fused") {
        Some(build(case, KernelBackend::Fused, dev)?)
    } else {
        None
    };
    println!(
        "\n### {} (batch {}, {}x{}x{})\n",
        case.label, case.batch, case.channels, case.size, case.size
    );
    // Warm-up step; also the loss check (identical weights and data, before any update).
    let ln = native
        .as_mut()
        .map(|m| step(m, &data))
        .transpose()?
        .map(|r| r.1);
    let lf = fused
        .as_mut()
        .map(|m| step(m, &data))
        .transpose()?
        .map(|r| r.1);
    if let (Some(a), Some(b)) = (ln, lf) {
        let ok = (a - b).abs() <= 1e-4 * (1.0 + a.abs());
        println!(
            "loss check: native {a:.6}, fused {b:.6}, |diff| {:.2e} -> {}",
            (a - b).abs(),
            if ok { "OK" } else { "MISMATCH" }
        );
    }
    let (mut sn, mut sf) = (Vec::new(), Vec::new());
    let (mut last_n, mut last_f) = (None, None);
    for _ in 0..iters {
        if let Some(m) = native.as_mut() {
            let (s, l) = step(m, &data)?;
            sn.push(s);
            last_n = Some(l);
        }
        if let Some(m) = fused.as_mut() {
            let (s, l) = step(m, &data)?;
            sf.push(s);
            last_f = Some(l);
        }
    }
    if let (Some(a), Some(b)) = (last_n, last_f) {
        println!(
            "loss after {} AdamW steps: native {a:.6}, fused {b:.6}, |diff| {:.2e}",
            iters + 1,
            (a - b).abs()
        );
    }
    println!(
        "\n| {} (median of {iters}, ms) | native candle | fused | speed-up |",
        case.key()
    );
    println!("|---|---:|---:|---:|");
    let (mn, mf) = (medians(&sn), medians(&sf));
    let names = [
        "forward (incl. loss)",
        "backward",
        "AdamW",
        "**full step**",
        "full step, fastest of the run",
    ];
    for (k, name) in names.iter().enumerate() {
        let ratio = if sn.is_empty() || sf.is_empty() {
            f64::NAN
        } else {
            mn[k] / mf[k]
        };
        println!("| {name} | {:.1} | {:.1} | {ratio:.1}x |", mn[k], mf[k]);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\n(loadavg after the timed steps: {})",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Some(m) = fused.as_mut().filter(|_| dev.is_cpu()) {
        profile_table(case, m, &data, iters.max(3))?;
    }
    Ok(())
}

/// Per-op table of the fused step, averaged over `iters` profiled steps.
fn profile_table(case: &Case, m: &mut Model, data: &Batch, iters: usize) -> Result<()> {
    profile::reset();
    profile::set_enabled(true);
    let mut tot = [0.0f64; 3];
    for _ in 0..iters {
        let (s, _) = step(m, data)?;
        for k in 0..3 {
            tot[k] += s[k] * 1e3 / iters as f64;
        }
    }
    profile::set_enabled(false);
    let step_ms = tot.iter().sum::<f64>();
    println!(
        "\n| {} fused step, per op (mean of {iters}) | calls/step | ms/step | % of step |",
        case.key()
    );
    println!("|---|---:|---:|---:|");
    let mut rows: Vec<(String, f64, f64)> = Vec::new();
    let (mut kf, mut kb) = (0.0, 0.0);
    for (name, d, n) in profile::snapshot() {
        let ms = d.as_secs_f64() * 1e3 / iters as f64;
        // Backward kernels name themselves "bwd" ("conv2d bwd input winograd", SiLU's
        // derivative "silu bwd, tangent fwd", here a backward); the rest are forward.
        if name.contains("bwd") {
            kb += ms;
        } else {
            kf += ms;
        }
        rows.push((name.to_string(), n as f64 / iters as f64, ms));
    }
    rows.push((
        "candle ops in forward (cat, adds, linear, time emb, MSE)".into(),
        f64::NAN,
        tot[0] - kf,
    ));
    rows.push((
        "candle backward of those + grad accumulation".into(),
        f64::NAN,
        tot[1] - kb,
    ));
    rows.push(("AdamW (candle_nn)".into(), f64::NAN, tot[2]));
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    for (name, calls, ms) in rows {
        let calls = if calls.is_nan() {
            "-".to_string()
        } else {
            format!("{calls:.0}")
        };
        println!(
            "| {name} | {calls} | {ms:.1} | {:.1}% |",
            100.0 * ms / step_ms
        );
    }
    println!("| **total step** | | {step_ms:.1} | 100% |");
    Ok(())
}

fn main() -> Result<()> {
    // As the runner does; NDM_DEFAULT_MALLOC=1 measures with glibc's defaults instead.
    if std::env::var_os("NDM_DEFAULT_MALLOC").is_none() {
        ndm_api::kernels::retain_freed_memory();
    }
    // As the runner does; CANDLE_NUM_THREADS=N set by hand gives candle's own pool N threads.
    ndm_api::kernels::keep_cores_for_rayon();
    let iters = ndm_api::bench::iters(7);
    let dev = ndm_api::bench::device().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let only = std::env::var("NDM_BENCH_ONLY").ok();
    let configs = std::env::var("NDM_BENCH_CONFIGS").unwrap_or_else(|_| "mnist,cifar".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "U-Net training step, native candle vs ndm-unet, {} (loadavg at start: {})",
        ndm_api::bench::describe(&dev),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("config: {:?}", config());
    let batch: Option<usize> = std::env::var("NDM_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok());
    let cases = [
        Case {
            label: "MNIST-shaped",
            batch: batch.unwrap_or(64),
            channels: 1,
            size: 28,
        },
        Case {
            label: "CIFAR-shaped",
            batch: batch.unwrap_or(32),
            channels: 3,
            size: 32,
        },
    ];
    for (case, key) in cases.iter().zip(["mnist", "cifar"]) {
        if configs.contains(key) {
            run_case(case, iters, only.as_deref(), &dev)?;
        }
    }
    Ok(())
}
