//! The cost of NDM's training step against DDPM's with the same denoiser, on the presets (`ddpm`:
//! eps-mse; `ndm`: the continuous NELBO with a learned F), and NDM's step with `dF/dt` by forward
//! mode (the default) and by central differences (`transform.time_derivative`), and with
//! `L_prior` and `L_rec` on a quarter and an eighth of the batch (the objective's
//! `boundary_fraction`), timed in one process on the same data: every model's step in turn, round
//! after round, the medians over the rounds in ms, and the medians of the ratios within a round.
//! Two DDPM baselines: the `ddpm` preset (eps-mse: one pass of the denoiser), and the NDM paper's
//! own, NDM's objective with F fixed to the identity (the paper trains "DDPM" as "an NDM with
//! fixed identity transformation ... with the same objective", and its "about 2.3x longer" is
//! against that model): `L_rec` runs the denoiser at `z_0` there too.
//!
//!     cargo bench --bench ndm_step            # NDM_BENCH_ITERS timed rounds (default 20)
//!
//! `NDM_BENCH_DATA` picks the data: `points` (default: the checkerboard, the presets' MLPs, batch
//! 512), `images` (random 1x28x28 images, MNIST's shape, with the presets' image variants: the
//! denoiser a U-Net, NDM's F a U-Net of 16 base channels, batch 64), or `both`. The NDM paper's
//! "about 2.3x DDPM's training time" was measured on images.
//!
//! `NDM_BENCH_DEVICE=cuda:0` times the same on a GPU (a CUDA build, see `ndm_api::bench`).
//!
//! Then the gradient noise of the three NDM estimators (every example, a quarter, an eighth), at
//! one set of weights trained `NDM_BENCH_GRAD_WARMUP` steps (default 300) with the exact loss:
//! `tr Cov(g) / |E g|^2` over `NDM_BENCH_GRAD_DRAWS` batches (default 128 on the CPU at batches of
//! 256 or more, else 0: skipped).
//!
//! With `NDM_PROFILE=1` each case's fused kernels are timed too (`ndm_api::kernels::profile`):
//! per step, the calls and milliseconds of every kernel; the rest of the step is candle's own ops,
//! the graph walk and the optimizer.

use ndm_api::bench;
use ndm_api::candle_core::Device;
use ndm_api::kernels::profile;
use ndm_api::stats::median;
use ndm_api::train::{TrainState, Trainer};
use ndm_api::{Dataset, ModelSpec, Pipeline, PluginSpec, Preset, RegistryFile, TrainConfig};

/// A preset's model and training config on images: its `images` variant applied.
fn on_images(p: &Preset) -> anyhow::Result<(ModelSpec, TrainConfig)> {
    let p = p.on_images()?;
    Ok((p.model, p.train))
}

fn main() -> anyhow::Result<()> {
    ndm_api::kernels::prepare_process();
    let iters = bench::iters(20);
    let reg = ndm_plugins_all::builtin_registry();
    let file = RegistryFile::parse(include_str!("../registry.toml"), "registry.toml")?;
    let dev = bench::device()?;
    let which = std::env::var("NDM_BENCH_DATA").unwrap_or_else(|_| "points".into());
    let (points, images) = match which.trim() {
        "points" => (true, false),
        "images" => (false, true),
        "both" => (true, true),
        other => anyhow::bail!("NDM_BENCH_DATA={other}: expected points, images or both"),
    };
    let ddpm = file.preset("ddpm")?;
    let ndm = file.preset("ndm")?;
    if points {
        let ctx = ndm_api::registry::BuildCtx::without_weights(&dev, &reg);
        let data = reg.build_dataset(&PluginSpec::new("checkerboard"), &ctx)?;
        let cases = [
            (ddpm.model.clone(), ddpm.train.clone()),
            (ndm.model.clone(), ndm.train.clone()),
        ];
        run("checkerboard", data.as_ref(), cases, iters, &reg, &dev)?;
    }
    if images {
        let cases = [on_images(ddpm)?, on_images(ndm)?];
        let data = bench::RandomImages([1, 28, 28]);
        run("random 1x28x28 images", &data, cases, iters, &reg, &dev)?;
    }
    Ok(())
}

/// Times the two DDPM baselines and NDM's variants (forward mode, central differences, boundary
/// terms on a share of the batch) on `data`, interleaved, and prints their ratios.
fn run(
    what: &str,
    data: &dyn Dataset,
    [(ddpm, ddpm_train), (ndm, ndm_train)]: [(ModelSpec, TrainConfig); 2],
    iters: usize,
    reg: &ndm_api::registry::PluginRegistry,
    dev: &Device,
) -> anyhow::Result<()> {
    let mut ndm_fd = ndm.clone();
    ndm_fd
        .transform
        .set("time_derivative", "\"central-difference\"");
    let shared = |f: &str| {
        let mut spec = ndm.clone();
        spec.objective.set("boundary_fraction", f);
        spec
    };
    let (ndm_quarter, ndm_eighth) = (shared("0.25"), shared("0.125"));
    // The NDM paper's DDPM baseline: NDM's objective with F fixed to the identity, so L_rec runs
    // the denoiser at z_0 as NDM's does.
    let identity = |spec: &ModelSpec| {
        let mut spec = spec.clone();
        spec.transform = PluginSpec::new("identity");
        spec
    };
    let cases = [
        ("ddpm (eps-mse)", ddpm, ddpm_train.clone()),
        (
            "ddpm, NDM's NELBO (identity F: the NDM paper's DDPM)",
            identity(&ndm),
            ndm_train.clone(),
        ),
        (
            "ddpm, NDM's NELBO, L_prior and L_rec on 1/8 of the batch",
            identity(&ndm_eighth),
            ndm_train.clone(),
        ),
        ("ndm, dF/dt forward mode", ndm.clone(), ndm_train.clone()),
        ("ndm, dF/dt central difference", ndm_fd, ndm_train.clone()),
        (
            "ndm, L_prior and L_rec on 1/4 of the batch",
            ndm_quarter.clone(),
            ndm_train.clone(),
        ),
        (
            "ndm, L_prior and L_rec on 1/8 of the batch",
            ndm_eighth.clone(),
            ndm_train.clone(),
        ),
    ];
    println!(
        "\n{what}, batch {} (the presets' own), {}, 3 warm-up steps each, then {iters} rounds of \
         one timed step of every model in turn, 1 process",
        ddpm_train.batch_size,
        bench::describe(dev)
    );
    let pipes = cases
        .iter()
        .map(|(_, spec, _)| Pipeline::build(spec, &data.data_shape(), reg, dev, 0))
        .collect::<Result<Vec<_>, _>>()?;
    let trainers = pipes
        .iter()
        .zip(&cases)
        .map(|(pipe, (_, _, cfg))| Trainer::new(pipe, cfg))
        .collect::<Result<Vec<_>, _>>()?;
    let mut states = pipes
        .iter()
        .map(|pipe| TrainState::new(pipe, 0))
        .collect::<Result<Vec<_>, _>>()?;
    for _ in 0..3 {
        for (trainer, state) in trainers.iter().zip(states.iter_mut()) {
            trainer.step(state, data)?;
        }
    }
    // Interleaved, so that a burst of load on the shared machine slows every model's step
    // alike: the ratios below are medians of the ratios within a round.
    let mut times = vec![Vec::with_capacity(iters); cases.len()];
    for _ in 0..iters {
        for ((trainer, state), t) in trainers.iter().zip(states.iter_mut()).zip(times.iter_mut()) {
            t.push(bench::timed(dev, || trainer.step(state, data))?.1 * 1e3);
        }
    }
    println!("| model | params | median ms / step |");
    println!("|---|---|---|");
    for ((label, _, _), (pipe, t)) in cases.iter().zip(pipes.iter().zip(&times)) {
        let m = median(&mut t.clone());
        println!("| {label} | {} | {m:.2} |", pipe.num_params());
    }
    let ratio = |a: usize, b: usize| {
        let mut r: Vec<f64> = times[a].iter().zip(&times[b]).map(|(x, y)| x / y).collect();
        median(&mut r)
    };
    let (eps_mse, elbo, elbo_eighth, fwd, fd, quarter, eighth) = (0, 1, 2, 3, 4, 5, 6);
    println!(
        "\nNDM / DDPM (eps-mse) step: {:.2}x with forward mode, {:.2}x with central differences \
         (forward mode {:.2}x faster); with L_prior and L_rec on 1/4 of the batch {:.2}x, on 1/8 {:.2}x",
        ratio(fwd, eps_mse),
        ratio(fd, eps_mse),
        ratio(fd, fwd),
        ratio(quarter, eps_mse),
        ratio(eighth, eps_mse),
    );
    println!(
        "NDM / DDPM step with the same objective (the NDM paper's comparison: F the identity): \
         {:.2}x with forward mode; with L_prior and L_rec on 1/8 of the batch in both {:.2}x",
        ratio(fwd, elbo),
        ratio(eighth, elbo_eighth),
    );
    if std::env::var_os("NDM_PROFILE").is_some() && dev.is_cpu() {
        for (((label, _, _), trainer), state) in cases.iter().zip(&trainers).zip(states.iter_mut())
        {
            let table =
                profile::per_step_table(label, iters, || trainer.step(state, data).map(|_| ()))?;
            println!("\n{table}");
        }
    }
    let draws: usize = match std::env::var("NDM_BENCH_GRAD_DRAWS") {
        Ok(v) => v.trim().parse()?,
        Err(_) if dev.is_cpu() && ndm_train.batch_size >= 256 => 128,
        Err(_) => 0,
    };
    if draws >= 2 {
        let warmup: usize = match std::env::var("NDM_BENCH_GRAD_WARMUP") {
            Ok(v) => v.trim().parse()?,
            Err(_) => 300,
        };
        // One set of weights for the three estimators: NDM trained `warmup` steps with the
        // exact loss, copied into the other two pipelines.
        let trained = Pipeline::build(&ndm, &data.data_shape(), reg, dev, 0)?;
        let trainer = Trainer::new(&trained, &ndm_train)?;
        let mut state = TrainState::new(&trained, 0)?;
        for _ in 0..warmup {
            trainer.step(&mut state, data)?;
        }
        println!(
            "\ngradient noise of NDM's loss after {warmup} training steps, {draws} batches of {}: \
             trace of the gradient's covariance / squared norm of its mean",
            ndm_train.batch_size
        );
        println!("| L_prior and L_rec on | noise |");
        println!("|---|---|");
        for (label, spec) in [
            ("every example", ndm),
            ("1/4 of the batch", ndm_quarter),
            ("1/8 of the batch", ndm_eighth),
        ] {
            let pipe = Pipeline::build(&spec, &data.data_shape(), reg, dev, 0)?;
            for ((name, to), (from_name, from)) in pipe.vars().iter().zip(trained.vars().iter()) {
                anyhow::ensure!(name == from_name, "weights differ: {name} vs {from_name}");
                to.set(from.as_tensor())?;
            }
            let noise = gradient_noise(&pipe, data, ndm_train.batch_size, draws)?;
            println!("| {label} | {noise:.4} |");
        }
    }
    Ok(())
}

/// `tr Cov(g) / |E g|^2` of the loss's gradient `g` over `draws` fresh batches (and noise) at the
/// pipeline's weights: the same batches for every pipeline.
fn gradient_noise(
    pipe: &Pipeline,
    data: &dyn Dataset,
    batch: usize,
    draws: usize,
) -> anyhow::Result<f64> {
    let vars = pipe.vars();
    let mut grads: Vec<Vec<f64>> = Vec::with_capacity(draws);
    for d in 0..draws {
        let mut rng = ndm_api::Rng::new(1000 + d as u64);
        let x = data.sample(batch, ndm_api::Split::Train, &mut rng, &pipe.device)?;
        let out = pipe.objective.loss(pipe, &x, &mut rng)?;
        let store = out.loss.backward()?;
        let mut flat = Vec::new();
        for (_, v) in &vars {
            if let Some(g) = store.get(v.as_tensor()) {
                flat.extend(
                    g.flatten_all()?
                        .to_dtype(ndm_api::candle_core::DType::F64)?
                        .to_vec1::<f64>()?,
                );
            }
        }
        grads.push(flat);
    }
    let n = grads[0].len();
    let mean: Vec<f64> = (0..n)
        .map(|i| grads.iter().map(|g| g[i]).sum::<f64>() / draws as f64)
        .collect();
    let spread: f64 = grads
        .iter()
        .map(|g| {
            g.iter()
                .zip(&mean)
                .map(|(a, m)| (a - m).powi(2))
                .sum::<f64>()
        })
        .sum::<f64>()
        / (draws - 1) as f64;
    Ok(spread / mean.iter().map(|m| m * m).sum::<f64>())
}
