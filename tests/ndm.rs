//! Neural Diffusion Models: learned transform, continuous NELBO, reverse SDE and PC sampling.

mod common;

use common::*;
use ndm_api::candle_core::{Result, Tensor};
use ndm_api::elbo::{
    continuous_diff, continuous_diff_integrand, continuous_nelbo, discrete_kl, BoundaryTerms,
    ImportanceTable, TimeSampling,
};
use ndm_api::sample::sample;
use ndm_api::transform::FD_STEP;
use ndm_api::Times;
use ndm_api::{ModelSpec, Pipeline, PluginSpec, ReverseProcess, Rng, Split, TimeGrid, Transform};

fn preset(name: &str) -> ModelSpec {
    registry_file().preset(name).unwrap().model.clone()
}

/// `F(x, t) = x cos(3t) + x^2 sin(2t)`, with `dF/dt = -3 x sin(3t) + 2 x^2 cos(2t)`.
#[derive(Debug)]
struct Wavy;

impl Transform for Wavy {
    fn forward(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let t = t.unsqueeze(1)?;
        x.broadcast_mul(&(t.clone() * 3.0)?.cos()?)? + x.sqr()?.broadcast_mul(&(t * 2.0)?.sin()?)?
    }
}

/// `dF/dt` at `t` by [`FD_STEP`] finite differences, written out in f64 from the documentation
/// of `central_difference_dt`: the central difference where `t +- h` lies in `[0, 1]`, else the
/// derivative at `t` of the quadratic through `lo, lo + h, lo + 2h`, `lo = clamp(t - h, 0, 1 - 2h)`.
fn fd_scheme(f: impl Fn(f64) -> f64, t: f64) -> f64 {
    let h = FD_STEP;
    if t - h >= 0.0 && t + h <= 1.0 {
        return (f(t + h) - f(t - h)) / (2.0 * h);
    }
    let lo = (t - h).clamp(0.0, 1.0 - 2.0 * h);
    let (a, b, c) = (f(lo), f(lo + h), f(lo + 2.0 * h));
    // Newton form: q(s) = a + (b - a) u + (c - 2b + a) u (u - 1) / 2 with u = (s - lo) / h.
    let u = (t - lo) / h;
    ((b - a) + (c - 2.0 * b + a) * (u - 0.5)) / h
}

#[test]
fn time_derivative_by_central_difference_matches_the_closed_form() {
    let x = tensor(&[0.5, -1.3, 2.0, 0.1], &[2, 2]);
    for (t, tol) in [
        (0.3f64, 2e-3),
        (0.7, 2e-3),
        (0.0, 2e-3),
        (1.0, 2e-3),
        (0.002, 2e-3),
    ] {
        let tt = Tensor::new(&[t as f32, t as f32], device()).unwrap();
        let fd = to_vec(&Wavy.time_derivative(&x, &tt).unwrap());
        let t = t as f32 as f64;
        for (i, xv) in to_vec(&x).iter().enumerate() {
            let exact = -3.0 * xv * (3.0 * t).sin() + 2.0 * xv * xv * (2.0 * t).cos();
            assert!(
                (fd[i] - exact).abs() < tol * (1.0 + exact.abs()),
                "t={t}: {} vs {exact}",
                fd[i]
            );
            // The documented scheme, in f64 on the closed form of F (no tensors, no
            // `central_difference_dt`): agrees up to f32 rounding, about 1e-7 |F| / h (measured
            // at most 6e-5), below the truncation error the closed-form check allows (up to 3e-4).
            let scheme = fd_scheme(|s| xv * (3.0 * s).cos() + xv * xv * (2.0 * s).sin(), t);
            assert!(
                (fd[i] - scheme).abs() < 3e-5 * (1.0 + xv * xv),
                "t={t}: {} vs the f64 scheme {scheme}",
                fd[i]
            );
        }
    }
}

/// `1/2 int_0^1 integrand dt` by an importance-weighted midpoint rule on `m` cells (same noise).
fn continuous_l_diff_quadrature(pipe: &Pipeline, x: &Tensor, eps: &Tensor, m: usize) -> Vec<f64> {
    let table = ImportanceTable::new(pipe, 4096);
    let b = x.dim(0).unwrap();
    let mut acc = vec![0.0; b];
    for j in 0..m {
        let (t, w) = table.quantile((j as f64 + 0.5) / m as f64);
        let tt = Tensor::full(t as f32, b, device()).unwrap();
        let v =
            to_vec(&continuous_diff_integrand(pipe, x, &Times::read(&tt).unwrap(), eps).unwrap());
        for (a, vi) in acc.iter_mut().zip(v) {
            *a += 0.5 * w * vi / m as f64;
        }
    }
    acc
}

#[test]
fn discrete_l_diff_approaches_the_continuous_one_as_t_grows() {
    // A fixed nonlinear F (the learned transform at its seeded initial weights) and a denoiser
    // that is right as t -> 0 (the Gaussian oracle), so the integrand stays bounded near t = 0
    // where VP's log-SNR is steepest.
    let x = tensor(&[0.5, -1.3, 1.7, 0.2, -0.4, 0.9], &[3, 2]);
    let eps = tensor(&[0.3, -0.2, 1.1, 0.5, -0.7, 0.05], &[3, 2]);
    let mut spec = preset("ndm-discrete-10");
    spec.backbone = PluginSpec::new("gaussian-oracle");
    let cont = {
        spec.steps = None;
        spec.objective = PluginSpec::new("ndm-elbo-continuous");
        continuous_l_diff_quadrature(&build(&spec, &[2]), &x, &eps, 4000)
    };
    let mut errs = vec![];
    for t_total in [10usize, 100, 1000] {
        spec.steps = Some(t_total);
        spec.objective = PluginSpec::new("ndm-elbo-discrete");
        let pipe = build(&spec, &[2]);
        let mut sum = vec![0.0; 3];
        for i in 1..=t_total {
            let kl = to_vec(&discrete_kl(&pipe, &x, &[i; 3], t_total, &eps).unwrap());
            for (s, k) in sum.iter_mut().zip(kl) {
                *s += k;
            }
        }
        let rel: f64 = sum
            .iter()
            .zip(&cont)
            .map(|(d, c)| ((d - c) / c).abs())
            .fold(0.0, f64::max);
        eprintln!("T = {t_total}: discrete {sum:?} continuous {cont:?} max rel err {rel:.4}");
        errs.push(rel);
    }
    // Measured: 236, 2.7, 0.14 (max relative error): first order in 1/T or better; the constant is
    // large because VP's log-SNR is steepest at t = 0, where the first steps are coarse.
    assert!(
        errs[1] < errs[0] / 5.0 && errs[2] < errs[1] / 5.0,
        "{errs:?}"
    );
    assert!(errs[2] < 0.25, "{errs:?}");
}

#[test]
fn identity_continuous_loss_is_the_vdm_loss() {
    let mut spec = preset("ddpm");
    spec.steps = None;
    spec.objective = PluginSpec::new("ndm-elbo-continuous");
    spec.schedule.set("form", "\"continuous\"");
    let pipe = build(&spec, &[2]);
    let x = tensor(&[0.5, -1.3, 1.7, 0.2], &[2, 2]);
    let eps = tensor(&[0.3, -0.2, 1.1, 0.5], &[2, 2]);
    for t in [0.01, 0.3, 0.9] {
        let tt = Tensor::full(t as f32, 2, device()).unwrap();
        let ours = to_vec(
            &continuous_diff_integrand(&pipe, &x, &Times::read(&tt).unwrap(), &eps).unwrap(),
        );
        // -dSNR/dt ||x - xhat||^2 computed from scratch.
        let p = pipe.schedule_point(t);
        let z = ((&x * p.alpha).unwrap() + (&eps * p.sigma).unwrap()).unwrap();
        let xhat = pipe.predict_x(&z, t).unwrap();
        let se: Vec<f64> = to_vec(&(&x - &xhat).unwrap().sqr().unwrap().sum(1).unwrap());
        for (o, s) in ours.iter().zip(se) {
            let vdm = -p.dsnr() * s;
            assert!((o - vdm).abs() < 1e-3 * vdm.abs(), "t={t}: {o} vs {vdm}");
        }
    }
}

#[test]
fn identity_reverse_drift_is_the_vp_reverse_sde() {
    let mut spec = preset("ddpm");
    spec.schedule.set("form", "\"continuous\"");
    let pipe = build(&spec, &[2]);
    let z = tensor(&[0.5, -1.3, 1.7, 0.2], &[2, 2]);
    for t in [0.05, 0.5, 0.95] {
        let xhat = pipe.predict_x(&z, t).unwrap();
        let (drift, g) = pipe.reverse_sde(&z, &xhat, t, 1.0).unwrap();
        let p = pipe.schedule_point(t);
        let beta = -2.0 * p.dlog_alpha; // VP: d log alpha / dt = -beta / 2
                                        // The identity's score in closed form, (alpha xhat - z) / sigma^2, not the pipeline's.
        let score = ((&xhat * p.alpha).unwrap() - &z)
            .unwrap()
            .affine(1.0 / (p.sigma * p.sigma), 0.0)
            .unwrap();
        let vp = ((&z * (-0.5 * beta)).unwrap() - (&score * beta).unwrap()).unwrap();
        for (a, b) in to_vec(&drift).iter().zip(to_vec(&vp)) {
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "t={t}: {a} vs {b}");
        }
        assert!(
            (g - beta.sqrt()).abs() < 1e-9 * beta.sqrt(),
            "t={t}: g {g} vs {}",
            beta.sqrt()
        );
        // eta = 0: the probability-flow ODE, -beta/2 (z + score).
        let (ode, g0) = pipe.reverse_sde(&z, &xhat, t, 0.0).unwrap();
        assert_eq!(g0, 0.0);
        let pf = ((&z + &score).unwrap() * (-0.5 * beta)).unwrap();
        for (a, b) in to_vec(&ode).iter().zip(to_vec(&pf)) {
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "t={t}: {a} vs {b}");
        }
    }
}

#[test]
fn importance_sampled_and_uniform_estimators_agree() {
    let pipe = oracle_continuous();
    let data = dataset("gaussian");
    let x = data
        .sample(1, Split::Test, &mut Rng::new(2), device())
        .unwrap();
    let xs = x.broadcast_as((20_000, 2)).unwrap().contiguous().unwrap();
    let table = ImportanceTable::new(&pipe, 4096);
    let stats = |rule| {
        let v =
            to_vec(&continuous_diff(&pipe, &xs, rule, Some(&table), 1, &mut Rng::new(9)).unwrap());
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|a| (a - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
        (m, (var / v.len() as f64).sqrt(), var.sqrt())
    };
    let (mu, su, sdu) = stats(TimeSampling::Uniform);
    let (mi, si, sdi) = stats(TimeSampling::Importance);
    eprintln!(
        "uniform {mu:.4} ± {su:.4} (sd {sdu:.3}); importance {mi:.4} ± {si:.4} (sd {sdi:.3})"
    );
    assert!(
        (mu - mi).abs() < 4.0 * (su * su + si * si).sqrt(),
        "{mu} vs {mi}"
    );
    assert!(
        sdi < sdu,
        "importance sampling should lower the variance: {sdi} vs {sdu}"
    );
}

#[test]
fn pc_sampler_with_the_oracle_reproduces_the_data_moments() {
    let pipe = oracle_continuous();
    let reg = registry();
    let data = dataset("gaussian");
    let solver = reg
        .build_solver(&PluginSpec::new("pc"), &plain_ctx(&reg))
        .unwrap();
    let grid = TimeGrid::new(500, ndm_api::Spacing::Uniform, None, 0.0, 1.0).unwrap();
    let n = 20_000;
    let s = sample(&pipe, solver.as_ref(), &grid, n, &mut Rng::new(4)).unwrap();
    assert_eq!(s.nfe, 500 * 2 + 1);
    let m = data.sample_metrics(&s.x).unwrap();
    eprintln!("{m:?}");
    // Sampling error of the mean ~ sqrt(1.8 / n) = 0.009, of the covariance ~ 0.015.
    assert!(m[0].1 < 0.04, "mean error {}", m[0].1);
    assert!(m[1].1 < 0.08, "cov error {}", m[1].1);
}

#[test]
fn eps_mse_refuses_a_learned_transform() {
    let mut spec = preset("ndm");
    spec.objective = PluginSpec::new("eps-mse");
    let e = Pipeline::build(&spec, &[2], &registry(), device(), 0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("eps-mse") && e.contains("collapsing to 0"),
        "{e}"
    );
}

/// `boundary_fraction` below 1: `L_prior` and `L_rec` on `ceil(share B)` random examples of the
/// batch, weighted by `B / m`, zero elsewhere; over many draws their batch means agree with
/// evaluating every example, and a conditional model evaluates the drawn rows with their classes.
#[test]
fn boundary_terms_on_a_share_of_the_batch_are_unbiased() {
    let data = dataset("checkerboard");
    let x = data
        .sample(8, Split::Train, &mut Rng::new(3), device())
        .unwrap();
    let pipe = build(&preset("ndm"), &[2]);
    let nonzero = |t: &Tensor| to_vec(t).iter().filter(|v| **v != 0.0).count();
    let draws = 400;
    // Per draw: the batch means of L_prior and L_rec, evaluating every example and a quarter.
    let mut means = [[vec![], vec![]], [vec![], vec![]]];
    let (mut every_rng, mut share_rng) = (Rng::new(5), Rng::new(6));
    for _ in 0..draws {
        for (k, (boundary, rng)) in [
            (BoundaryTerms::Every, &mut every_rng),
            (BoundaryTerms::Share(0.25), &mut share_rng),
        ]
        .into_iter()
        .enumerate()
        {
            let terms =
                continuous_nelbo(&pipe, &x, TimeSampling::Uniform, None, 1, boundary, rng).unwrap();
            let rows = if k == 0 { 8 } else { 2 };
            assert_eq!(nonzero(&terms.l_prior), rows);
            assert_eq!(nonzero(&terms.l_rec), rows);
            assert_eq!(nonzero(&terms.l_diff), 8);
            for (j, t) in [&terms.l_prior, &terms.l_rec].into_iter().enumerate() {
                means[k][j].push(to_vec(t).iter().sum::<f64>() / 8.0);
            }
        }
    }
    let stats = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|a| (a - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
        (m, var / v.len() as f64)
    };
    for (j, name) in ["l_prior", "l_rec"].into_iter().enumerate() {
        let ((me, ve), (ms, vs)) = (stats(&means[0][j]), stats(&means[1][j]));
        eprintln!(
            "{name}: every {me:.5} ± {:.5}, a quarter {ms:.5} ± {:.5}",
            ve.sqrt(),
            vs.sqrt()
        );
        assert!(
            (me - ms).abs() < 4.0 * (ve + vs).sqrt(),
            "{name}: {me} vs {ms}"
        );
    }

    // A conditional model: the drawn rows' classes go with them (a network call on 2 of the 8
    // conditioned examples fails otherwise).
    let mut spec = preset("ndm-cond");
    spec.objective.set("boundary_fraction", "0.25");
    spec.classes = 2;
    let pipe = build(&spec, &[2]);
    let class = Tensor::from_vec((0..8u32).map(|i| i % 2).collect(), 8, device()).unwrap();
    let _cond = pipe.conditioned(Some(class));
    let out = pipe.objective.loss(&pipe, &x, &mut Rng::new(7)).unwrap();
    assert!(out.loss.to_scalar::<f32>().unwrap().is_finite());
}

#[test]
fn boundary_fraction_outside_zero_to_one_is_refused() {
    let reg = registry();
    for bad in ["0.0", "1.5", "-0.25", "nan"] {
        let mut spec = preset("ndm");
        spec.objective.set("boundary_fraction", bad);
        let err = Pipeline::build(&spec, &[2], &reg, device(), 0)
            .err()
            .unwrap_or_else(|| panic!("boundary_fraction = {bad} was accepted"))
            .to_string();
        assert!(err.contains("boundary_fraction must be in (0, 1]"), "{err}");
    }
}

#[test]
fn nelbo_gradients_reach_both_the_denoiser_and_the_transform() {
    let data = dataset("checkerboard");
    for name in ["ndm", "ndm-discrete-10"] {
        let pipe = build(&preset(name), &[2]);
        let x = data
            .sample(64, Split::Train, &mut Rng::new(1), device())
            .unwrap();
        let out = pipe.objective.loss(&pipe, &x, &mut Rng::new(2)).unwrap();
        let grads = out.loss.backward().unwrap();
        for prefix in ["backbone.", "transform.net."] {
            let norm: f64 = pipe
                .vars()
                .iter()
                .filter(|(n, _)| n.starts_with(prefix))
                .filter_map(|(_, v)| grads.get(v.as_tensor()))
                .map(|g| {
                    g.sqr()
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap() as f64
                })
                .sum();
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{name}: no gradient into {prefix}"
            );
        }
        let names: Vec<String> = out.terms.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(names, ["nelbo", "l_prior", "l_diff", "l_rec"]);
    }
}

#[test]
fn reverse_process_outputs_carry_no_autograd_history() {
    // With a learned F, a tracked posterior mean chained every solver step's graph to the next:
    // sampling 10,000 points slowed to a crawl and was killed for memory.
    let pipe = build(&preset("ndm"), &[2]);
    let z = tensor(&[0.5, -1.3, 1.7, 0.2], &[2, 2]);
    let xhat = pipe.predict_x(&z, 0.5).unwrap();
    assert!(!xhat.track_op());
    assert!(!pipe
        .posterior(&z, &xhat, 0.5, 0.4, 1.0)
        .unwrap()
        .mean
        .track_op());
    assert!(!pipe.score(&z, &xhat, 0.5).unwrap().track_op());
    assert!(!pipe.reverse_sde(&z, &xhat, 0.5, 1.0).unwrap().0.track_op());
}

/// NDM's `dF/dt` by forward mode through the MLP (the default) against the central difference
/// (`transform.time_derivative = "central-difference"`): the same weights give the same `F`, a
/// derivative equal to the difference's to its truncation error, and the same continuous
/// integrand.
#[test]
fn forward_mode_time_derivative_matches_the_central_difference() {
    let spec = preset("ndm");
    let mut fd_spec = spec.clone();
    fd_spec
        .transform
        .set("time_derivative", "\"central-difference\"");
    let (fm, fd) = (build(&spec, &[2]), build(&fd_spec, &[2]));
    let x = Rng::new(2)
        .normal_tensor(&[64, 2], ndm_api::candle_core::DType::F32, device())
        .unwrap();
    let ts: Vec<f32> = (0..64).map(|i| i as f32 / 63.0).collect();
    let t = Tensor::new(ts.as_slice(), device()).unwrap();
    let (f1, d1) = fm.f_and_dot(&x, &t).unwrap();
    let (f2, d2) = fd.f_and_dot(&x, &t).unwrap();
    assert_eq!(to_vec(&f1), to_vec(&f2));
    let (d1, d2) = (to_vec(&d1.unwrap()), to_vec(&d2.unwrap()));
    let scale = d2.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let err = d1
        .iter()
        .zip(&d2)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        scale > 1e-3 && err < 1e-3 * (1.0 + scale),
        "error {err}, scale {scale}"
    );
    assert_eq!(to_vec(&fm.f_dot(&x, &t).unwrap()), d1);
    let eps = Rng::new(3)
        .normal_tensor(&[64, 2], ndm_api::candle_core::DType::F32, device())
        .unwrap();
    let t_mid = t.affine(0.9, 0.05).unwrap();
    let a =
        to_vec(&continuous_diff_integrand(&fm, &x, &Times::read(&t_mid).unwrap(), &eps).unwrap());
    let b =
        to_vec(&continuous_diff_integrand(&fd, &x, &Times::read(&t_mid).unwrap(), &eps).unwrap());
    for (u, v) in a.iter().zip(&b) {
        assert!((u - v).abs() < 1e-3 * (1.0 + v.abs()), "{u} vs {v}");
    }
}
