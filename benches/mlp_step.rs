//! The MLP path of the `ddpm` preset on the checkerboard (the README's main command): one
//! training step (batch 512: data, eps-MSE loss, backward, clipping, AdamW, EMA) and one
//! ancestral sampling step on 10,000 points, with where the time goes. Medians over the timed
//! repetitions, in ms, all in one process.
//!
//!     cargo bench --bench mlp_step        # NDM_BENCH_ITERS timed repetitions (default 30)
//!
//! `NDM_BENCH_DEVICE=cuda:0` times the same on a GPU (a CUDA build: `.ci/cuda-build cargo bench
//! --bench mlp_step --features ndm-api/cuda`); every timing waits for the device (`ndm_api::bench`).
//!
//! The phases are timed in separate loops on the same pipeline, so they add up to about the
//! whole step (the optimizer's share is the step minus data, forward and backward). With
//! `NDM_PROFILE=1` the fused kernels' own timers are printed too (`ndm_api::kernels::profile`);
//! with `NDM_DEFAULT_MALLOC=1` glibc returns freed memory as by default
//! (see `ndm_api::kernels::retain_freed_memory`); `CANDLE_NUM_THREADS=N` gives candle's own
//! elementwise pool N threads again (`ndm_api::kernels::keep_cores_for_rayon` sets 1).

use ndm_api::bench;
use ndm_api::candle_core::Tensor;
use ndm_api::kernels::profile;
use ndm_api::train::{TrainState, Trainer};
use ndm_api::{NetInput, Pipeline, PluginSpec, RegistryFile, Rng, Split, TimeGrid};

fn main() -> anyhow::Result<()> {
    let retained =
        std::env::var_os("NDM_DEFAULT_MALLOC").is_none() && ndm_api::kernels::retain_freed_memory();
    ndm_api::kernels::keep_cores_for_rayon();
    let iters = bench::iters(30);
    let show_profile = std::env::var_os("NDM_PROFILE").is_some();
    let reg = ndm_plugins_all::builtin_registry();
    let file = RegistryFile::parse(include_str!("../registry.toml"), "registry.toml")?;
    let dev = bench::device()?;
    let time_ms =
        |iters: usize, f: &mut dyn FnMut() -> ndm_api::Result<()>| bench::median_ms(&dev, iters, f);
    let ctx = ndm_api::registry::BuildCtx::without_weights(&dev, &reg);
    let data = reg.build_dataset(&PluginSpec::new("checkerboard"), &ctx)?;
    let preset = file.preset("ddpm")?.clone();
    let pipe = Pipeline::build(&preset.model, &[2], &reg, &dev, 0)?;
    let cfg = preset.train.clone();
    let trainer = Trainer::new(&pipe, &cfg)?;
    let mut state = TrainState::new(&pipe, 0)?;
    let batch = cfg.batch_size;
    println!(
        "ddpm preset, checkerboard: MLP {} params, batch {batch}, {}, {iters} timed repetitions, freed memory {}, CANDLE_NUM_THREADS={}",
        pipe.num_params(),
        bench::describe(&dev),
        if retained { "retained" } else { "returned (glibc's default)" },
        std::env::var("CANDLE_NUM_THREADS").unwrap_or_default()
    );

    let step = time_ms(iters, &mut || {
        trainer.step(&mut state, data.as_ref())?;
        Ok(())
    })?;
    let mut rng = Rng::new(1);
    let data_ms = time_ms(iters, &mut || {
        data.sample_labeled(batch, Split::Train, &mut rng, &dev)?;
        Ok(())
    })?;
    let x = data.sample(batch, Split::Train, &mut rng, &dev)?;
    let forward = time_ms(iters, &mut || {
        pipe.objective.loss(&pipe, &x, &mut rng)?;
        Ok(())
    })?;
    let fwd_bwd = time_ms(iters, &mut || {
        pipe.objective.loss(&pipe, &x, &mut rng)?.loss.backward()?;
        Ok(())
    })?;
    let backward = fwd_bwd - forward;
    let update = step - data_ms - fwd_bwd;
    println!("\n| training step phase | median ms | share |");
    println!("|---|---|---|");
    for (name, ms) in [
        ("data batch", data_ms),
        ("loss forward (schedule, noising, network, MSE)", forward),
        ("backward", backward),
        ("clip + AdamW + EMA (step minus the rest)", update),
        ("**whole step** (`Trainer::step`)", step),
    ] {
        println!("| {name} | {ms:.2} | {:.0}% |", 100.0 * ms / step);
    }

    let n = 10_000;
    let solver = reg.build_solver(&preset.sampler.solver, &ctx)?;
    let grid = TimeGrid::from_times(vec![0.5, 0.499])?;
    let z = Tensor::randn(0f32, 1.0, (n, 2), &dev)?;
    let t = pipe.times(0.5, n)?;
    let sb = pipe.schedule.batch_at(&t)?;
    let sample_step = time_ms(iters, &mut || {
        solver.sample(&pipe, z.clone(), &grid, &mut rng)?;
        Ok(())
    })?;
    let net = time_ms(iters, &mut || {
        pipe.network(&NetInput::at(&z, t.tensor(), &sb))?;
        Ok(())
    })?;
    println!("\n| sampling step, {n} points | median ms | share |");
    println!("|---|---|---|");
    for (name, ms) in [
        ("network forward", net),
        (
            "schedule, posterior step, noise (the rest)",
            sample_step - net,
        ),
        ("**whole step** (ancestral, one step)", sample_step),
    ] {
        println!("| {name} | {ms:.2} | {:.0}% |", 100.0 * ms / sample_step);
    }
    println!(
        "\nper point: training {:.2} us, sampling {:.2} us",
        1e3 * step / batch as f64,
        1e3 * sample_step / n as f64
    );

    // A large batch should cost no more per point than a small one.
    println!("\n| sampling step, batch | median ms | us per point |");
    println!("|---|---|---|");
    for m in [500, 2_000, 10_000, 50_000] {
        let z = Tensor::randn(0f32, 1.0, (m, 2), &dev)?;
        let reps = (iters * 10_000 / m).clamp(5, 10 * iters);
        let ms = time_ms(reps, &mut || {
            solver.sample(&pipe, z.clone(), &grid, &mut rng)?;
            Ok(())
        })?;
        println!("| {m} | {ms:.2} | {:.2} |", 1e3 * ms / m as f64);
    }

    if show_profile && dev.is_cpu() {
        let train = profile::per_step_table("training step", iters, || {
            trainer.step(&mut state, data.as_ref()).map(|_| ())
        })?;
        let sample = profile::per_step_table("sampling step", iters, || {
            solver.sample(&pipe, z.clone(), &grid, &mut rng).map(|_| ())
        })?;
        println!("\n{train}\n{sample}");
    }
    Ok(())
}
