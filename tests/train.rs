//! The optimizer step: the host loop that updates f32 weights on the CPU and the tensor-op path
//! used on other devices compute the same AdamW + EMA update.

mod common;

use common::{build, device, registry, registry_file};
use ndm_api::train::{TrainState, Trainer};
use ndm_api::{PluginSpec, TrainConfig};

#[test]
fn host_and_tensor_updates_agree() {
    let mut spec = registry_file().preset("ddpm").unwrap().model.clone();
    spec.backbone.set("hidden", "32");
    let data = registry()
        .build_dataset(
            &PluginSpec::new("moons"),
            &ndm_api::registry::BuildCtx::without_weights(device(), &registry()),
        )
        .unwrap();
    let cfg = TrainConfig {
        batch_size: 64,
        lr: 1e-2,
        warmup: 2,
        weight_decay: 0.01,
        grad_clip: 0.5,
        ..TrainConfig::default()
    };
    let run = |host: bool| {
        let pipe = build(&spec, &data.data_shape());
        let mut trainer = Trainer::new(&pipe, &cfg).unwrap();
        trainer.host_update = host;
        let mut state = TrainState::new(&pipe, 0).unwrap();
        let mut norms = Vec::new();
        for _ in 0..5 {
            norms.push(trainer.step(&mut state, data.as_ref()).unwrap().grad_norm);
        }
        let mut values = Vec::new();
        for (name, var) in pipe.vars() {
            for map in [&state.m, &state.v, &state.ema] {
                values.extend(common::to_vec(&map[&name]));
            }
            values.extend(common::to_vec(var.as_tensor()));
        }
        (norms, values)
    };
    let (host, tensor) = (run(true), run(false));
    for (a, b) in host.0.iter().zip(&tensor.0) {
        assert!((a - b).abs() <= 1e-4 * a.abs(), "gradient norms {a} vs {b}");
    }
    assert_eq!(host.1.len(), tensor.1.len());
    // f64 arithmetic on the host, f32 tensor ops elsewhere: the same numbers up to rounding,
    // which five steps of training carry along. Relative to the value with an absolute floor
    // of 1e-5 (weights and moments are O(0.1-1); an EMA entry that crosses zero near 7e-7 once
    // differed by 5e-8, f32 rounding, which a 1e-6 floor counted as 3%).
    let rel: Vec<f64> = host
        .1
        .iter()
        .zip(&tensor.1)
        .map(|(a, b)| (a - b).abs() / (1e-5 + a.abs().max(b.abs())))
        .collect();
    let worst = rel.iter().cloned().fold(0.0, f64::max);
    let mean = rel.iter().sum::<f64>() / rel.len() as f64;
    assert!(
        worst < 1e-2 && mean < 1e-5,
        "relative differences: largest {worst}, mean {mean}"
    );
    // The update did something.
    let (first, _) = run(true);
    assert!(first.iter().all(|n| n.is_finite() && *n > 0.0));
}

/// Random 8x8 grey images.
const NOISE8: common::Images8 = common::Images8 {
    draw: |n, rng, device| {
        rng.uniform_tensor(
            &[n, 1, 8, 8],
            -1.0,
            1.0,
            ndm_api::candle_core::DType::F32,
            device,
        )
    },
    quantization: None,
};

/// Dropout acts in training steps only, with masks drawn from a generator derived from the seed
/// and the step: two runs from one seed reach the same weights, and predictions made outside
/// training are deterministic.
#[test]
fn dropout_is_reproducible_and_absent_when_sampling() {
    use ndm_api::ReverseProcess;
    let mut spec = registry_file().preset("ddpm").unwrap().model.clone();
    spec.backbone = PluginSpec::new("unet");
    for (k, v) in [
        ("base_channels", "8"),
        ("channel_mults", "[1]"),
        ("attention_resolutions", "[]"),
        ("dropout", "0.5"),
    ] {
        spec.backbone.set(k, v);
    }
    let cfg = TrainConfig {
        batch_size: 4,
        ..TrainConfig::default()
    };
    let run_with = |spec: &ndm_api::ModelSpec| {
        let pipe = build(spec, &[1, 8, 8]);
        let trainer = Trainer::new(&pipe, &cfg).unwrap();
        let mut state = TrainState::new(&pipe, 0).unwrap();
        for _ in 0..3 {
            trainer.step(&mut state, &NOISE8).unwrap();
        }
        let w: Vec<f64> = pipe
            .vars()
            .iter()
            .flat_map(|(_, v)| common::to_vec(v.as_tensor()))
            .collect();
        (pipe, w)
    };
    let (pipe, a) = run_with(&spec);
    let (_, b) = run_with(&spec);
    assert!(a == b, "dropout masks are not reproducible from the seed");
    // And the training steps did apply it: without dropout the weights differ.
    let mut plain = spec.clone();
    plain.backbone.set("dropout", "0.0");
    assert!(a != run_with(&plain).1, "dropout never applied in training");
    let z = ndm_api::Rng::new(2)
        .normal_tensor(
            &[3, 1, 8, 8],
            ndm_api::candle_core::DType::F32,
            &pipe.device,
        )
        .unwrap();
    let p1 = common::to_vec(&pipe.predict_x(&z, 0.5).unwrap());
    let p2 = common::to_vec(&pipe.predict_x(&z, 0.5).unwrap());
    assert!(p1 == p2, "dropout applied outside training");
}
