//! Every preset of registry.toml builds, trains 20 steps and samples on 2-D data.

mod common;

use common::*;
use ndm_api::sample::sample;
use ndm_api::train::{TrainState, Trainer};
use ndm_api::{Family, PluginSpec, Rng, TimeGrid};

#[test]
fn every_preset_builds_trains_20_steps_and_samples() {
    let reg = registry();
    let file = registry_file();
    assert!(file.presets.len() >= 2);
    let ctx = plain_ctx(&reg);
    let data = reg
        .build_dataset(&PluginSpec::new("checkerboard"), &ctx)
        .unwrap();
    for (name, preset) in &file.presets {
        let pipe = build(&preset.model, &[2]);
        let mut cfg = preset.train.clone();
        cfg.steps = 20;
        cfg.batch_size = 64;
        let trainer = Trainer::new(&pipe, &cfg).unwrap();
        let mut state = TrainState::new(&pipe, 0).unwrap();
        let mut first = None;
        for _ in 0..20 {
            let r = trainer.step(&mut state, data.as_ref()).unwrap();
            assert!(r.loss.is_finite(), "{name}: loss {}", r.loss);
            first.get_or_insert(r.loss);
        }
        assert_eq!(state.step, 20);
        let solver = reg.build_solver(&preset.sampler.solver, &ctx).unwrap();
        let steps = preset.sampler.steps.unwrap_or(10).min(20);
        let grid = TimeGrid::new(
            steps,
            preset.sampler.spacing,
            pipe.spec.steps,
            0.0,
            pipe.t_end(),
        )
        .unwrap();
        let s = sample(&pipe, solver.as_ref(), &grid, 32, &mut Rng::new(1)).unwrap();
        assert_eq!(s.x.dims(), &[32, 2], "{name}");
        assert!(s.nfe > steps, "{name}: NFE {} for {steps} steps", s.nfe);
        assert!(to_vec(&s.x).iter().all(|v| v.is_finite()), "{name}");
        // The preset's names resolve to registered plugins.
        reg.get(Family::Solver, &preset.sampler.solver.kind)
            .unwrap();
    }
}

#[test]
fn training_is_reproducible_from_the_seed() {
    let file = registry_file();
    let preset = file.preset("ddpm").unwrap();
    let reg = registry();
    let ctx = plain_ctx(&reg);
    let data = reg.build_dataset(&PluginSpec::new("moons"), &ctx).unwrap();
    let run = || {
        let pipe = build(&preset.model, &[2]);
        let mut cfg = preset.train.clone();
        cfg.batch_size = 32;
        let trainer = Trainer::new(&pipe, &cfg).unwrap();
        let mut state = TrainState::new(&pipe, 5).unwrap();
        (0..5)
            .map(|_| trainer.step(&mut state, data.as_ref()).unwrap().loss)
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn optimizer_state_keeps_no_autograd_history() {
    // A tracked optimizer update chains every step's graph to the next: memory then grows with
    // the number of steps (this happened: a 6000-step run was killed at 13 GB).
    let file = registry_file();
    let preset = file.preset("ndm").unwrap();
    let reg = registry();
    let ctx = plain_ctx(&reg);
    let data = reg.build_dataset(&PluginSpec::new("moons"), &ctx).unwrap();
    let pipe = build(&preset.model, &[2]);
    let mut cfg = preset.train.clone();
    cfg.batch_size = 16;
    let trainer = Trainer::new(&pipe, &cfg).unwrap();
    let mut state = TrainState::new(&pipe, 0).unwrap();
    for _ in 0..3 {
        trainer.step(&mut state, data.as_ref()).unwrap();
    }
    for map in [&state.m, &state.v, &state.ema] {
        for (name, t) in map.iter() {
            assert!(!t.track_op(), "{name} records autograd history");
        }
    }
}
