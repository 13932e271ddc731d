//! `runner sample`: samples of a trained run, written as a picture (a scatter plot of 2-D data, a
//! grid of images) and as safetensors.

use crate::cli::SampleArgs;
use crate::env::Env;
use anyhow::{anyhow, ensure, Result};
use candle_core::{DType, Tensor};
use ndm_api::checkpoint::{write_tensors, RunDir};
use ndm_api::guidance::Conditioning;
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
    let classes = ClassChoice::parse(a.class.as_deref(), &run.pipe)?;
    if a.guidance.is_some() && classes == ClassChoice::Unconditional {
        anyhow::bail!("--guidance needs a class-conditional run (model.conditional = true)");
    }
    let request = Request {
        n,
        seed: a.seed,
        classes,
        guidance: a.guidance.unwrap_or(0.0),
        export: Export::parse(&a.export, &run.pipe.data_shape)?,
    };
    let features = a
        .features
        .as_deref()
        .map(|dir| super::classifier::FeatureRef::for_run(dir, &run.spec, env))
        .transpose()?;
    draw(
        env,
        &run.pipe,
        run.data.as_ref(),
        &sampler,
        &request,
        &prefix,
        features.as_ref(),
    )
}

/// How many samples to draw, from which seed, of which classes, with which guidance, and in
/// which formats besides the picture and safetensors.
#[derive(Debug, Clone)]
pub struct Request {
    pub n: usize,
    pub seed: u64,
    pub classes: ClassChoice,
    pub guidance: f64,
    pub export: Export,
}

/// Sample formats for other tools: a folder of PNGs (images only; what torch-fidelity and
/// pytorch-fid read) and `.npz`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Export {
    pub png: bool,
    pub npz: bool,
}

impl Export {
    /// `png` and / or `npz`; PNG needs image data.
    pub fn parse(names: &[String], data_shape: &[usize]) -> Result<Export> {
        let mut e = Export::default();
        for n in names {
            match n.as_str() {
                "png" => e.png = true,
                "npz" => e.npz = true,
                other => anyhow::bail!("unknown export format `{other}`; known: png, npz"),
            }
        }
        ensure!(
            !e.png || data_shape.len() == 3,
            "export png needs image data; this data has shape {data_shape:?} (export npz instead)"
        );
        Ok(e)
    }
}

/// Writes `x` as `.npz`: images as `arr_0`, bytes `[N, H, W, C]` (the layout of the reference
/// batches of Dhariwal & Nichol's evaluator), and as `samples`, floats `[N, C, H, W]` in
/// `[-1, 1]`; flat data as `samples`, floats `[N, D]`.
fn write_npz(x: &Tensor, path: &Path) -> Result<()> {
    let floats = x.to_dtype(DType::F32)?;
    let mut arrays = vec![("samples", floats)];
    if let Ok((n, c, h, w)) = x.dims4() {
        let bytes = crate::plot::image_bytes(x)?;
        let nhwc = Tensor::from_vec(bytes, (n, c, h, w), &candle_core::Device::Cpu)?
            .permute((0, 2, 3, 1))?
            .contiguous()?;
        arrays.insert(0, ("arr_0", nhwc));
    }
    ndm_api::checkpoint::write_atomic(path, |tmp| {
        Tensor::write_npz(&arrays, tmp).map_err(|e| ndm_api::NdmError::file(tmp, e))
    })?;
    Ok(())
}

/// Which classes to sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassChoice {
    /// An unconditional model (or none asked).
    Unconditional,
    /// Every sample of this class.
    One(u32),
    /// An equal share of every class, in class order (one grid row per class for images).
    All,
}

impl ClassChoice {
    /// `--class K|all` against a run: a conditional run defaults to all classes; an unconditional
    /// one refuses a class.
    pub fn parse(arg: Option<&str>, pipe: &Pipeline) -> Result<ClassChoice> {
        let k = pipe.classes();
        if k == 0 {
            ensure!(
                arg.is_none(),
                "--class needs a class-conditional run; this run is unconditional (model.conditional = false)"
            );
            return Ok(ClassChoice::Unconditional);
        }
        match arg {
            None | Some("all") => Ok(ClassChoice::All),
            Some(s) => {
                let c: u32 = s
                    .parse()
                    .map_err(|_| anyhow!("--class takes a class number or `all`, got `{s}`"))?;
                ensure!(
                    (c as usize) < k,
                    "--class {c} is out of range: the model has {k} classes, 0..={}",
                    k - 1
                );
                Ok(ClassChoice::One(c))
            }
        }
    }

    /// The class of each of `n` samples (for `All`, `n` rounded down to a multiple of the
    /// number of classes, at least one per class), or `None` when unconditional.
    pub fn classes(&self, n: usize, k: usize) -> Option<Vec<u32>> {
        match self {
            ClassChoice::Unconditional => None,
            ClassChoice::One(c) => Some(vec![*c; n]),
            ClassChoice::All => {
                let per = (n / k).max(1);
                Some((0..k * per).map(|i| (i / per) as u32).collect())
            }
        }
    }
}

/// The dataset's per-class metrics of samples drawn for `classes` (one per sample): each class's
/// values and their mean over the classes present, as a summary-line fragment and as JSON.
fn class_metrics(data: &dyn Dataset, x: &Tensor, classes: &[u32]) -> Result<(String, Value)> {
    let mut present: Vec<u32> = classes.to_vec();
    present.dedup();
    let mut per_class = serde_json::Map::new();
    let mut sums: Vec<(String, f64)> = Vec::new();
    for &k in &present {
        let idx: Vec<u32> = (0..classes.len() as u32)
            .filter(|&i| classes[i as usize] == k)
            .collect();
        let ids = Tensor::from_vec(idx.clone(), idx.len(), x.device())?;
        let sub = x.index_select(&ids, 0)?;
        let ms = data.class_metrics(&sub, k as usize)?;
        per_class.insert(
            k.to_string(),
            json!(ms.iter().cloned().collect::<HashMap<_, _>>()),
        );
        for (name, v) in ms {
            match sums.iter_mut().find(|(n, _)| *n == name) {
                Some(s) => s.1 += v,
                None => sums.push((name, v)),
            }
        }
    }
    let mut line = String::new();
    for (name, sum) in &sums {
        line += &format!(
            ", {name} {:.4} (mean of {} classes)",
            sum / present.len() as f64,
            present.len()
        );
    }
    Ok((line, Value::Object(per_class)))
}

/// Samples `n` points with a sampler spec (of `classes` with guidance `guidance` for a
/// conditional model), writes `prefix.png` (2-D data, a grid of images with one row per class
/// for all classes) and `prefix.safetensors`, prints a summary line and returns it as JSON. With
/// a feature network, the summary has the samples' FID, KID and precision/recall in its space.
pub fn draw(
    env: &Env,
    pipe: &Pipeline,
    data: &dyn Dataset,
    sampler: &SamplerSpec,
    request: &Request,
    prefix: &Path,
    features: Option<&super::classifier::FeatureRef>,
) -> Result<Value> {
    let Request {
        n,
        seed,
        ref classes,
        guidance,
        export,
    } = *request;
    let t0 = Instant::now();
    let mut rng = Rng::derived(seed, "sample");
    let cond = classes
        .classes(n, pipe.classes())
        .map(|classes| Conditioning { classes, guidance });
    let n = cond.as_ref().map_or(n, |c| c.classes.len());
    // Predictions clamped to [-1, 1] for discrete data (images) unless the sampler says otherwise.
    let clip = match sampler.clip {
        Some(on) => on,
        None => data.quantization().is_some(),
    }
    .then_some((-1.0, 1.0));
    let (s, grid) = sample_with(
        pipe,
        sampler,
        env.plugins(),
        n,
        clip,
        cond.as_ref(),
        &mut rng,
    )?;
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
        let rows = match classes {
            ClassChoice::All => pipe.classes(),
            _ => (n as f64).sqrt().round().max(1.0) as usize,
        };
        crate::plot::image_grid_png(&s.x, rows, &png)?;
    }
    let tensors = HashMap::from([
        ("samples".to_string(), s.x.clone()),
        ("z_start".to_string(), s.z_start.clone()),
    ]);
    write_tensors(&prefix.with_extension("safetensors"), &tensors)?;
    let mut written = Vec::new();
    if export.png {
        let mut dir = prefix.as_os_str().to_owned();
        dir.push("-png");
        let dir = std::path::PathBuf::from(dir);
        let k = crate::plot::image_folder(&s.x, &dir)?;
        written.push(format!("{k} PNGs in {}", dir.display()));
    }
    if export.npz {
        let path = prefix.with_extension("npz");
        write_npz(&s.x, &path)?;
        written.push(path.display().to_string());
    }
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
    let mut metrics = data.sample_metrics(&s.x)?;
    if pipe.data_shape.len() == 1 && cond.is_none() {
        metrics.extend(reference_metrics(data, &s.x, seed)?);
    }
    if let Some(f) = features {
        metrics.extend(f.score(&s.x, seed)?);
        m["feature_net"] = json!(f.hash());
    }
    for (k, v) in metrics {
        line += &format!(", {k} {}", fmt_metric(v));
        m[k] = json!(v);
    }
    if let Some(c) = &cond {
        m["guidance"] = json!(guidance);
        let (line_part, per_class) = class_metrics(data, &s.x, &c.classes)?;
        line += &line_part;
        m["classes"] = per_class;
    }
    println!("{line}");
    if pipe.data_shape == [2] || pipe.data_shape.len() == 3 {
        println!("samples: {}", png.display());
    }
    if !written.is_empty() {
        println!("exported: {}", written.join(", "));
    }
    Ok(m)
}

/// Flat data: the distance of the samples to as many held-out points (sliced Wasserstein, MMD,
/// precision / recall, see [`ndm_api::metrics::distribution_metrics`]); the held-out points come
/// from their own stream of `seed`, so every model sampled with one seed meets the same reference.
fn reference_metrics(data: &dyn Dataset, x: &Tensor, seed: u64) -> Result<Vec<(String, f64)>> {
    use ndm_api::metrics::{distribution_metrics, PointSet};
    let samples = match PointSet::from_tensor(x) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("note: no distance metrics for these samples: {e}");
            return Ok(Vec::new());
        }
    };
    let mut rng = Rng::derived(seed, "reference points");
    let held_out = data.sample(samples.len(), ndm_api::Split::Test, &mut rng, x.device())?;
    let reference = PointSet::from_tensor(&held_out)?;
    distribution_metrics(&samples, &reference, &mut rng).map_err(|e| anyhow!("sample metrics: {e}"))
}

/// Whole numbers as they are; four decimals, or four significant digits for values below 0.01
/// (an MMD^2 of 3e-5).
pub fn fmt_metric(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v != 0.0 && v.abs() < 0.01 {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}
