//! The cost of NDM's training step against DDPM's with the same denoiser, on the checkerboard
//! presets (`ddpm`: eps-mse; `ndm`: the continuous NELBO with a learned F), and NDM's step with
//! `dF/dt` by forward mode (the default) and by central differences (`transform.time_derivative`),
//! timed in one process on the same data: medians over the timed steps, in ms, and their ratios.
//!
//!     cargo bench --bench ndm_step            # NDM_BENCH_ITERS timed steps each (default 20)
//!
//! `NDM_BENCH_DEVICE=cuda:0` times the same on a GPU (a CUDA build, see `ndm_api::bench`).
//!
//! With `NDM_PROFILE=1` each case's fused kernels are timed too (`ndm_api::kernels::profile`):
//! per step, the calls and milliseconds of every kernel; the rest of the step is candle's own ops,
//! the graph walk and the optimizer.

use ndm_api::bench;
use ndm_api::kernels::profile;
use ndm_api::train::{TrainState, Trainer};
use ndm_api::{Pipeline, PluginSpec, RegistryFile};

fn main() -> anyhow::Result<()> {
    ndm_api::kernels::retain_freed_memory();
    ndm_api::kernels::keep_cores_for_rayon();
    let iters = bench::iters(20);
    let reg = ndm_plugins_all::builtin_registry();
    let file = RegistryFile::parse(include_str!("../registry.toml"), "registry.toml")?;
    let dev = bench::device()?;
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
        "checkerboard, batch {} (the presets' own), {}, {iters} timed steps after 3 warm-up steps, 1 process",
        ddpm.train.batch_size,
        bench::describe(&dev)
    );
    println!("| model | params | median ms / step |");
    println!("|---|---|---|");
    let mut medians = Vec::new();
    let mut profiles = Vec::new();
    let show_profile = std::env::var_os("NDM_PROFILE").is_some() && dev.is_cpu();
    for (label, spec, cfg) in cases {
        let pipe = Pipeline::build(&spec, &[2], &reg, &dev, 0)?;
        let trainer = Trainer::new(&pipe, &cfg)?;
        let mut state = TrainState::new(&pipe, 0)?;
        let m = bench::median_ms(&dev, iters, || {
            trainer.step(&mut state, data.as_ref()).map(|_| ())
        })?;
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
