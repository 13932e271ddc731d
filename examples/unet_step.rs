//! What the pipeline costs around the U-Net: one training step of the `ddpm` preset's image
//! variant (the `backbone.unet` plugin, batch 64, 1 x 28 x 28) through `Trainer::step` (data batch,
//! schedule, noising, eps-MSE loss, backward, clipping, AdamW, EMA) against the bare network step
//! (the plugin's forward on a ready batch, the same loss, backward and candle's AdamW), interleaved
//! in one process so that machine load hits both alike. Prints the medians and their ratio.
//!
//!     cargo run --release --example unet_step -- [STEPS] [BATCH]

use ndm_api::candle_core::{DType, Device};
use ndm_api::candle_nn::{AdamW, Optimizer, ParamsAdamW};
use ndm_api::train::{TrainState, Trainer};
use ndm_api::{Dataset, NetInput, Pipeline, Rng, TrainConfig};
use std::time::Instant;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    ndm_api::kernels::prepare_process();
    let mut args = std::env::args().skip(1);
    let steps: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(20);
    let batch: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let setup = ndm_plugins_all::setup(None)?;
    let preset = setup.file.preset("ddpm")?;
    let mut model = preset.model.clone();
    if let Some(b) = preset.images.as_ref().and_then(|v| v.backbone.clone()) {
        model.backbone = b;
    }
    let dev = Device::Cpu;
    let data = ndm_api::bench::RandomImages([1, 28, 28]);
    let pipe = Pipeline::build(&model, &data.data_shape(), &setup.plugins, &dev, 0)?;
    let cfg = TrainConfig {
        batch_size: batch,
        lr: 1e-4,
        ..TrainConfig::default()
    };
    let trainer = Trainer::new(&pipe, &cfg)?;
    let mut state = TrainState::new(&pipe, 0)?;
    // The same step with the optimizer as tensor ops (what other devices run).
    let mut tensor_trainer = Trainer::new(&pipe, &cfg)?;
    tensor_trainer.host_update = false;
    let mut tensor_state = TrainState::new(&pipe, 0)?;
    let vars: Vec<_> = pipe.vars().into_iter().map(|(_, v)| v).collect();
    let mut adam = AdamW::new(
        vars,
        ParamsAdamW {
            lr: 1e-4,
            ..Default::default()
        },
    )?;
    let mut rng = Rng::new(1);
    let z = rng.normal_tensor(&[batch, 1, 28, 28], DType::F32, &dev)?;
    let target = rng.normal_tensor(&[batch, 1, 28, 28], DType::F32, &dev)?;
    let t = rng.uniform_tensor(&[batch], 0.0, 1.0, DType::F32, &dev)?;
    let sb = pipe.schedule.batch(&t)?;
    println!(
        "U-Net {} parameters, batch {batch} x 1 x 28 x 28, {steps} steps each (after 2 warm-up steps)",
        pipe.num_params()
    );
    // The three steps run in an order that rotates every round: whichever runs first after the
    // previous round's frees measures differently on a busy allocator, and rotating spreads that.
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    for k in 0..steps + 2 {
        for j in 0..3 {
            let which = (k + j) % 3;
            let t0 = Instant::now();
            match which {
                0 => {
                    let out = pipe.backbone.forward(&NetInput::at(&z, &t, &sb))?;
                    let loss = (out - &target)?.sqr()?.mean_all()?;
                    adam.backward_step(&loss)?;
                }
                1 => {
                    trainer.step(&mut state, &data)?;
                }
                _ => {
                    tensor_trainer.step(&mut tensor_state, &data)?;
                }
            }
            if k >= 2 {
                times[which].push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let [mut bare, mut piped, mut tensor_piped] = times;
    let (b, p, q) = (
        median(&mut bare),
        median(&mut piped),
        median(&mut tensor_piped),
    );
    println!("bare network step (forward, MSE, backward, AdamW): median {b:.1} ms");
    println!("pipeline Trainer::step (host optimizer loop):      median {p:.1} ms");
    println!("pipeline Trainer::step (optimizer as tensor ops):  median {q:.1} ms");
    println!(
        "pipeline / bare: {:.3} (host loop), {:.3} (tensor ops)",
        p / b,
        q / b
    );
    Ok(())
}
