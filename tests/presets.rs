//! Every preset of registry.toml builds, trains 20 steps and samples on 2-D data (an images-only
//! preset on tiny generated images).

mod common;

use common::*;
use ndm_api::candle_core::{DType, Tensor};
use ndm_api::reverse::MapPrediction;
use ndm_api::sample::sample;
use ndm_api::train::{TrainState, Trainer};
use ndm_api::{
    BuildCtx, Dataset, Family, Pipeline, PluginSpec, ReverseProcess, Rng, Spacing, TimeGrid,
};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The network evaluations (`predict_x`) made through a reverse process, counted by wrapping it.
fn counting<'a>(inner: &'a Pipeline, calls: &'a AtomicUsize) -> impl ReverseProcess + 'a {
    MapPrediction {
        inner,
        map: move |x: Tensor| {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(x)
        },
    }
}

/// The network evaluations a solver makes over `steps` steps, from its documentation (the solver
/// itself does not count them here: [`counting`] does).
fn expected_nfe(solver: &PluginSpec, steps: usize) -> usize {
    let int = |key: &str| {
        solver
            .params
            .get(key)
            .and_then(|v| v.as_integer())
            .unwrap_or_else(|| panic!("solver {}: no integer param `{key}`", solver.kind))
            as usize
    };
    match solver.kind.as_str() {
        // One xhat per step.
        "ancestral" | "ddim" | "dpmpp-2m" | "euler-maruyama" => steps,
        // Two drift evaluations per step.
        "heun" => 2 * steps,
        // Per step: `corrector_steps` Langevin evaluations at t, then the predictor's one.
        "pc" => steps * (1 + int("corrector_steps")),
        other => panic!("a preset samples with solver `{other}`: add its NFE to expected_nfe"),
    }
}

/// Generated `[1, 8, 8]` images in `[-1, 1]` for presets that need images.
const TINY_IMAGES: Images8 = Images8 {
    draw: |n, rng, device| {
        (rng.normal_tensor(&[n, 1, 8, 8], DType::F32, device)? * 0.5)?.clamp(-1.0, 1.0)
    },
    quantization: None,
};

#[test]
fn every_preset_builds_trains_20_steps_and_samples() {
    let reg = registry();
    let file = registry_file();
    assert!(file.presets.len() >= 2);
    let ctx = plain_ctx(&reg);
    let data = reg
        .build_dataset(&PluginSpec::new("checkerboard"), &ctx)
        .unwrap();
    let images = TINY_IMAGES;
    for (name, preset) in &file.presets {
        let mut model = preset.model.clone();
        // An images-only preset (blur) refuses flat data; it runs on tiny generated images with
        // its image variant's parts.
        let mut flat = model.clone();
        if flat.conditional {
            flat.classes = data.num_classes();
        }
        let images_only = Pipeline::build(&flat, &[2], &reg, device(), 0)
            .is_err_and(|e| e.to_string().contains("acts on images"));
        let data: &dyn Dataset = if images_only {
            let v = preset
                .images
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: no image variant"));
            if let Some(b) = &v.backbone {
                model.backbone = b.clone();
                model.backbone.set("base_channels", "8");
                model.backbone.set("channel_mults", "[1]");
                model.backbone.set("attention_resolutions", "[]");
            }
            &images
        } else {
            data.as_ref()
        };
        if model.conditional {
            model.classes = data.num_classes();
        }
        let pipe = build(&model, &data.data_shape());
        let mut cfg = preset.train.clone();
        cfg.steps = 20;
        cfg.batch_size = 64;
        let trainer = Trainer::new(&pipe, &cfg).unwrap();
        let mut state = TrainState::new(&pipe, 0).unwrap();
        let mut first = None;
        for _ in 0..20 {
            let r = trainer.step(&mut state, data).unwrap();
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
            pipe.t_min(),
            pipe.t_end(),
        )
        .unwrap();
        let s = sample(&pipe, solver.as_ref(), &grid, 32, &mut Rng::new(1)).unwrap();
        let mut want = vec![32];
        want.extend(data.data_shape());
        assert_eq!(s.x.dims(), want.as_slice(), "{name}");
        assert!(to_vec(&s.x).iter().all(|v| v.is_finite()), "{name}");
        // The NFE a solver reports is the network evaluations it made, and the number its
        // documentation promises for this many steps; sampling adds the decoder's one.
        let calls = AtomicUsize::new(0);
        let counting = counting(&pipe, &calls);
        let out = solver
            .sample(&counting, s.z_start.clone(), &grid, &mut Rng::new(1))
            .unwrap();
        let made = calls.load(Ordering::SeqCst);
        let solver_spec = preset.sampler.solver.resolve(Family::Solver, &reg).unwrap();
        let expected = expected_nfe(&solver_spec, grid.steps());
        assert_eq!(
            (out.nfe, made),
            (expected, expected),
            "{name}: solver {} over {} steps reports {} and made {made} evaluations, expected {expected}",
            solver_spec.kind,
            grid.steps(),
            out.nfe
        );
        assert_eq!(s.nfe, expected + 1, "{name}: sampling's NFE");
        if pipe.classes() > 0 {
            // A guided evaluation runs the conditional and the unconditional model: twice the
            // network evaluations, counted as such.
            let cond = ndm_api::guidance::Conditioning {
                classes: (0..32).map(|i| i % 8).collect(),
                guidance: 1.0,
            };
            let g = ndm_api::sample::sample_clipped(
                &pipe,
                solver.as_ref(),
                &grid,
                32,
                None,
                Some(&cond),
                &mut Rng::new(1),
            )
            .unwrap();
            assert_eq!(g.nfe, 2 * (expected + 1), "{name}: guided sampling's NFE");
        }
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

/// With `xhat` clamped to a range, every prediction a solver sees and the decoded samples stay in
/// it; without, an untrained model's samples leave it.
#[test]
fn clipped_sampling_keeps_predictions_in_range() {
    use ndm_api::sample::sample_clipped;
    let reg = ndm_plugins_all::builtin_registry();
    let mut spec = registry_file().preset("ddim").unwrap().model.clone();
    spec.backbone.set("hidden", "16");
    let pipe = Pipeline::build(&spec, &[2], &reg, device(), 3).unwrap();
    let solver = reg
        .build_solver(
            &PluginSpec::new("ddim"),
            &BuildCtx::without_weights(device(), &reg),
        )
        .unwrap();
    let grid = TimeGrid::for_process(10, Spacing::Trailing, &pipe).unwrap();
    let range = |clip| {
        let s = sample_clipped(
            &pipe,
            solver.as_ref(),
            &grid,
            500,
            clip,
            None,
            &mut Rng::new(1),
        )
        .unwrap();
        let v: Vec<f32> = s.x.flatten_all().unwrap().to_vec1().unwrap();
        v.iter()
            .fold((f32::MAX, f32::MIN), |(a, b), x| (a.min(*x), b.max(*x)))
    };
    let (lo, hi) = range(Some((-0.25, 0.25)));
    assert!(lo >= -0.25 && hi <= 0.25, "{lo} {hi}");
    let (lo, hi) = range(None);
    assert!(
        lo < -0.25 || hi > 0.25,
        "unclipped samples already in range: {lo} {hi}"
    );
}
