//! The cost of NDM's training step against DDPM's with the same denoiser, on the checkerboard
//! presets (`ddpm`: eps-mse; `ndm`: the continuous NELBO with a learned F), and NDM's step with
//! `dF/dt` by forward mode (the default) and by central differences (`transform.time_derivative`),
//! timed in one process on the same data: medians over the timed steps, in ms, and their ratios.
//!
//!     cargo bench --bench ndm_step            # NDM_BENCH_ITERS timed steps each (default 20)
//!
//! With `NDM_PROFILE=1` each case's fused kernels are timed too (`ndm_api::kernels::profile`):
//! per step, the calls and milliseconds of every kernel; the rest of the step is candle's own ops,
//! the graph walk and the optimizer.

use ndm_api::candle_core::Device;
use ndm_api::kernels::profile;
use ndm_api::stats::median;
use ndm_api::train::{TrainState, Trainer};
use ndm_api::{Pipeline, PluginSpec, RegistryFile};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    ndm_api::kernels::retain_freed_memory();
    let iters: usize = std::env::var("NDM_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let reg = ndm_plugins_all::builtin_registry();
    let file = RegistryFile::parse(include_str!("../registry.toml"), "registry.toml")?;
    let dev = Device::Cpu;
    let ctx = ndm_api::registry::BuildCtx::without_weights(&dev, &reg);
    let data = reg.build_dataset(&PluginSpec::new("checkerboard"), &ctx)?;
    let ddpm = file.preset("ddpm")?.clone();
    let ndm = file.preset("ndm")?.clone();
    let mut ndm_fd = ndm.model.clone();
    ndm_fd
        .transform
        .set("time_derivative", "\"central-difference\"");
    let cases = [
        ("ddpm (eps-mse)", ddpm.model.clone(), ddpm.train.clone()),
        (
            "ndm, dF/dt forward mode",
            ndm.model.clone(),
            ndm.train.clone(),
        ),
        ("ndm, dF/dt central difference", ndm_fd, ndm.train.clone()),
    ];
    println!(
        "checkerboard, batch {} (the presets' own), {iters} timed steps after 3 warm-up steps, 1 process",
        ddpm.train.batch_size
    );
    println!("| model | params | median ms / step |");
    println!("|---|---|---|");
    let mut medians = Vec::new();
    let mut profiles = Vec::new();
    let show_profile = std::env::var_os("NDM_PROFILE").is_some();
    for (label, spec, cfg) in cases {
        let pipe = Pipeline::build(&spec, &[2], &reg, &dev, 0)?;
        let trainer = Trainer::new(&pipe, &cfg)?;
        let mut state = TrainState::new(&pipe, 0)?;
        let mut times = Vec::with_capacity(iters);
        for i in 0..iters + 3 {
            let start = Instant::now();
            trainer.step(&mut state, data.as_ref())?;
            if i >= 3 {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        let m = median(&mut times);
        println!("| {label} | {} | {m:.2} |", pipe.num_params());
        medians.push(m);
        if show_profile {
            let title = format!("{label} (step median {m:.2} ms)");
            profiles.push(profile::per_step_table(&title, iters, || {
                trainer.step(&mut state, data.as_ref()).map(|_| ())
            })?);
        }
    }
    for table in profiles {
        println!("\n{table}");
    }
    println!(
        "\nNDM / DDPM step: {:.2}x with forward mode, {:.2}x with central differences (forward mode {:.2}x faster)",
        medians[1] / medians[0],
        medians[2] / medians[0],
        medians[2] / medians[1]
    );
    Ok(())
}
