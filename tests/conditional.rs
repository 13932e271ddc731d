//! Class conditioning and classifier-free guidance: against the exact denoisers of a Gaussian
//! mixture, through a conditional preset end to end, and the errors a user can meet.

mod common;

use common::*;
use ndm_api::candle_core::{DType, Tensor};
use ndm_api::eval::evaluate_nelbo;
use ndm_api::guidance::{Conditioning, Guided};
use ndm_api::registry::{BuildCtx, NoParams, Origin};
use ndm_api::sample::sample_with;
use ndm_api::train::{TrainState, Trainer};
use ndm_api::{Backbone, NetInput, Pipeline, PluginSpec, ReverseProcess, Rng, RunSpec};

/// Three 2-D Gaussians `N(mu_k, S^2 I)` with equal weights.
const MEANS: [[f64; 2]; 3] = [[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]];
const S: f64 = 0.3;

/// `E[x | z_t, k]` for component `k` at `(alpha, sigma)`.
fn component_mean(z: [f64; 2], k: usize, a: f64, s: f64) -> [f64; 2] {
    let gain = a * S * S / (a * a * S * S + s * s);
    let m = MEANS[k];
    [
        m[0] + gain * (z[0] - a * m[0]),
        m[1] + gain * (z[1] - a * m[1]),
    ]
}

/// `E[x | z_t]` of the mixture: the component means weighted by their responsibilities.
fn mixture_mean(z: [f64; 2], a: f64, s: f64) -> [f64; 2] {
    let var = a * a * S * S + s * s;
    let logw: Vec<f64> = MEANS
        .iter()
        .map(|m| -((z[0] - a * m[0]).powi(2) + (z[1] - a * m[1]).powi(2)) / (2.0 * var))
        .collect();
    let top = logw.iter().cloned().fold(f64::MIN, f64::max);
    let w: Vec<f64> = logw.iter().map(|l| (l - top).exp()).collect();
    let total: f64 = w.iter().sum();
    let mut out = [0.0; 2];
    for (k, wk) in w.iter().enumerate() {
        let c = component_mean(z, k, a, s);
        out[0] += wk / total * c[0];
        out[1] += wk / total * c[1];
    }
    out
}

/// The exact conditional denoiser of the mixture (class `k`) and, for "no class", the exact
/// unconditional one.
#[derive(Debug)]
struct MixtureOracle;

impl Backbone for MixtureOracle {
    fn forward(&self, input: &NetInput) -> ndm_api::candle_core::Result<Tensor> {
        let z: Vec<Vec<f64>> = input.z.to_dtype(DType::F64)?.to_vec2()?;
        let a: Vec<f64> = input.alpha.to_dtype(DType::F64)?.to_vec1()?;
        let s: Vec<f64> = input.sigma.to_dtype(DType::F64)?.to_vec1()?;
        let class: Vec<u32> = match input.class {
            Some(c) => c.to_vec1()?,
            None => vec![3; z.len()],
        };
        let mut out = Vec::new();
        for i in 0..z.len() {
            let zi = [z[i][0], z[i][1]];
            let m = match class[i] as usize {
                k @ 0..3 => component_mean(zi, k, a[i], s[i]),
                _ => mixture_mean(zi, a[i], s[i]),
            };
            out.extend(m);
        }
        Tensor::from_vec(out, (z.len(), 2), input.z.device())?.to_dtype(input.z.dtype())
    }
    fn predicts_data(&self) -> bool {
        true
    }
}

fn registry_with_oracle() -> ndm_api::PluginRegistry {
    let mut reg = registry();
    reg.add(
        ndm_api::plugin_info!(
            Backbone,
            "mixture-oracle",
            "exact denoisers of a 3-component Gaussian mixture (tests)",
            NoParams,
            |_c: NoParams, _ctx: &BuildCtx| Ok(Box::new(MixtureOracle))
        ),
        Origin::BuiltIn,
    )
    .unwrap();
    reg
}

fn oracle_pipeline() -> Pipeline {
    let mut spec = registry_file().preset("ddpm-cond").unwrap().model.clone();
    spec.backbone = PluginSpec::new("mixture-oracle");
    spec.objective = PluginSpec::new("ndm-elbo-discrete");
    spec.classes = 3;
    Pipeline::build(&spec, &[2], &registry_with_oracle(), device(), 0).unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    t.to_dtype(DType::F64).unwrap().to_vec2().unwrap()
}

#[test]
fn guidance_zero_is_the_conditional_model_and_guided_predictions_match_the_closed_form() {
    let pipe = oracle_pipeline();
    let zs = [[0.3, -0.4], [-1.5, 0.2], [0.1, 1.7], [2.2, 0.9]];
    let z = Tensor::from_vec(
        zs.iter().flatten().map(|&v| v as f32).collect::<Vec<_>>(),
        (4, 2),
        device(),
    )
    .unwrap();
    let classes = vec![0u32, 1, 2, 0];
    for t in [0.1, 0.5, 0.9] {
        let p = pipe.schedule_point(t);
        for w in [0.0, 1.0, 3.0] {
            let cond = Conditioning {
                classes: classes.clone(),
                guidance: w,
            };
            let g = Guided::new(&pipe, &cond).unwrap();
            assert_eq!(g.network_passes(), if w == 0.0 { 1 } else { 2 });
            let got = rows(&g.predict_x(&z, t).unwrap());
            for (i, zi) in zs.iter().enumerate() {
                let c = component_mean(*zi, classes[i] as usize, p.alpha, p.sigma);
                let u = mixture_mean(*zi, p.alpha, p.sigma);
                for d in 0..2 {
                    let want = (1.0 + w) * c[d] - w * u[d];
                    assert!(
                        (got[i][d] - want).abs() < 1e-4,
                        "t {t} w {w} example {i}: {} vs {want}",
                        got[i][d]
                    );
                }
            }
        }
        // Outside any condition a conditional model predicts with "no class": the mixture.
        let free = rows(&pipe.predict_x(&z, t).unwrap());
        for (i, zi) in zs.iter().enumerate() {
            let u = mixture_mean(*zi, p.alpha, p.sigma);
            assert!((free[i][0] - u[0]).abs() < 1e-4 && (free[i][1] - u[1]).abs() < 1e-4);
        }
    }
}

#[test]
fn guided_sampling_with_the_oracle_lands_in_the_requested_component() {
    let pipe = oracle_pipeline();
    let plugins = registry_with_oracle();
    let sampler = registry_file().preset("ddim").unwrap().sampler.clone();
    for class in 0..3u32 {
        let cond = Conditioning {
            classes: vec![class; 200],
            guidance: 0.0,
        };
        let (s, _) = sample_with(
            &pipe,
            &sampler,
            &plugins,
            200,
            None,
            Some(&cond),
            &mut Rng::new(2),
        )
        .unwrap();
        let m = MEANS[class as usize];
        let near = rows(&s.x)
            .iter()
            .filter(|q| ((q[0] - m[0]).powi(2) + (q[1] - m[1]).powi(2)).sqrt() < 4.0 * S)
            .count();
        assert!(
            near >= 196,
            "class {class}: {near} of 200 samples near its mean"
        );
    }
}

#[test]
fn a_conditional_preset_trains_samples_every_class_and_evaluates_per_class() {
    let setup = ndm_plugins_all::setup(None).unwrap();
    let dev = device().clone();
    let mut spec = RunSpec::from_preset(
        &registry_file(),
        "ddpm-cond",
        PluginSpec::new("checkerboard"),
        &setup.plugins,
        &dev,
    )
    .unwrap();
    spec.set("train.batch_size=64").unwrap();
    spec.set("train.steps=30").unwrap();
    let spec = spec.resolve(&setup.plugins, &dev).unwrap();
    assert!(spec.model.conditional);
    assert_eq!(spec.model.classes, 8);
    // spec.toml keeps both fields.
    let dir = std::env::temp_dir().join(format!("ndm-cond-spec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rd = ndm_api::checkpoint::RunDir::new(&dir);
    rd.write_spec(&spec).unwrap();
    assert_eq!(rd.read_spec().unwrap().model, spec.model);
    std::fs::remove_dir_all(&dir).unwrap();
    let pipe = spec.build_pipeline(&setup.plugins, &dev).unwrap();
    assert_eq!(pipe.classes(), 8);
    let data = spec.build_dataset(&setup.plugins, &dev).unwrap();
    let trainer = Trainer::new(&pipe, &spec.train).unwrap();
    let mut state = TrainState::new(&pipe, 0).unwrap();
    for _ in 0..30 {
        assert!(trainer
            .step(&mut state, data.as_ref())
            .unwrap()
            .loss
            .is_finite());
    }
    let mut sampler = spec.sampler.clone();
    sampler.steps = Some(20);
    let cond = Conditioning {
        classes: (0..8u32).flat_map(|k| [k; 4]).collect(),
        guidance: 1.0,
    };
    let (s, _) = sample_with(
        &pipe,
        &sampler,
        &setup.plugins,
        32,
        None,
        Some(&cond),
        &mut Rng::new(1),
    )
    .unwrap();
    assert_eq!(s.x.dims(), &[32, 2]);
    let m = data
        .class_metrics(&s.x.narrow(0, 0, 4).unwrap(), 0)
        .unwrap();
    assert_eq!(m[0].0, "in_requested_square");
    let r = evaluate_nelbo(&pipe, data.as_ref(), 64, 32, &mut Rng::new(3)).unwrap();
    assert!(r.nelbo.mean.is_finite());
    assert!(!r.per_class.is_empty() && r.per_class.len() <= 8);
    assert_eq!(
        r.per_class.iter().map(|c| c.bits_per_dim.n).sum::<usize>(),
        64
    );
}

#[test]
fn bad_classes_and_guidance_are_one_line_errors() {
    let pipe = oracle_pipeline();
    let err = |c: Conditioning| Guided::new(&pipe, &c).unwrap_err().to_string();
    let e = err(Conditioning {
        classes: vec![3],
        guidance: 0.0,
    });
    assert!(
        e.contains("class 3 is out of range") && e.contains("3 classes"),
        "{e}"
    );
    let e = err(Conditioning {
        classes: vec![0],
        guidance: -1.0,
    });
    assert!(e.contains("non-negative"), "{e}");
    assert!(!e.contains('\n'));
    // An unconditional model takes no class.
    let plain = build(&registry_file().preset("ddpm").unwrap().model, &[2]);
    let e = Guided::new(
        &plain,
        &Conditioning {
            classes: vec![0],
            guidance: 0.0,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not class-conditional"), "{e}");
    // A conditional preset on data without labels is refused when the run is resolved.
    let setup = ndm_plugins_all::setup(None).unwrap();
    let spec = RunSpec::from_preset(
        &registry_file(),
        "ddpm-cond",
        PluginSpec::new("swissroll"),
        &setup.plugins,
        device(),
    )
    .unwrap();
    let e = spec
        .resolve(&setup.plugins, device())
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs labels") && e.contains("swissroll"), "{e}");
}

#[test]
fn label_dropout_reaches_the_network_and_unconditional_models_see_no_class() {
    // A backbone that records the classes it is given.
    #[derive(Debug)]
    struct Recorder;
    static SEEN: std::sync::Mutex<Vec<Option<Vec<u32>>>> = std::sync::Mutex::new(Vec::new());
    impl Backbone for Recorder {
        fn forward(&self, input: &NetInput) -> ndm_api::candle_core::Result<Tensor> {
            SEEN.lock()
                .unwrap()
                .push(input.class.map(|c| c.to_vec1::<u32>().unwrap()));
            input.z.affine(0.5, 0.0)
        }
        fn predicts_data(&self) -> bool {
            true
        }
    }
    let mut reg = registry();
    reg.add(
        ndm_api::plugin_info!(
            Backbone,
            "recorder",
            "records classes (tests)",
            NoParams,
            |_c: NoParams, _ctx: &BuildCtx| Ok(Box::new(Recorder))
        ),
        Origin::BuiltIn,
    )
    .unwrap();
    let data = reg
        .build_dataset(
            &PluginSpec::new("checkerboard"),
            &BuildCtx::without_weights(device(), &reg),
        )
        .unwrap();
    let mut spec = registry_file().preset("ddpm-cond").unwrap().model.clone();
    spec.backbone = PluginSpec::new("recorder");
    spec.objective = PluginSpec::new("ndm-elbo-discrete");
    spec.classes = 8;
    let pipe = Pipeline::build(&spec, &[2], &reg, device(), 0).unwrap();
    let mut cfg = registry_file().preset("ddpm-cond").unwrap().train.clone();
    cfg.batch_size = 4000;
    cfg.cond_drop = 0.25;
    let trainer = Trainer::new(&pipe, &cfg).unwrap();
    let mut state = TrainState::new(&pipe, 0).unwrap();
    SEEN.lock().unwrap().clear();
    // The recorder has no weights: the step's loss is still computed (and its update is empty).
    let _ = trainer.step(&mut state, data.as_ref());
    let seen = SEEN.lock().unwrap().clone();
    let classes = seen[0]
        .clone()
        .expect("a conditional model's network sees classes");
    assert_eq!(classes.len(), 4000);
    let dropped = classes.iter().filter(|&&c| c == 8).count() as f64 / 4000.0;
    assert!((dropped - 0.25).abs() < 0.03, "dropped {dropped}");
    // Every label that was kept is the square the point lies in.
    let (x, labels) = data
        .sample_labeled(4000, ndm_api::Split::Train, &mut Rng::new(0), device())
        .unwrap();
    let pts = rows(&x);
    let labels: Vec<u32> = labels.unwrap().to_vec1().unwrap();
    for (p, &l) in pts.iter().zip(&labels) {
        // The board's dark squares, counted row by row from the bottom left.
        let (row, k) = (l as i64 / 2, l as i64 % 2);
        let (x0, y0) = ((2 * k + row % 2 - 2) as f64, (row - 2) as f64);
        assert!(
            (x0..x0 + 1.0).contains(&p[0]) && (y0..y0 + 1.0).contains(&p[1]),
            "label {l} for {p:?}"
        );
    }
    // The unconditional model's network sees no class.
    let mut plain = registry_file().preset("ddpm").unwrap().model.clone();
    plain.backbone = PluginSpec::new("recorder");
    plain.objective = PluginSpec::new("ndm-elbo-discrete");
    let pipe = Pipeline::build(&plain, &[2], &reg, device(), 0).unwrap();
    let trainer = Trainer::new(&pipe, &cfg).unwrap();
    let mut state = TrainState::new(&pipe, 0).unwrap();
    SEEN.lock().unwrap().clear();
    let _ = trainer.step(&mut state, data.as_ref());
    assert!(SEEN.lock().unwrap().iter().all(|c| c.is_none()));
}
