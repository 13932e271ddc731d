//! DiNof's flow prior at `t_m` in the pipeline, and transform chains: where solvers start,
//! what is refused when the model is built, how the flow trains.

mod common;

use common::*;
use ndm_api::candle_core::{Result, Tensor};
use ndm_api::registry::{BuildCtx, Family, NoParams, Origin};
use ndm_api::sample::sample;
use ndm_api::train::{TrainState, Trainer};
use ndm_api::{Backbone, NetInput, Pipeline, PluginSpec, Rng, Spacing, TimeGrid, TrainConfig};
use std::sync::atomic::{AtomicU64, Ordering};

/// The largest time any [`TimeRecorder`] has been evaluated at (positive f64 bits order as the
/// numbers do).
static MAX_T: AtomicU64 = AtomicU64::new(0);

/// A backbone that predicts zero noise and records the times it is asked about.
#[derive(Debug)]
struct TimeRecorder;

impl Backbone for TimeRecorder {
    fn forward(&self, input: &NetInput) -> Result<Tensor> {
        for t in to_vec(input.t) {
            MAX_T.fetch_max(t.max(0.0).to_bits(), Ordering::SeqCst);
        }
        input.z.zeros_like()
    }
}

fn registry_with_recorder() -> ndm_api::PluginRegistry {
    let mut reg = registry();
    reg.add(
        ndm_api::plugin_info!(
            Backbone,
            "time-recorder",
            "predicts zero noise and records its times (tests)",
            NoParams,
            |_c: NoParams, _ctx: &BuildCtx| Ok(Box::new(TimeRecorder))
        ),
        Origin::BuiltIn,
    )
    .unwrap();
    reg
}

fn dinof(t_m: &str) -> ndm_api::ModelSpec {
    let mut spec = registry_file().preset("dinof").unwrap().model.clone();
    spec.prior.set("t_m", t_m);
    spec
}

#[test]
fn solvers_started_at_t_m_never_evaluate_the_model_above_t_m() {
    let reg = registry_with_recorder();
    let mut continuous = dinof("0.4");
    continuous.backbone = PluginSpec::new("time-recorder");
    let mut discrete = continuous.clone();
    discrete.steps = Some(10);
    discrete.objective = PluginSpec::new("ndm-elbo-discrete");
    for (label, spec) in [("continuous", continuous), ("discrete", discrete)] {
        let pipe = Pipeline::build(&spec, &[2], &reg, device(), 0).unwrap();
        assert_eq!(pipe.t_end(), 0.4);
        let mut ran = 0;
        for name in reg.names(Family::Solver) {
            let solver = reg
                .build_solver(&PluginSpec::new(name), &plain_ctx(&reg))
                .unwrap();
            let grid = TimeGrid::for_process(4, Spacing::Uniform, &pipe).unwrap();
            MAX_T.store(0, Ordering::SeqCst);
            let s = sample(&pipe, solver.as_ref(), &grid, 8, &mut Rng::new(1));
            if let Err(e) = s {
                // A solver may refuse a model (one line), never run past t_m.
                eprintln!("{label}: {name} refused: {e}");
                let e = e.to_string();
                assert!(!e.contains('\n'), "{label} {name}: {e}");
                continue;
            }
            let max_t = f64::from_bits(MAX_T.load(Ordering::SeqCst));
            assert!(
                max_t <= 0.4 + 1e-6,
                "{label}: solver {name} evaluated the model at t = {max_t} > t_m = 0.4"
            );
            assert!(
                max_t >= 0.4 - 0.11,
                "{label}: solver {name} never came near t_m (max t = {max_t})"
            );
            ran += 1;
        }
        assert!(ran >= 5, "{label}: only {ran} solvers ran");
    }
}

#[test]
fn a_t_m_off_the_grid_and_levels_that_do_not_divide_the_side_are_refused_naming_the_field() {
    let mut spec = dinof("0.45");
    spec.steps = Some(10);
    spec.objective = PluginSpec::new("ndm-elbo-discrete");
    let e = Pipeline::build(&spec, &[2], &registry(), device(), 0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("prior.t_m") && e.contains("0.45") && e.contains("model.steps = 10"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");

    let mut images = dinof("0.6");
    images.backbone = PluginSpec::new("unet");
    images.prior.set("levels", "3");
    let e = Pipeline::build(&images, &[1, 28, 28], &registry(), device(), 0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("prior.glow") && e.contains("levels = 3") && e.contains("28 x 28"),
        "{e}"
    );
    images.prior.set("levels", "2");
    Pipeline::build(&images, &[1, 28, 28], &registry(), device(), 0).unwrap();

    let e = Pipeline::build(&dinof("1.5"), &[2], &registry(), device(), 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("t_m") && e.contains("1.5"), "{e}");
}

#[test]
fn the_flow_prior_initialises_from_data_and_trains_through_eps_mse() {
    let data = dataset("checkerboard");
    let pipe = build(&dinof("0.6"), &[2]);
    let cfg = TrainConfig {
        batch_size: 256,
        lr: 2e-3,
        ..TrainConfig::default()
    };
    let trainer = Trainer::new(&pipe, &cfg).unwrap();
    let mut state = TrainState::new(&pipe, 0).unwrap();
    let prior_vars = |pipe: &Pipeline| -> Vec<(String, Vec<f64>)> {
        pipe.vars()
            .into_iter()
            .filter(|(n, _)| n.starts_with("prior."))
            .map(|(n, v)| (n, to_vec(v.as_tensor())))
            .collect()
    };
    let before = prior_vars(&pipe);
    let first = trainer.step(&mut state, data.as_ref()).unwrap();
    assert!(
        first
            .terms
            .iter()
            .any(|(n, v)| n == "l_prior" && v.is_finite()),
        "{:?}",
        first.terms
    );
    // The first actnorm now standardizes z_{t_m}: its bias moved off zero and the EMA follows.
    let an = "prior.level0.step0.actnorm.logs";
    let init = prior_vars(&pipe);
    let logs = &init.iter().find(|(n, _)| n == an).unwrap().1;
    assert!(logs.iter().all(|s| s.abs() > 1e-3), "{an} = {logs:?}");
    let ema = to_vec(&state.ema[an]);
    for (e, s) in ema.iter().zip(logs) {
        assert!((e - s).abs() < 0.05, "EMA {e} vs weight {s}");
    }
    for _ in 0..30 {
        trainer.step(&mut state, data.as_ref()).unwrap();
    }
    let after = prior_vars(&pipe);
    let moved = before
        .iter()
        .zip(&after)
        .filter(|((_, a), (_, b))| a.iter().zip(b).any(|(x, y)| (x - y).abs() > 1e-6))
        .count();
    assert!(
        moved * 2 > before.len(),
        "only {moved} of {} prior weights moved",
        before.len()
    );
    // A resumed run does not initialise again: step > 0.
    let logs_now = to_vec(&pipe.vars().into_iter().find(|(n, _)| n == an).unwrap().1);
    let mut resumed = state.clone();
    trainer.step(&mut resumed, data.as_ref()).unwrap();
    let logs_next = to_vec(&pipe.vars().into_iter().find(|(n, _)| n == an).unwrap().1);
    for (a, b) in logs_now.iter().zip(&logs_next) {
        assert!(
            (a - b).abs() < 0.05,
            "a later step re-initialised {an}: {a} -> {b}"
        );
    }
}

#[test]
fn a_chain_with_a_learned_part_is_trainable_and_keeps_its_parts_weights_apart() {
    let mut spec = registry_file().preset("ndm").unwrap().model.clone();
    let learned = spec.transform.clone();
    spec.transform = PluginSpec::new("chain");
    let parts = [PluginSpec::new("identity"), learned]
        .iter()
        .map(|p| ndm_api::toml::Value::try_from(p).unwrap())
        .collect();
    spec.transform
        .params
        .insert("parts".into(), ndm_api::toml::Value::Array(parts));
    let pipe = build(&spec, &[2]);
    assert!(pipe.transform.is_trainable() && !pipe.transform.is_identity());
    assert!(pipe
        .vars()
        .iter()
        .any(|(n, _)| n.starts_with("transform.1.net.")));
    let x = tensor(&[0.5, -0.25, 1.0, 0.0], &[2, 2]);
    let zero = tensor(&[0.0, 0.0], &[2]);
    let f0 = to_vec(&pipe.f(&x, &zero).unwrap());
    assert_eq!(
        f0,
        to_vec(&x),
        "a chain of identity-at-zero parts is x at t = 0"
    );
}

#[test]
fn glow_as_a_transform_is_time_independent_and_puts_its_log_det_in_l_rec() {
    let mut spec = registry_file().preset("ndm").unwrap().model.clone();
    spec.transform = PluginSpec::new("glow");
    spec.transform.set("steps", "2");
    spec.transform.set("hidden", "16");
    let pipe = build(&spec, &[2]);
    let x = tensor(&[0.5, -0.25, 1.0, 0.0, -0.7, 0.3], &[3, 2]);
    let (t0, t1) = (
        pipe.time_tensor(0.0, 3).unwrap(),
        pipe.time_tensor(0.9, 3).unwrap(),
    );
    assert_eq!(
        to_vec(&pipe.f(&x, &t0).unwrap()),
        to_vec(&pipe.f(&x, &t1).unwrap())
    );
    assert!(to_vec(&pipe.f_dot(&x, &t1).unwrap())
        .iter()
        .all(|v| *v == 0.0));
    let (_, log_det) = pipe.transform.forward_log_det(&x).unwrap().unwrap();
    // L_rec with the change of variables, against the same decoder without it: they differ by
    // exactly -log|det| (same draw of z_0).
    let with = ndm_api::elbo::rec_term(&pipe, &x, &mut Rng::new(2)).unwrap();
    let p = pipe.schedule.point(pipe.t_min());
    let f0 = pipe.f(&x, &t0).unwrap();
    let eps = Rng::new(2)
        .normal_tensor(f0.dims(), f0.dtype(), f0.device())
        .unwrap();
    let z0 = p.noised(&f0, &eps).unwrap();
    let sb = pipe.schedule.batch(&t0).unwrap();
    let fhat = pipe.f(&pipe.xhat(&z0, &t0, &sb).unwrap(), &t0).unwrap();
    let s = p.sigma / p.alpha;
    let gauss: Vec<f64> = to_vec(&f0)
        .chunks(2)
        .zip(to_vec(&fhat).chunks(2))
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(u, v)| 0.5 * ((u - v) / s).powi(2) + s.ln() + 0.918_938_533_204_672_8)
                .sum()
        })
        .collect();
    for ((w, g), ld) in to_vec(&with).iter().zip(&gauss).zip(to_vec(&log_det)) {
        assert!(
            (w - (g - ld)).abs() < 1e-3 * (1.0 + w.abs()),
            "{w} vs {g} - {ld}"
        );
    }
    // eps-mse would let a learnable F collapse: refused in one line.
    spec.objective = PluginSpec::new("eps-mse");
    let e = Pipeline::build(&spec, &[2], &registry(), device(), 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("eps-mse") && !e.contains('\n'), "{e}");
}
