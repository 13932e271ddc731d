//! NDM (learned F) against DDPM (identity F) on the checkerboard, in discrete time with T = 10 and
//! T = 1000: same backbone, same training budget, both trained on their full NELBO; NELBO in nats on
//! held-out points, and the cost of a training step (NDM's Table 4).
//!
//!     cargo run --release --example ndm_vs_ddpm -- [train_steps] [batch] [eval_points]

use ndm_api::candle_core::Device;
use ndm_api::eval::evaluate_nelbo;
use ndm_api::registry::BuildCtx;
use ndm_api::train::{TrainState, Trainer};
use ndm_api::{Pipeline, PluginSpec, RegistryFile, Rng};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    ndm_api::kernels::prepare_process();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let steps = args.first().copied().unwrap_or(3000);
    let batch = args.get(1).copied().unwrap_or(256);
    let eval_points = args.get(2).copied().unwrap_or(1000);
    let reg = ndm_plugins_all::builtin_registry();
    let file = RegistryFile::parse(include_str!("../registry.toml"), "registry.toml")?;
    let dev = Device::Cpu;
    let ctx = BuildCtx::without_weights(&dev, &reg);
    let data = reg.build_dataset(&PluginSpec::new("checkerboard"), &ctx)?;
    println!("checkerboard, {steps} training steps of batch {batch}, NELBO on {eval_points} held-out points (data entropy ln 8 = 2.0794 nats)\n");
    println!("| model | T | params | NELBO (nats) | L_prior | L_diff | L_rec | ms / train step |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for t_total in [10usize, 1000] {
        let preset = file.preset(&format!("ndm-discrete-{t_total}"))?.clone();
        let mut cfg = preset.train.clone();
        cfg.steps = steps;
        cfg.batch_size = batch;
        // Same schedule, backbone, grid, objective and seed: only F differs.
        let mut ddpm_spec = preset.model.clone();
        ddpm_spec.transform = PluginSpec::new("identity");
        let pipes = [
            ("ddpm", Pipeline::build(&ddpm_spec, &[2], &reg, &dev, 0)?),
            ("ndm", Pipeline::build(&preset.model, &[2], &reg, &dev, 0)?),
        ];
        let trainers = pipes
            .iter()
            .map(|(_, p)| Trainer::new(p, &cfg))
            .collect::<Result<Vec<_>, _>>()?;
        let mut states = pipes
            .iter()
            .map(|(_, p)| TrainState::new(p, 0))
            .collect::<Result<Vec<_>, _>>()?;
        let mut times = [Vec::with_capacity(steps), Vec::with_capacity(steps)];
        // Alternate the two models step by step, so machine load affects both alike.
        for _ in 0..steps {
            for k in 0..2 {
                let t0 = Instant::now();
                trainers[k].step(&mut states[k], data.as_ref())?;
                times[k].push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        let mut medians = [0.0; 2];
        for k in 0..2 {
            times[k].sort_by(f64::total_cmp);
            medians[k] = times[k][times[k].len() / 2];
            let (model, pipe) = (&pipes[k].0, &pipes[k].1);
            pipe.set_weights(&states[k].ema)?;
            let r = evaluate_nelbo(pipe, data.as_ref(), eval_points, 500, &mut Rng::new(123))?;
            println!(
                "| {model} | {t_total} | {} | {:.3} | {:.4} | {:.3} | {:.3} | {:.1} |",
                pipe.num_params(),
                r.nelbo,
                r.l_prior,
                r.l_diff,
                r.l_rec,
                medians[k]
            );
        }
        ratios.push((t_total, medians[1] / medians[0]));
    }
    for (t_total, ratio) in ratios {
        println!("\nT = {t_total}: an NDM training step costs {ratio:.2}x a DDPM step (median step times, interleaved)");
    }
    Ok(())
}
