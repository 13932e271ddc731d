//! Flow matching and the score-SDE processes (VE, sub-VP) against their defining formulas, and
//! the samplers and likelihood at flow matching's `alpha_1 = 0` end.

mod common;

use common::*;
use ndm_api::candle_core::{DType, Tensor};
use ndm_api::likelihood::{ode_nll, NllOptions};
use ndm_api::objective::read_terms;
use ndm_api::ode::Tolerance;
use ndm_api::sample::sample;
use ndm_api::Times;
use ndm_api::{
    ModelSpec, NetInput, NoiseSchedule, Pipeline, PluginSpec, Rng, Spacing, Split, TimeGrid,
};

fn preset(name: &str) -> ModelSpec {
    registry_file().preset(name).unwrap().model.clone()
}

fn schedule(kind: &str, params: &[(&str, &str)]) -> Box<dyn NoiseSchedule> {
    let reg = registry();
    let mut spec = PluginSpec::new(kind);
    for (k, v) in params {
        spec.set(k, v);
    }
    let s = reg.build_schedule(&spec, &plain_ctx(&reg)).unwrap();
    s
}

/// The largest absolute entry of an f32 tensor.
fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Mean and variance of each column of an `[n, d]` tensor.
fn moments(x: &Tensor) -> Vec<(f64, f64)> {
    let v = x.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    let n = v.len() as f64;
    (0..v[0].len())
        .map(|j| {
            let m = v.iter().map(|r| r[j]).sum::<f64>() / n;
            let var = v.iter().map(|r| (r[j] - m).powi(2)).sum::<f64>() / (n - 1.0);
            (m, var)
        })
        .collect()
}

#[test]
fn new_schedules_pass_the_conformance_checks() {
    for (name, s) in [
        ("fm-ot", schedule("fm-ot", &[])),
        (
            "fm-ot sigma_min 0.3",
            schedule("fm-ot", &[("sigma_min", "0.3")]),
        ),
        (
            "rectified flow",
            schedule("fm-ot", &[("sigma_min", "0.0"), ("t_min", "1e-3")]),
        ),
        ("ve", schedule("ve", &[])),
        ("sub-vp", schedule("sub-vp", &[])),
    ] {
        ndm_api::testing::check_schedule(s.as_ref()).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // Rectified flow's path has no noise at t = 0: a process starting there is refused.
    let reg = registry();
    let mut spec = PluginSpec::new("fm-ot");
    spec.set("sigma_min", "0.0");
    let e = reg
        .build_schedule(&spec, &plain_ctx(&reg))
        .unwrap_err()
        .to_string();
    assert!(e.contains("schedule.fm-ot") && e.contains("t_min"), "{e}");
}

#[test]
fn ve_and_sub_vp_match_the_score_sde_formulas() {
    let ve = schedule("ve", &[("sigma_min", "0.01"), ("sigma_max", "50.0")]);
    let sub = schedule("sub-vp", &[]);
    for t in [1e-3, 0.1, 0.37, 0.8, 1.0] {
        // VE: x_t = x_0 + N(0, sigma(t)^2), sigma(t) = sigma_min (sigma_max / sigma_min)^t.
        let p = ve.point(t);
        let sigma = 0.01 * (50.0f64 / 0.01).powf(t);
        assert_eq!(p.alpha, 1.0);
        assert!((p.sigma - sigma).abs() < 1e-12 * sigma, "ve t={t}");
        // sub-VP (score_sde's marginal_prob): mean coefficient exp(-B/2), std 1 - exp(-B) with
        // B(t) = 0.1 t + (20 - 0.1) t^2 / 2.
        let b = 0.1 * t + 0.5 * 19.9 * t * t;
        let q = sub.point(t);
        assert!((q.alpha - (-0.5 * b).exp()).abs() < 1e-12, "sub-vp t={t}");
        assert!(
            (q.sigma - (1.0 - (-b).exp())).abs() < 1e-12,
            "sub-vp t={t}: {} vs {}",
            q.sigma,
            1.0 - (-b).exp()
        );
        // Below VP's std for the same alpha.
        assert!(q.sigma < (1.0 - q.alpha * q.alpha).sqrt());
    }
    assert_eq!(sub.t_min(), 1e-3);
}

#[test]
fn flow_matching_path_has_its_marginals_and_velocity() {
    // z_t = (1 - t) x + (sigma_min + (1 - sigma_min) t) eps, drawn through the pipeline's forward
    // process, has mean (1 - t) mu and variance (1 - t)^2 var_x + sigma_t^2 per dimension; the
    // velocity target is dz/dt at fixed (x, eps).
    let mut spec = preset("fm-ot");
    spec.schedule.set("sigma_min", "0.2");
    let pipe = build(&spec, &[2]);
    let n = 200_000;
    let x = dataset("gaussian")
        .sample(n, Split::Train, &mut Rng::new(1), device())
        .unwrap();
    let eps = Rng::new(2)
        .normal_tensor(&[n, 2], DType::F32, device())
        .unwrap();
    let (mu, var) = ([0.5, -0.3], [1.0, 0.8]);
    let z_at = |t: f64| {
        let tt = pipe.time_tensor(t, n).unwrap();
        let c = pipe.coeffs(&pipe.schedule.batch(&tt).unwrap()).unwrap();
        (c.noised(&x, &eps).unwrap(), c)
    };
    for t in [0.0, 0.3, 0.75, 1.0] {
        let (z, _) = z_at(t);
        let s = 0.2 + 0.8 * t;
        for (j, (m, v)) in moments(&z).into_iter().enumerate() {
            let (em, ev) = ((1.0 - t) * mu[j], (1.0 - t).powi(2) * var[j] + s * s);
            // Standard errors: sqrt(ev / n) for the mean, ev sqrt(2 / n) for the variance.
            assert!(
                (m - em).abs() < 5.0 * (ev / n as f64).sqrt(),
                "t={t} mean {m} vs {em}"
            );
            assert!(
                (v - ev).abs() < 5.0 * ev * (2.0 / n as f64).sqrt(),
                "t={t} var {v} vs {ev}"
            );
        }
    }
    let (t, h) = (0.4, 1e-2);
    let (z_hi, _) = z_at(t + h);
    let (z_lo, _) = z_at(t - h);
    let (_, c) = z_at(t);
    let u = pipe.param.target(&x, &eps, &c).unwrap();
    let fd = ((z_hi - z_lo).unwrap() / (2.0 * h)).unwrap();
    let err = max_abs(&(u - fd).unwrap());
    // The path is linear in t: the central difference is exact up to f32 rounding.
    assert!(err < 1e-3, "velocity target vs dz/dt: {err}");
}

#[test]
fn with_the_velocity_parameterization_the_ode_drift_is_the_network_output() {
    for name in ["fm-ot", "rectified-flow"] {
        let pipe = build(&preset(name), &[2]);
        let z = Rng::new(3)
            .normal_tensor(&[16, 2], DType::F32, device())
            .unwrap()
            .clamp(-4.0, 4.0)
            .unwrap();
        for t in [pipe.t_min(), 0.3, 0.9, 1.0] {
            let tt = pipe.time_tensor(t, 16).unwrap();
            let sb = pipe.schedule.batch(&tt).unwrap();
            let raw = pipe.network(&NetInput::at(&z, &tt, &sb)).unwrap();
            let drift = pipe.ode_drift(&z, t).unwrap();
            let err = max_abs(&(&raw - &drift).unwrap());
            let scale = max_abs(&raw);
            // In f32 the drift's (z - alpha xhat) / sigma loses about eps_f32 |z| / sigma to
            // cancellation: 1.4e-2 at fm-ot's sigma_0 = 1e-4, below 1e-6 inside.
            let z_max = 4.0;
            let rounding = 4.0 * f32::EPSILON * z_max / pipe.schedule.point(t).sigma as f32;
            assert!(
                err <= 1e-4 * (1.0 + scale) + rounding,
                "{name} t={t}: drift differs from the velocity by {err}"
            );
        }
    }
}

#[test]
fn ode_nll_with_the_oracle_is_exact_through_alpha_zero() {
    // Flow matching carries q_0 onto exactly N(0, I) at t = 1 (alpha_1 = 0), so with the exact
    // denoiser the ODE NLL is the data's (blurred by sigma_0 = 1e-4) density, example by example.
    let mut spec = preset("fm-ot");
    spec.backbone = PluginSpec::new("gaussian-oracle");
    spec.param = PluginSpec::new("x0");
    spec.objective = PluginSpec::new("ndm-elbo-continuous");
    let pipe = build(&spec, &[2]);
    let data = dataset("gaussian");
    let x = data
        .sample(100, Split::Test, &mut Rng::new(3), device())
        .unwrap();
    let exact: Vec<f64> = to_vec(&data.log_density(&x).unwrap().unwrap())
        .iter()
        .map(|l| -l)
        .collect();
    let opts = NllOptions {
        tol: Tolerance {
            rtol: 1e-6,
            atol: 1e-6,
            max_steps: 10_000,
        },
        ..NllOptions::default_for(2)
    };
    let r = ode_nll(&pipe, &x, &opts, &mut Rng::new(1)).unwrap();
    let worst = r
        .nll
        .iter()
        .zip(&exact)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 2e-3, "largest per-example error {worst} nats");
}

fn oracle_pipeline(
    model: &str,
    schedule: Option<PluginSpec>,
    prior: Option<PluginSpec>,
) -> Pipeline {
    let mut spec = preset(model);
    spec.backbone = PluginSpec::new("gaussian-oracle");
    spec.objective = PluginSpec::new("ndm-elbo-continuous");
    if let Some(s) = schedule {
        spec.schedule = s;
    }
    if let Some(p) = prior {
        spec.prior = p;
    }
    build(&spec, &[2])
}

#[test]
fn pc_with_the_oracle_reproduces_the_data_moments_under_ve_and_sub_vp() {
    // VE with sigma_max = 50 (the prior N(0, 50^2) then matches q_1 = N(mu, Sigma + 50^2) closely).
    let mut ve = PluginSpec::new("ve");
    ve.set("sigma_max", "50.0");
    let mut wide = PluginSpec::new("gaussian");
    wide.set("scale", "50.0");
    let reg = registry();
    let solver = reg
        .build_solver(&PluginSpec::new("pc"), &plain_ctx(&reg))
        .unwrap();
    for (name, pipe) in [
        ("ve", oracle_pipeline("score-sde-ve", Some(ve), Some(wide))),
        ("sub-vp", oracle_pipeline("score-sde-subvp", None, None)),
    ] {
        let grid = TimeGrid::for_process(500, Spacing::Uniform, &pipe).unwrap();
        let s = sample(&pipe, solver.as_ref(), &grid, 20_000, &mut Rng::new(4)).unwrap();
        let m = dataset("gaussian").sample_metrics(&s.x).unwrap();
        eprintln!("{name}: {m:?}");
        // Sampling error of the mean ~ 0.009, of the covariance ~ 0.015 (as for VP).
        assert!(m[0].1 < 0.04, "{name}: mean error {}", m[0].1);
        assert!(m[1].1 < 0.08, "{name}: cov error {}", m[1].1);
    }
}

#[test]
fn the_langevin_step_uses_one_for_ve_and_the_vp_rule_for_sub_vp() {
    // a_i = alpha_t^2 / alpha_s^2: 1 for VE; 1 - beta_i = exp(-(B(t) - B(s))) for sub-VP, the VP
    // rule with its own beta (score_sde's sub-VP corrector leaves it out, a known bug).
    let (ve, sub) = (schedule("ve", &[]), schedule("sub-vp", &[]));
    let (t, s) = (0.6, 0.59);
    assert_eq!((ve.point(t).alpha / ve.point(s).alpha).powi(2), 1.0);
    let b = |t: f64| 0.1 * t + 0.5 * 19.9 * t * t;
    let a = (sub.point(t).alpha / sub.point(s).alpha).powi(2);
    assert!((a - (-(b(t) - b(s))).exp()).abs() < 1e-12);
}

#[test]
fn flow_matching_samplers_reach_the_data_and_noisy_sdes_are_refused() {
    let mut spec = preset("fm-ot");
    spec.backbone = PluginSpec::new("gaussian-oracle");
    spec.param = PluginSpec::new("velocity");
    spec.objective = PluginSpec::new("ndm-elbo-continuous");
    let pipe = build(&spec, &[2]);
    let reg = registry();
    let mut em0 = PluginSpec::new("euler-maruyama");
    em0.set("eta", "0.0");
    for (solver, steps) in [
        (PluginSpec::new("heun"), 50),
        (PluginSpec::new("dpmpp-2m"), 50),
        (em0, 200),
        (PluginSpec::new("rk45"), 1),
    ] {
        let sv = reg.build_solver(&solver, &plain_ctx(&reg)).unwrap();
        let grid = TimeGrid::for_process(steps, Spacing::Uniform, &pipe).unwrap();
        let s = sample(&pipe, sv.as_ref(), &grid, 20_000, &mut Rng::new(8)).unwrap();
        let m = dataset("gaussian").sample_metrics(&s.x).unwrap();
        eprintln!("{}: {m:?}", solver.kind);
        assert!(m[0].1 < 0.04 && m[1].1 < 0.08, "{}: {m:?}", solver.kind);
    }
    // Euler-Maruyama with noise would start with infinite noise at alpha = 0: refused in one line.
    let em = reg
        .build_solver(&PluginSpec::new("euler-maruyama"), &plain_ctx(&reg))
        .unwrap();
    let grid = TimeGrid::for_process(10, Spacing::Uniform, &pipe).unwrap();
    let e = sample(&pipe, em.as_ref(), &grid, 4, &mut Rng::new(8))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("euler-maruyama") && e.contains("alpha = 0") && !e.contains('\n'),
        "{e}"
    );
    // Log-SNR spacing has no finite end to space from.
    let e = TimeGrid::for_process(10, Spacing::LogSnr, &pipe)
        .unwrap_err()
        .to_string();
    assert!(e.contains("log-snr") && e.contains("uniform"), "{e}");
}

#[test]
fn flow_matching_refuses_what_cannot_work() {
    let reg = registry();
    let build_err = |spec: &ModelSpec| {
        Pipeline::build(spec, &[2], &reg, device(), 0)
            .unwrap_err()
            .to_string()
    };
    // Noise prediction divides by alpha, which is 0 at t = 1.
    let mut eps = preset("fm-ot");
    eps.param = PluginSpec::new("eps");
    eps.objective = PluginSpec::new("eps-mse");
    let e = build_err(&eps);
    assert!(e.contains("param eps") && e.contains("velocity"), "{e}");
    // cfm regresses the velocity: another parameterization is refused.
    let mut v = preset("fm-ot");
    v.param = PluginSpec::new("v");
    let e = build_err(&v);
    assert!(e.contains("cfm") && e.contains("param velocity"), "{e}");
}

#[test]
fn gaussian_prior_scale_gives_its_density_and_kl() {
    let reg = registry();
    let mut spec = PluginSpec::new("gaussian");
    spec.set("scale", "3.0");
    let prior = reg.build_prior(&spec, &plain_ctx(&reg)).unwrap();
    let z = tensor(&[0.5, -2.0, 4.0, 1.0], &[2, 2]);
    let lp = to_vec(&prior.log_prob(&z).unwrap());
    let norm =
        |v: f64| -0.5 * (v / 3.0).powi(2) - (3.0f64).ln() - 0.5 * (2.0 * std::f64::consts::PI).ln();
    assert!((lp[0] - norm(0.5) - norm(-2.0)).abs() < 1e-5);
    assert!((lp[1] - norm(4.0) - norm(1.0)).abs() < 1e-5);
    // KL(N(m, s^2) || N(0, 9)) per dimension: (m^2 + s^2) / 18 - 1/2 - ln(s / 3).
    let mean = tensor(&[1.0, 0.0], &[1, 2]);
    let std = tensor(&[2.0], &[1]);
    let kl = to_vec(&prior.prior_loss(&mean, &std, &mean).unwrap())[0];
    let want =
        (1.0 + 4.0) / 18.0 - 0.5 - (2.0f64 / 3.0).ln() + 4.0 / 18.0 - 0.5 - (2.0f64 / 3.0).ln();
    assert!((kl - want).abs() < 1e-5, "{kl} vs {want}");
    spec.set("scale", "0.0");
    assert!(reg.build_prior(&spec, &plain_ctx(&reg)).is_err());
}

#[test]
fn blur_is_an_orthonormal_dct_heat_dissipation_with_exact_time_derivative() {
    for n in [2, 7, 28] {
        let c = ndm_transforms::dct_matrix(n);
        for i in 0..n {
            for j in 0..n {
                let dot: f64 = (0..n).map(|k| c[i * n + k] * c[j * n + k]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-12, "n={n} ({i},{j}): {dot}");
            }
        }
    }
    let reg = registry();
    let shape = [2, 8, 6];
    let ctx = ndm_api::registry::BuildCtx {
        shape: &shape,
        ..plain_ctx(&reg)
    };
    let blur = reg.build_transform(&PluginSpec::new("blur"), &ctx).unwrap();
    // dF/dt against a central difference at interior times, shapes, finiteness.
    ndm_api::testing::check_transform(blur.as_ref(), &shape).unwrap();
    let x = Rng::new(5)
        .normal_tensor(&[3, 2, 8, 6], DType::F32, device())
        .unwrap();
    let at = |t: f32| Tensor::new(&[t, t, t], device()).unwrap();
    // F(x, 0) = x.
    let f0 = blur.forward(&x, &at(0.0)).unwrap();
    assert!(max_abs(&(&f0 - &x).unwrap()) < 1e-5);
    // Heat dissipation keeps each channel's mean (frequency (0, 0) has lambda = 0) and damps every
    // other frequency: at t = 1 little is left besides the mean.
    let f1 = blur.forward(&x, &at(1.0)).unwrap();
    let means = |t: &Tensor| t.mean_keepdim(3).unwrap().mean_keepdim(2).unwrap();
    assert!(max_abs(&(means(&f1) - means(&x)).unwrap()) < 1e-5);
    let detail = |t: &Tensor| max_abs(&t.broadcast_sub(&means(t)).unwrap());
    assert!(
        detail(&f1) < 0.05 * detail(&x),
        "{} vs {}",
        detail(&f1),
        detail(&x)
    );
    assert!(blur.identity_at_zero());
    // Flat data is refused in one line that says why.
    let e = reg
        .build_transform(&PluginSpec::new("blur"), &plain_ctx(&reg))
        .unwrap_err()
        .to_string();
    assert!(e.contains("transform.blur") && e.contains("images"), "{e}");
}

#[test]
fn vdm_gamma_is_monotone_with_an_exact_derivative_for_random_weights() {
    for seed in 0..4 {
        let pipe = Pipeline::build(&preset("vdm"), &[2], &registry(), device(), seed).unwrap();
        let s = pipe.schedule.as_ref();
        assert!(s.is_trainable());
        assert_eq!(
            s.variance_trained_vars().len(),
            4,
            "{:?}",
            s.variance_trained_vars()
        );
        // The end points start at VDM's values.
        assert!((s.point(0.0).log_snr - 13.3).abs() < 1e-4);
        assert!((s.point(1.0).log_snr + 5.0).abs() < 1e-4);
        // Monotone, with derivatives that match central differences (the conformance check), in f64.
        ndm_api::testing::check_schedule(s).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let mut prev = f64::NEG_INFINITY;
        for i in 0..=1000 {
            let t = i as f64 / 1000.0;
            let p = s.point(t);
            let (gamma, h) = (-p.log_snr, 1e-5);
            assert!(gamma > prev, "seed {seed}: gamma not increasing at t = {t}");
            prev = gamma;
            if i > 0 && i < 1000 {
                let fd = (s.point(t - h).log_snr - s.point(t + h).log_snr) / (2.0 * h);
                let dgamma = -p.dlog_snr();
                assert!(
                    (dgamma - fd).abs() < 1e-5 * (1.0 + fd.abs()),
                    "seed {seed} t={t}: gamma' {dgamma} vs {fd}"
                );
            }
        }
        // The batch form (the one that trains) agrees with the host form.
        let tt = Tensor::new(&[0.1f32, 0.5, 0.9], device()).unwrap();
        let b = s.batch(&tt).unwrap();
        for (k, t) in [0.1, 0.5, 0.9].into_iter().enumerate() {
            let p = s.point(t);
            let got = to_vec(&b.log_snr)[k];
            assert!(
                (got - p.log_snr).abs() < 1e-3 * (1.0 + p.log_snr.abs()),
                "{got} vs {}",
                p.log_snr
            );
            let got = to_vec(&b.dsigma2)[k];
            assert!(
                (got - p.dsigma2).abs() < 1e-3 * (1.0 + p.dsigma2.abs()),
                "{got} vs {}",
                p.dsigma2
            );
        }
    }
}

#[test]
fn vdm_loss_is_the_ndm_continuous_loss_with_identity_f() {
    // L_diff = 1/2 E_t[gamma'(t) ||eps - epshat||^2] (VDM) and NDM's continuous integrand with the
    // identity transform are the same number, time by time.
    let pipe = build(&preset("vdm"), &[2]);
    let x = dataset("gaussian")
        .sample(6, Split::Train, &mut Rng::new(1), device())
        .unwrap();
    let eps = Rng::new(2)
        .normal_tensor(&[6, 2], DType::F32, device())
        .unwrap();
    let t = Tensor::new(&[0.02f32, 0.2, 0.4, 0.6, 0.8, 0.97], device()).unwrap();
    let ndm = to_vec(
        &ndm_api::elbo::continuous_diff_integrand(&pipe, &x, &Times::read(&t).unwrap(), &eps)
            .unwrap(),
    );
    let sb = pipe.schedule.batch(&t).unwrap();
    let c = pipe.coeffs(&sb).unwrap();
    let z = c.noised(&x, &eps).unwrap();
    let epshat = pipe.network(&NetInput::at(&z, &t, &sb)).unwrap();
    let sq = to_vec(&(eps - epshat).unwrap().sqr().unwrap().sum(1).unwrap());
    for (k, tk) in [0.02, 0.2, 0.4, 0.6, 0.8, 0.97].into_iter().enumerate() {
        let dgamma = -pipe.schedule.point(tk).dlog_snr();
        let vdm = dgamma * sq[k];
        assert!(
            (vdm - ndm[k]).abs() < 2e-3 * (1.0 + vdm.abs()),
            "t={tk}: VDM {vdm} vs NDM {}",
            ndm[k]
        );
    }
}

#[test]
fn vdm_trains_its_end_points_on_the_nelbo_and_its_interior_on_the_variance() {
    let pipe = build(&preset("vdm"), &[2]);
    let x = dataset("gaussian")
        .sample(64, Split::Train, &mut Rng::new(1), device())
        .unwrap();
    let out = pipe.objective.loss(&pipe, &x, &mut Rng::new(2)).unwrap();
    let variance = out
        .variance
        .as_ref()
        .expect("a VDM loss carries the variance term");
    let (g_loss, g_var) = (out.loss.backward().unwrap(), variance.backward().unwrap());
    let norm = |store: &ndm_api::candle_core::backprop::GradStore, name: &str| {
        let (_, v) = pipe.vars().into_iter().find(|(n, _)| n == name).unwrap();
        store
            .get(v.as_tensor())
            .map(|g| {
                g.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .unwrap_or(0.0)
    };
    // The NELBO reaches both end points (through L_prior and L_rec as well as L_diff) ...
    for name in ["schedule.gamma0", "schedule.gamma1"] {
        assert!(norm(&g_loss, name) > 0.0, "no NELBO gradient into {name}");
    }
    // ... and the squared L_diff reaches the interior, which the trainer takes from it.
    for name in pipe.schedule.variance_trained_vars() {
        assert!(
            norm(&g_var, &name) > 0.0,
            "no variance gradient into {name}"
        );
    }
    let mut cfg = registry_file().preset("vdm").unwrap().train.clone();
    cfg.batch_size = 64;
    let data = dataset("gaussian");
    let trainer = ndm_api::train::Trainer::new(&pipe, &cfg).unwrap();
    let mut state = ndm_api::train::TrainState::new(&pipe, 0).unwrap();
    let before: Vec<Vec<f32>> = pipe
        .vars()
        .iter()
        .filter(|(n, _)| n.starts_with("schedule."))
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    trainer.step(&mut state, data.as_ref()).unwrap();
    let after: Vec<Vec<f32>> = pipe
        .vars()
        .iter()
        .filter(|(n, _)| n.starts_with("schedule."))
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    assert_eq!(before.len(), 6);
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(b, a, "a schedule weight did not move");
    }
}

#[test]
fn a_log_snr_time_embedding_stays_finite_where_alpha_is_zero() {
    // Flow matching's log-SNR is -inf at t = 1: the U-Net's log-SNR embedding must not turn it
    // into NaN.
    let mut spec = preset("fm-ot");
    spec.backbone = PluginSpec::new("unet");
    for (k, v) in [
        ("base_channels", "8"),
        ("channel_mults", "[1]"),
        ("attention_resolutions", "[]"),
        ("time_embedding", "\"log-snr\""),
    ] {
        spec.backbone.set(k, v);
    }
    let pipe = build(&spec, &[1, 8, 8]);
    let z = Rng::new(1)
        .normal_tensor(&[2, 1, 8, 8], DType::F32, device())
        .unwrap();
    for t in [1.0, 0.5] {
        let drift = pipe.ode_drift(&z, t).unwrap();
        assert!(
            to_vec(&drift.flatten_all().unwrap())
                .iter()
                .all(|v| v.is_finite()),
            "t = {t}"
        );
    }
}

#[test]
fn with_the_exact_denoiser_the_continuous_nelbo_is_tight_under_ve_sub_vp_and_flow_matching() {
    // The continuous bound with the exact denoiser exceeds the true NLL only by the prior's and
    // the decoder's mismatch, both tiny here: it checks the new schedules' coefficients, VE's
    // scaled prior and flow matching's alpha_1 = 0 end inside the NELBO.
    use ndm_api::elbo::{continuous_nelbo, BoundaryTerms, ImportanceTable, TimeSampling};
    let mut ve = PluginSpec::new("ve");
    ve.set("sigma_max", "50.0");
    let mut wide = PluginSpec::new("gaussian");
    wide.set("scale", "50.0");
    let mut fm = preset("fm-ot");
    fm.backbone = PluginSpec::new("gaussian-oracle");
    fm.objective = PluginSpec::new("ndm-elbo-continuous");
    let data = dataset("gaussian");
    for (name, pipe) in [
        ("ve", oracle_pipeline("score-sde-ve", Some(ve), Some(wide))),
        ("sub-vp", oracle_pipeline("score-sde-subvp", None, None)),
        ("fm-ot", build(&fm, &[2])),
    ] {
        let mut rng = Rng::new(11);
        let x = data.sample(400, Split::Test, &mut rng, device()).unwrap();
        // As `runner eval` samples times: half 1/g^2, half uniform.
        let table = ImportanceTable::defensive(&pipe, 4096, 0.5);
        let terms = continuous_nelbo(
            &pipe,
            &x,
            TimeSampling::Importance,
            Some(&table),
            256,
            BoundaryTerms::Every,
            &mut rng,
        )
        .unwrap();
        let nll = to_vec(&data.log_density(&x).unwrap().unwrap());
        let gaps: Vec<f64> = to_vec(&terms.total().unwrap())
            .iter()
            .zip(&nll)
            .map(|(b, l)| b + l)
            .collect();
        let n = gaps.len() as f64;
        let gap = gaps.iter().sum::<f64>() / n;
        let se = (gaps.iter().map(|g| (g - gap).powi(2)).sum::<f64>() / (n - 1.0) / n).sqrt();
        eprintln!(
            "{name}: NELBO - NLL = {gap:.4} ± {se:.4}; terms {:?}",
            read_terms(&terms.means().unwrap()).unwrap()
        );
        assert!(
            gap > -4.0 * se,
            "{name}: NELBO below the NLL by {gap} ± {se}"
        );
        assert!(gap < 0.05 + 4.0 * se, "{name}: NELBO - NLL = {gap} ± {se}");
    }
}

#[test]
fn blur_applies_every_parameterization_per_frequency() {
    let reg = registry();
    let shape = [1, 8, 8];
    let mut model = preset("blur");
    model.backbone = PluginSpec::new("unet");
    model.backbone.set("base_channels", "8");
    model.backbone.set("channel_mults", "[1]");
    model.backbone.set("attention_resolutions", "[]");
    let dev = device().clone();
    let x = Rng::new(1)
        .normal_tensor(&[2, 1, 8, 8], DType::F32, &dev)
        .unwrap();
    let eps = Rng::new(2)
        .normal_tensor(&[2, 1, 8, 8], DType::F32, &dev)
        .unwrap();
    let t = Tensor::new(&[0.3f32, 0.7], &dev).unwrap();
    // Each parameterization round-trips per frequency: the raw target of (x, eps) gives back x
    // from z = alpha F(x, t) + sigma eps, though F has blurred x's high frequencies to d_min.
    for param in ["eps", "x0", "v", "velocity"] {
        model.param = PluginSpec::new(param);
        let pipe = Pipeline::build(&model, &shape, &reg, &dev, 3).unwrap();
        let sb = pipe.schedule.batch(&t).unwrap();
        let fx = pipe.f(&x, &t).unwrap();
        let z = pipe.coeffs(&sb).unwrap().noised(&fx, &eps).unwrap();
        let raw = pipe.raw_target(&x, &fx, &eps, &t, &sb).unwrap();
        let back = pipe.xhat_from_raw(&raw, &z, &t, &sb).unwrap();
        let err = max_abs(&(&back - &x).unwrap());
        assert!(err < 2e-2, "{param}: xhat is off by {err}");
        if param == "eps" {
            // Noise prediction's target is the noise itself, as without a blur.
            assert!(max_abs(&(&raw - &eps).unwrap()) < 1e-4);
        }
    }
    // For noise prediction that is the paper's xhat = F^{-1}((z - sigma epshat) / alpha): F of it
    // is the estimate of F(x, t) that NDM's rule (`per_frequency = false`) uses as xhat itself.
    model.param = PluginSpec::new("eps");
    let per_freq = Pipeline::build(&model, &shape, &reg, &dev, 3).unwrap();
    model.transform.set("per_frequency", "false");
    let plain = Pipeline::build(&model, &shape, &reg, &dev, 3).unwrap();
    let xhat = |p: &Pipeline| {
        let sb = p.schedule.batch(&t).unwrap();
        p.xhat(&x, &t, &sb).unwrap()
    };
    let (xf, xp) = (xhat(&per_freq), xhat(&plain));
    let back = per_freq.f(&xf, &t).unwrap();
    assert!(max_abs(&(&back - &xp).unwrap()) < 1e-3 * (1.0 + max_abs(&xp)));
    assert!(max_abs(&(&xf - &xp).unwrap()) > 1e-2);
}
