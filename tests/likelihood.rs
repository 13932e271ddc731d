//! The probability-flow ODE: likelihood, trace estimators and fast solvers against exact answers.

mod common;

use common::*;
use ndm_api::candle_core::{DType, Tensor};
use ndm_api::likelihood::{divergence, ode_nll, NllOptions, Trace};
use ndm_api::ode::Tolerance;
use ndm_api::sample::sample;
use ndm_api::{PluginSpec, ReverseProcess, Rng, Spacing, Split, TimeGrid};

#[test]
fn ode_nll_with_the_oracle_is_the_exact_density() {
    let pipe = oracle_continuous();
    let data = dataset("gaussian");
    let x = data
        .sample(200, Split::Test, &mut Rng::new(3), device())
        .unwrap();
    let exact: Vec<f64> = to_vec(&data.log_density(&x).unwrap().unwrap())
        .iter()
        .map(|l| -l)
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    // The ODE's density at t = 0 is the data blurred by N(0, (sigma_0 / alpha_0)^2 I): exactly
    // Gaussian too, so every example can be checked against it.
    let p0 = pipe.schedule_point(0.0);
    let s2 = (p0.sigma / p0.alpha).powi(2);
    let blurred = ndm_api::linalg::GaussianModel::new(
        vec![0.5, -0.3],
        vec![vec![1.0 + s2, 0.6], vec![0.6, 0.8 + s2]],
    )
    .unwrap();
    let xs = x.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    let exact_blurred: Vec<f64> = xs.iter().map(|q| -blurred.log_density(q)).collect();
    // Tight enough that the solve's error (about 3e-6 nats/dim, the f32 floor; 1.6e-5 at the
    // default 1e-5) is well below the change of variables' `-D log alpha_0` term, which is
    // -log(alpha_0) = 5e-5 nats/dim here: the checks below must see that term.
    let opts = NllOptions {
        tol: Tolerance {
            rtol: 1e-7,
            atol: 1e-7,
            max_steps: 10_000,
        },
        ..NllOptions::default_for(2)
    };
    let r = ode_nll(&pipe, &x, &opts, &mut Rng::new(1)).unwrap();
    // The flow carries the blurred data q_0 onto q_1 = N(alpha_1 mu, alpha_1^2 Sigma + sigma_1^2 I),
    // not exactly onto the prior N(0, I): per example the model's NLL is the blurred data's plus
    // log q_1(z_end) - log N(z_end; 0, I).
    let p1 = pipe.schedule_point(1.0);
    let (a1, s1) = (p1.alpha, p1.sigma * p1.sigma);
    let q1 = ndm_api::linalg::GaussianModel::new(
        vec![0.5 * a1, -0.3 * a1],
        vec![
            vec![a1 * a1 + s1, 0.6 * a1 * a1],
            vec![0.6 * a1 * a1, 0.8 * a1 * a1 + s1],
        ],
    )
    .unwrap();
    let std_normal =
        ndm_api::linalg::GaussianModel::new(vec![0.0, 0.0], vec![vec![1.0, 0.0], vec![0.0, 1.0]])
            .unwrap();
    let ends = r
        .z_end
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    let model_exact: Vec<f64> = exact_blurred
        .iter()
        .zip(&ends)
        .map(|(e, z)| e + q1.log_density(z) - std_normal.log_density(z))
        .collect();
    let worst = r
        .nll
        .iter()
        .zip(&model_exact)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
        / 2.0;
    // The signed mean error: solver errors of either sign average out, a missing term does not.
    let bias = r
        .nll
        .iter()
        .zip(&model_exact)
        .map(|(a, b)| a - b)
        .sum::<f64>()
        / r.nll.len() as f64
        / 2.0;
    let mean_gap = (mean(&r.nll) - mean(&exact)).abs() / 2.0;
    eprintln!(
        "exact trace: mean NLL {:.5} vs data {:.5} (|gap| {mean_gap:.1e} nats/dim); vs the exact model density: worst example {worst:.1e}, mean {bias:.1e} nats/dim; {:?}",
        mean(&r.nll),
        mean(&exact),
        r.stats
    );
    let log_alpha0 = p0.alpha.ln();
    assert!(
        log_alpha0 < -4e-5,
        "alpha_0 = {}: the test needs -log alpha_0 well above its tolerances",
        p0.alpha
    );
    assert!(
        worst < 1e-5,
        "worst per-dimension error {worst} against the exact model density (-log alpha_0 = {})",
        -log_alpha0
    );
    assert!(
        bias.abs() < 2e-6,
        "mean per-dimension error {bias} against the exact model density (-log alpha_0 = {})",
        -log_alpha0
    );
    assert!(
        mean_gap < 1e-3,
        "mean NLL differs from the data's by {mean_gap} nats per dimension"
    );
    // Hutchinson, 8 probes per example: unbiased, so the mean over examples agrees too.
    for trace in [Trace::Rademacher, Trace::Gaussian] {
        let opts = NllOptions {
            trace,
            probes: 8,
            ..NllOptions::default_for(2)
        };
        let h = ode_nll(&pipe, &x, &opts, &mut Rng::new(2)).unwrap();
        let diffs: Vec<f64> = h.nll.iter().zip(&r.nll).map(|(a, b)| a - b).collect();
        let m = mean(&diffs);
        let se = (diffs.iter().map(|d| (d - m).powi(2)).sum::<f64>()
            / (diffs.len() - 1) as f64
            / diffs.len() as f64)
            .sqrt();
        eprintln!(
            "{trace:?}: mean NLL {:.5}, mean diff to exact trace {m:.2e} ± {se:.2e}",
            mean(&h.nll)
        );
        assert!(m.abs() / 2.0 < 1e-3 + 4.0 * se, "{trace:?}: {m} ± {se}");
    }
}

#[test]
fn hutchinson_trace_agrees_with_the_exact_trace_in_expectation() {
    let pipe = build(&registry_file().preset("ndm").unwrap().model, &[2]);
    let z = tensor(&[0.3, -0.7], &[1, 2]);
    let (_, exact) = divergence(&pipe, &z, 0.4, Trace::Exact, None).unwrap();
    let exact = to_vec(&exact)[0];
    let n = 4000;
    let zs = z.broadcast_as((n, 2)).unwrap().contiguous().unwrap();
    let mut rng = Rng::new(8);
    for trace in [Trace::Rademacher, Trace::Gaussian] {
        let v = match trace {
            Trace::Rademacher => rng
                .rademacher_tensor(&[n, 2], DType::F32, device())
                .unwrap(),
            _ => rng.normal_tensor(&[n, 2], DType::F32, device()).unwrap(),
        };
        let (_, est) = divergence(&pipe, &zs, 0.4, trace, Some(&v)).unwrap();
        let est = to_vec(&est);
        let m = est.iter().sum::<f64>() / n as f64;
        let se =
            (est.iter().map(|e| (e - m).powi(2)).sum::<f64>() / (n - 1) as f64 / n as f64).sqrt();
        eprintln!("{trace:?}: {m:.4} ± {se:.4} vs exact {exact:.4}");
        assert!(
            (m - exact).abs() < 4.0 * se + 1e-4,
            "{trace:?}: {m} ± {se} vs {exact}"
        );
    }
}

#[test]
fn dpmpp_2m_matches_a_hand_computed_reference() {
    let pipe = oracle_continuous();
    let reg = registry();
    let solver = reg
        .build_solver(&PluginSpec::new("dpmpp-2m"), &plain_ctx(&reg))
        .unwrap();
    let grid = TimeGrid::from_times(vec![1.0, 0.6, 0.25, 0.0]).unwrap();
    let z0 = tensor(&[0.9, -1.1, 0.2, 0.4], &[2, 2]);
    let out = solver
        .sample(&pipe, z0.clone(), &grid, &mut Rng::new(0))
        .unwrap();
    assert_eq!(out.nfe, 3);
    // By hand: l = log(alpha / sigma), h = l_s - l_t,
    // z_s = (sigma_s / sigma_t) z_t + alpha_s (1 - e^-h) D,
    // D = xhat_t on the first and last step, (1 + 1/2r) xhat_t - 1/2r xhat_prev with r = h_prev / h otherwise.
    let l = |t: f64| {
        let p = pipe.schedule_point(t);
        (p.alpha / p.sigma).ln()
    };
    let mut z = to_vec(&z0);
    let mut prev: Option<(Vec<f64>, f64)> = None;
    for (k, (t, s)) in [(1.0, 0.6), (0.6, 0.25), (0.25, 0.0)]
        .into_iter()
        .enumerate()
    {
        let xhat = to_vec(&pipe.predict_x(&tensor(&z, &[2, 2]), t).unwrap());
        let h = l(s) - l(t);
        let d: Vec<f64> = match (&prev, k) {
            (Some((xp, hp)), 1) => {
                let r = hp / h;
                xhat.iter()
                    .zip(xp)
                    .map(|(a, b)| (1.0 + 0.5 / r) * a - 0.5 / r * b)
                    .collect()
            }
            _ => xhat.clone(),
        };
        let (ps, pt) = (pipe.schedule_point(s), pipe.schedule_point(t));
        z = z
            .iter()
            .zip(&d)
            .map(|(zi, di)| ps.sigma / pt.sigma * zi + ps.alpha * (1.0 - (-h).exp()) * di)
            .collect();
        prev = Some((xhat, h));
    }
    for (a, b) in to_vec(&out.z).iter().zip(&z) {
        assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

#[test]
fn log_snr_and_karras_grids_are_even_in_their_variable() {
    let pipe = oracle_continuous();
    let g = TimeGrid::for_process(8, Spacing::LogSnr, &pipe).unwrap();
    let lam: Vec<f64> = g
        .times()
        .iter()
        .map(|&t| pipe.schedule_point(t).log_snr)
        .collect();
    let steps: Vec<f64> = lam.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        steps
            .iter()
            .all(|d| (d - steps[0]).abs() < 1e-6 * steps[0].abs()),
        "{steps:?}"
    );
    let g = TimeGrid::for_process(8, Spacing::Karras(7.0), &pipe).unwrap();
    let lev: Vec<f64> = g
        .times()
        .iter()
        .map(|&t| (-pipe.schedule_point(t).log_snr / 14.0).exp())
        .collect();
    let steps: Vec<f64> = lev.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        steps
            .iter()
            .all(|d| (d - steps[0]).abs() < 1e-6 * steps[0].abs()),
        "{steps:?}"
    );
    let discrete = build(&ddpm_oracle(), &[2]);
    assert!(TimeGrid::for_process(8, Spacing::LogSnr, &discrete).is_err());
}

#[test]
fn rk45_sampling_with_the_oracle_reproduces_the_data_moments() {
    let pipe = oracle_continuous();
    let reg = registry();
    let solver = reg
        .build_solver(&PluginSpec::new("rk45"), &plain_ctx(&reg))
        .unwrap();
    let grid = TimeGrid::for_process(1, Spacing::Uniform, &pipe).unwrap();
    let s = sample(&pipe, solver.as_ref(), &grid, 20_000, &mut Rng::new(6)).unwrap();
    let m = dataset("gaussian").sample_metrics(&s.x).unwrap();
    eprintln!("rk45: NFE {}, {m:?}", s.nfe);
    assert!(m[0].1 < 0.04 && m[1].1 < 0.08, "{m:?}");
    let _ = Tensor::zeros(1, DType::F32, device()).unwrap();
}

#[test]
fn rk45_out_of_steps_says_so_and_names_its_setting() {
    let pipe = oracle_continuous();
    let reg = registry();
    let mut spec = PluginSpec::new("rk45");
    spec.set("max_steps", "2");
    let solver = reg.build_solver(&spec, &plain_ctx(&reg)).unwrap();
    let grid = TimeGrid::for_process(1, Spacing::Uniform, &pipe).unwrap();
    let e = sample(&pipe, solver.as_ref(), &grid, 4, &mut Rng::new(6)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with("rk45 reached its limit of 2 steps at t = ")
            && msg.ends_with("raise solver.max_steps or loosen rtol/atol"),
        "{msg}"
    );
    assert!(!msg.contains("non-finite"), "{msg}");
    // The same solve with the default limit reaches t_min.
    let solver = reg
        .build_solver(&PluginSpec::new("rk45"), &plain_ctx(&reg))
        .unwrap();
    assert!(sample(&pipe, solver.as_ref(), &grid, 4, &mut Rng::new(6)).is_ok());
}
