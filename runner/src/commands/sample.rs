//! `runner sample`: samples of a trained run, written as a picture (a scatter plot of 2-D data, a
//! grid of images) and as safetensors.

use crate::cli::SampleArgs;
use crate::env::Env;
use anyhow::{anyhow, ensure, Result};
use candle_core::DType;
use ndm_api::checkpoint::{write_tensors, RunDir};
use ndm_api::sample::sample_with;
use ndm_api::{Dataset, Family, Pipeline, Rng, SamplerSpec};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

pub fn run(env: &Env, a: &SampleArgs) -> Result<Value> {
    let run = RunDir::new(&a.run).load(env.plugins(), &env.device)?;
    let n = a
        .sampler
        .samples
        .unwrap_or(crate::cli::DefaultCounts::for_shape(&run.spec.data_shape).samples);
    ensure!(n > 0, "--samples must be at least 1");
    let mut sampler = run.spec.sampler.clone();
    if let Some(s) = &a.sampler.solver {
        if *s != sampler.solver.kind {
            sampler.solver = ndm_api::PluginSpec::new(s.clone());
        }
    }
    a.sampler.apply(&mut sampler)?;
    for s in &a.set {
        let (field, value) = s
            .strip_prefix("solver.")
            .and_then(|r| r.split_once('='))
            .ok_or_else(|| anyhow!("--set {s}: sample takes solver.FIELD=VALUE"))?;
        sampler.solver.set(field, value);
    }
    sampler.solver = sampler.solver.resolve(Family::Solver, env.plugins())?;
    let prefix = a.out.clone().unwrap_or_else(|| {
        a.run.join(format!(
            "samples-{}-{}",
            sampler.solver.kind,
            sampler.steps_for(&run.pipe)
        ))
    });
    draw(
        env,
        &run.pipe,
        run.data.as_ref(),
        &sampler,
        n,
        a.seed,
        &prefix,
    )
}

/// Samples `n` points with a sampler spec, writes `prefix.png` (2-D data) and
/// `prefix.safetensors`, prints a summary line and returns it as JSON.
pub fn draw(
    env: &Env,
    pipe: &Pipeline,
    data: &dyn Dataset,
    sampler: &SamplerSpec,
    n: usize,
    seed: u64,
    prefix: &Path,
) -> Result<Value> {
    let t0 = Instant::now();
    let mut rng = Rng::derived(seed, "sample");
    // Predictions clamped to [-1, 1] for discrete data (images) unless the sampler says otherwise.
    let clip = match sampler.clip {
        Some(on) => on,
        None => data.quantization().is_some(),
    }
    .then_some((-1.0, 1.0));
    let (s, grid) = sample_with(pipe, sampler, env.plugins(), n, clip, &mut rng)?;
    let secs = t0.elapsed().as_secs_f64();
    let png = prefix.with_extension("png");
    if pipe.data_shape == [2] {
        let pts: Vec<[f64; 2]> =
            s.x.to_dtype(DType::F64)?
                .to_vec2::<f64>()?
                .into_iter()
                .map(|r| [r[0], r[1]])
                .collect();
        crate::plot::scatter_png(&pts, &png)?;
    } else if pipe.data_shape.len() == 3 {
        let rows = (n as f64).sqrt().round().max(1.0) as usize;
        crate::plot::image_grid_png(&s.x, rows, &png)?;
    }
    let tensors = HashMap::from([
        ("samples".to_string(), s.x.clone()),
        ("z_start".to_string(), s.z_start.clone()),
    ]);
    write_tensors(&prefix.with_extension("safetensors"), &tensors)?;
    let mut m = json!({
        "solver": sampler.solver.kind,
        "solver_params": sampler.solver.params,
        "steps": grid.steps(),
        "spacing": sampler.spacing,
        "clip": clip.is_some(),
        "n": n,
        "nfe": s.nfe,
        "seconds": secs,
    });
    let mut line = format!(
        "sampled {n} with {} ({} steps, NFE {}) in {secs:.2} s",
        sampler.solver.kind,
        grid.steps(),
        s.nfe
    );
    for (k, v) in data.sample_metrics(&s.x)? {
        line += &format!(", {k} {v:.4}");
        m[k] = json!(v);
    }
    println!("{line}");
    if pipe.data_shape == [2] || pipe.data_shape.len() == 3 {
        println!("samples: {}", png.display());
    }
    Ok(m)
}
