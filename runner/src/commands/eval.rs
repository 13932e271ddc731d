//! `runner eval`: the NELBO of a trained run and, on request, its ODE NLL, printed and written to
//! `eval.json`.

use crate::cli::EvalArgs;
use crate::env::Env;
use anyhow::{bail, Result};
use ndm_api::checkpoint::{write_text, RunDir};
use ndm_api::eval::{evaluate_nelbo, evaluate_ode_nll};
use ndm_api::likelihood::{NllOptions, Trace};
use ndm_api::{Dataset, Pipeline, Rng};
use serde_json::{json, Value};
use std::time::Instant;

/// Examples per batch of the NELBO and of the ODE solves.
const EVAL_BATCH: usize = 500;

fn entropy_note(data: &dyn Dataset) -> String {
    data.entropy()
        .map(|h| format!(" (data entropy {h:.4} nats)"))
        .unwrap_or_default()
}

/// The NELBO on `n` held-out examples, printed; returns its JSON.
pub fn nelbo(pipe: &Pipeline, data: &dyn Dataset, n: usize, seed: u64) -> Result<Value> {
    let t0 = Instant::now();
    let r = evaluate_nelbo(pipe, data, n, EVAL_BATCH, &mut Rng::derived(seed, "eval"))?;
    println!("{r}{}", entropy_note(data));
    let mut v = serde_json::to_value(&r)?;
    v["seconds"] = json!(t0.elapsed().as_secs_f64());
    if let Some(h) = data.entropy() {
        v["data_entropy_nats"] = json!(h);
    }
    Ok(v)
}

fn nll(pipe: &Pipeline, data: &dyn Dataset, a: &EvalArgs) -> Result<Value> {
    let mut opts = NllOptions::default_for(pipe.data_dims());
    opts.trace = match a.trace.as_str() {
        "auto" => opts.trace,
        "exact" => Trace::Exact,
        "rademacher" => Trace::Rademacher,
        "gaussian" => Trace::Gaussian,
        other => bail!("unknown --trace `{other}`; known: auto, exact, rademacher, gaussian"),
    };
    opts.probes = a.probes;
    opts.tol.rtol = a.rtol;
    opts.tol.atol = a.atol;
    let n = a
        .examples
        .unwrap_or(crate::cli::DefaultCounts::for_shape(&pipe.data_shape).eval_examples);
    ode_nll(pipe, data, n, &opts, a.seed)
}

/// The ODE NLL on `n` held-out examples with `opts`, printed; returns its JSON.
pub fn ode_nll(
    pipe: &Pipeline,
    data: &dyn Dataset,
    n: usize,
    opts: &NllOptions,
    seed: u64,
) -> Result<Value> {
    let t0 = Instant::now();
    let mut rng = Rng::derived(seed, "nll");
    let r = evaluate_ode_nll(pipe, data, n, EVAL_BATCH, opts, &mut rng)?;
    println!("{r}{}", entropy_note(data));
    let mut v = serde_json::to_value(&r)?;
    v["seconds"] = json!(t0.elapsed().as_secs_f64());
    Ok(v)
}

/// A learned schedule's `gamma(t) = -log-SNR` at initialisation (grey) and after training (blue):
/// `gamma.png`, with the numbers in `gamma.csv` (`t,initial,trained`). Returns the PNG's name.
fn schedule_plot(init: &Pipeline, trained: &Pipeline, dir: &std::path::Path) -> Result<String> {
    let (t_min, t_end) = (trained.t_min(), trained.t_end());
    let ts: Vec<f64> = (0..=200)
        .map(|i| t_min + (t_end - t_min) * i as f64 / 200.0)
        .collect();
    let gamma = |p: &Pipeline| -> Vec<(f64, f64)> {
        ts.iter()
            .map(|&t| (t, -p.schedule.point(t).log_snr))
            .collect()
    };
    let (g0, g1) = (gamma(init), gamma(trained));
    let mut csv = String::from("t,initial,trained\n");
    for ((t, a), (_, b)) in g0.iter().zip(&g1) {
        csv += &format!("{t},{a},{b}\n");
    }
    write_text(&dir.join("gamma.csv"), &csv)?;
    println!(
        "gamma(t): {:.3} .. {:.3} trained, {:.3} .. {:.3} initially (gamma.png, gamma.csv)",
        g1[0].1, g1[200].1, g0[0].1, g0[200].1
    );
    crate::plot::lines_png(
        &[
            (g0, plotters::style::RGBColor(160, 160, 160)),
            (g1, plotters::style::RGBColor(20, 60, 180)),
        ],
        &dir.join("gamma.png"),
    )?;

    Ok("gamma.png".into())
}

/// The entries of an earlier `eval.json` (an empty object when there is none), so that an NLL-only
/// evaluation keeps the NELBO it did not recompute.
fn previous(path: &std::path::Path) -> Result<Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => match serde_json::from_str::<Value>(&text) {
            Ok(v @ Value::Object(_)) => Ok(v),
            _ => bail!(
                "{} is not a JSON object; move it away to evaluate the NLL alone",
                path.display()
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({})),
        Err(e) => bail!("cannot read {}: {e}", path.display()),
    }
}

pub fn run(env: &Env, a: &EvalArgs) -> Result<Value> {
    let run = RunDir::new(&a.run).load(env.plugins(), &env.device)?;
    let n = a
        .examples
        .unwrap_or(crate::cli::DefaultCounts::for_shape(&run.spec.data_shape).eval_examples);
    let path = a.run.join("eval.json");
    let mut v = if a.nll_only {
        previous(&path)?
    } else {
        nelbo(&run.pipe, run.data.as_ref(), n, a.seed)?
    };
    if a.nll || a.nll_only {
        v["ode_nll"] = nll(&run.pipe, run.data.as_ref(), a)?;
    }
    if run.pipe.schedule.is_trainable() {
        let init = run.spec.build_pipeline(env.plugins(), &env.device)?;
        v["schedule_plot"] = json!(schedule_plot(&init, &run.pipe, &a.run)?);
    }
    write_text(&path, &serde_json::to_string_pretty(&v)?)?;
    Ok(v)
}
