//! The `runner` command line as a library, so tests can drive it in-process too.

pub mod cli;
pub mod plot;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use cli::{Cli, Command, EvalArgs, Global, PartArgs, SampleArgs, SamplerArgs, TrainArgs};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ndm_api::checkpoint::{write_tensors, write_text, RunDir, METRICS_FILE, SPEC_FILE};
use ndm_api::registry::{BuildCtx, Family};
use ndm_api::sample::{evaluate_nelbo, sample};
use ndm_api::train::{TrainState, Trainer};
use ndm_api::{
    Dataset, NdmError, Pipeline, PluginRegistry, PluginSpec, RegistryFile, Rng, RunSpec,
    SamplerSpec, TimeGrid,
};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The registry compiled into the binary, used when no file is named and none is in the folder.
pub const BUILTIN_REGISTRY: &str = include_str!("../../registry.toml");

/// What every command needs: plugins, presets, the device, the output mode.
#[derive(Debug)]
pub struct Env {
    pub plugins: PluginRegistry,
    pub file: RegistryFile,
    pub device: Device,
    pub quiet: bool,
}

impl Env {
    pub fn new(g: &Global) -> Result<Self> {
        let file = match &g.registry {
            Some(p) => RegistryFile::read(p)?,
            None if Path::new("registry.toml").is_file() => {
                RegistryFile::read(Path::new("registry.toml"))?
            }
            None => RegistryFile::parse(BUILTIN_REGISTRY, "built-in registry")?,
        };
        // Libraries load before any model spec is resolved, so their plugins resolve like built-ins.
        let mut plugins = ndm_plugins_all::builtin_registry();
        for lib in &file.libraries {
            ndm_api::sdk::load_library(&mut plugins, &lib.path, lib.name.as_deref())?;
        }
        Ok(Env {
            plugins,
            file,
            device: parse_device(&g.device)?,
            quiet: g.quiet || !std::io::stderr().is_terminal(),
        })
    }

    /// A context for plugins without weights (solvers, datasets).
    fn ctx(&self) -> BuildCtx<'_> {
        BuildCtx::without_weights(&self.device, &self.plugins)
    }

    pub fn dataset(&self, spec: &PluginSpec) -> Result<Box<dyn Dataset>> {
        Ok(self.plugins.build_dataset(spec, &self.ctx())?)
    }
}

/// `cpu` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let Some(n) = s
        .strip_prefix("cuda:")
        .or(if s == "cuda" { Some("0") } else { None })
    else {
        bail!("unknown device `{s}`; use cpu or cuda:N");
    };
    let n: usize = n
        .parse()
        .map_err(|_| anyhow!("unknown device `{s}`; use cpu or cuda:N"))?;
    if !candle_core::utils::cuda_is_available() {
        bail!("device {s}: this runner was built without CUDA support (rebuild with `--features cuda`)");
    }
    Device::new_cuda(n).with_context(|| format!("cannot open device {s}"))
}

/// The whole program: parse the command line, run it, print an error as one `Error:` line and
/// exit 1. A binary that links extra plugin crates calls this from its `main`.
pub fn main_entry() {
    use clap::Parser;
    if let Err(e) = run(Cli::parse()) {
        let chain: Vec<String> = e.chain().map(|c| ndm_api::error::one_line(c)).collect();
        eprintln!("Error: {}", chain.join(": "));
        std::process::exit(1);
    }
}

/// Runs one command line.
pub fn run(cli: Cli) -> Result<()> {
    let env = Env::new(&cli.global)?;
    match cli.command {
        Some(Command::Train(a)) => train(&env, &a).map(|_| ()),
        Some(Command::Sample(a)) => sample_cmd(&env, &a).map(|_| ()),
        Some(Command::Eval(a)) => eval_cmd(&env, &a).map(|_| ()),
        Some(Command::List) => {
            print!("{}", list(&env));
            Ok(())
        }
        None => train(&env, &cli.flat).map(|_| ()),
    }
}

/// The preset the flat form resolves to when `--model` is not given.
fn default_preset(a: &TrainArgs) -> Result<String> {
    match a.parts.transform.as_deref() {
        None | Some("identity") => Ok(match a.sampler.solver.as_deref() {
            Some("ddim") => "ddim".into(),
            _ => "ddpm".into(),
        }),
        Some("learned") => Ok("ndm".into()),
        Some(other) => bail!("no preset uses transform `{other}`; name one with --model"),
    }
}

fn apply_sampler_args(sampler: &mut SamplerSpec, a: &SamplerArgs) -> Result<()> {
    if let Some(s) = &a.solver {
        if *s != sampler.solver.kind {
            sampler.solver = PluginSpec::new(s.clone());
        }
    }
    if let Some(n) = a.steps {
        if n == 0 {
            bail!("--steps must be at least 1");
        }
        sampler.steps = Some(n);
    }
    if let Some(s) = &a.spacing {
        sampler.spacing = s.parse()?;
    }
    if let Some(eta) = a.eta {
        sampler
            .solver
            .params
            .insert("eta".into(), toml::Value::Float(eta));
    }
    Ok(())
}

/// Applies `--set part.field=value` to a run spec.
fn apply_sets(spec: &mut RunSpec, sets: &[String]) -> Result<()> {
    for s in sets {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| anyhow!("--set {s}: expected PART.FIELD=VALUE"))?;
        let (part, field) = key
            .split_once('.')
            .ok_or_else(|| anyhow!("--set {s}: expected PART.FIELD=VALUE"))?;
        let m = &mut spec.model;
        let target = match part {
            "transform" => &mut m.transform,
            "schedule" => &mut m.schedule,
            "param" => &mut m.param,
            "backbone" => &mut m.backbone,
            "prior" => &mut m.prior,
            "objective" => &mut m.objective,
            "solver" => &mut spec.sampler.solver,
            "dataset" => &mut spec.dataset,
            "model" if field == "steps" => {
                m.steps = Some(value.parse().map_err(|_| anyhow!("--set {s}: model.steps takes a positive integer"))?);
                continue;
            }
            "train" => {
                let mut t = toml::Table::try_from(&spec.train)?;
                let mut tmp = PluginSpec::new("");
                tmp.set(field, value);
                t.extend(tmp.params);
                spec.train = toml::Value::Table(t)
                    .try_into()
                    .map_err(|e| anyhow!("--set {s}: {}", ndm_api::error::one_line(&e)))?;
                continue;
            }
            _ => bail!(
                "--set {s}: unknown part `{part}`; known: transform, schedule, param, backbone, prior, objective, solver, dataset, train, model"
            ),
        };
        target.set(field, value);
    }
    Ok(())
}

/// The run spec a training command asks for: a preset with the command's overrides, every part
/// resolved against the registry.
pub fn run_spec(env: &Env, a: &TrainArgs) -> Result<RunSpec> {
    let name = match &a.model {
        Some(m) => m.clone(),
        None => default_preset(a)?,
    };
    let preset = env.file.preset(&name)?.clone();
    let mut spec = RunSpec {
        preset: Some(name),
        ndm_version: ndm_api::VERSION.into(),
        data_shape: vec![],
        dataset: PluginSpec::new(a.dataset.clone()),
        model: preset.model,
        sampler: preset.sampler,
        train: preset.train,
    };
    override_parts(&mut spec, &a.parts);
    apply_sampler_args(&mut spec.sampler, &a.sampler)?;
    let t = &mut spec.train;
    t.steps = a.train_steps.unwrap_or(t.steps);
    t.batch_size = a.batch_size.unwrap_or(t.batch_size);
    t.lr = a.lr.unwrap_or(t.lr);
    t.seed = a.seed.unwrap_or(t.seed);
    apply_sets(&mut spec, &a.parts.set)?;
    spec.model = spec.model.resolve(&env.plugins)?;
    spec.sampler.solver = spec.sampler.solver.resolve(Family::Solver, &env.plugins)?;
    spec.dataset = spec.dataset.resolve(Family::Dataset, &env.plugins)?;
    spec.train.validate()?;
    spec.data_shape = env.dataset(&spec.dataset)?.data_shape();
    Ok(spec)
}

fn override_parts(spec: &mut RunSpec, p: &PartArgs) {
    let m = &mut spec.model;
    for (arg, part) in [
        (&p.transform, &mut m.transform),
        (&p.schedule, &mut m.schedule),
        (&p.param, &mut m.param),
        (&p.backbone, &mut m.backbone),
        (&p.prior, &mut m.prior),
        (&p.objective, &mut m.objective),
    ] {
        if let Some(k) = arg {
            if *k != part.kind {
                *part = PluginSpec::new(k.clone());
            }
        }
    }
}

fn progress(env: &Env, len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if env.quiet {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template(&format!(
        "{what} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}}<{{eta_precise}}, {{per_sec}}] {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb
}

/// Builds a run's pipeline from its spec.
pub fn build_pipeline(env: &Env, spec: &RunSpec) -> Result<Pipeline> {
    Ok(Pipeline::build(
        &spec.model,
        &spec.data_shape,
        &env.plugins,
        &env.device,
        spec.train.seed,
    )?)
}

/// `runner train` (and the flat form). Returns the metrics it wrote.
pub fn train(env: &Env, a: &TrainArgs) -> Result<Value> {
    let default_out = || -> Result<PathBuf> {
        let m = match &a.model {
            Some(m) => m.clone(),
            None => default_preset(a)?,
        };
        Ok(PathBuf::from("runs").join(format!("{m}-{}", a.dataset)))
    };
    let out = match &a.out {
        Some(o) => o.clone(),
        None => default_out()?,
    };
    let rd = RunDir::new(&out);
    let resume = a.resume;
    let spec = if resume {
        let mut s = rd.read_spec()?;
        if let Some(n) = a.train_steps {
            s.train.steps = n;
        }
        s
    } else {
        if rd.file(SPEC_FILE).exists() {
            bail!(
                "{} already holds a run; pass --resume to continue it or --out DIR for a new one",
                out.display()
            );
        }
        run_spec(env, a)?
    };
    let data = env.dataset(&spec.dataset)?;
    let pipe = build_pipeline(env, &spec)?;
    let mut state = if resume {
        rd.load_state(&pipe)?
    } else {
        rd.create()?;
        rd.write_spec(&spec)?;
        TrainState::new(&pipe, spec.train.seed)?
    };
    let trainer = Trainer::new(&pipe, &spec.train)?;
    let start_step = state.step;
    let pb = progress(env, spec.train.steps as u64, "train");
    pb.set_position(state.step as u64);
    let t0 = Instant::now();
    let mut recent: Vec<f64> = Vec::new();
    while state.step < spec.train.steps {
        match trainer.step(&mut state, data.as_ref()) {
            Ok(r) => {
                recent.push(r.loss);
                if recent.len() > 100 {
                    recent.remove(0);
                }
                pb.set_position(r.step as u64);
                if r.step % 25 == 0 {
                    pb.set_message(format!("loss {:.4}", r.loss));
                }
            }
            Err(NdmError::NonFinite(m)) => {
                pb.abandon();
                rd.write_checkpoint(&pipe, &state)?;
                bail!(
                    "{m}; training stopped, the last good state (step {}) is saved in {}",
                    state.step,
                    out.display()
                );
            }
            Err(e) => return Err(e.into()),
        }
        if state.step % spec.train.checkpoint_every == 0 {
            rd.write_checkpoint(&pipe, &state)?;
        }
    }
    let train_secs = t0.elapsed().as_secs_f64();
    pb.finish_and_clear();
    rd.write_checkpoint(&pipe, &state)?;
    pipe.set_weights(&state.ema)?;
    let steps_run = state.step - start_step;
    let final_loss = if recent.is_empty() {
        f64::NAN
    } else {
        recent.iter().sum::<f64>() / recent.len() as f64
    };
    let mut metrics = json!({
        "preset": spec.preset,
        "dataset": spec.dataset.kind,
        "params": pipe.num_params(),
        "train": {
            "steps": state.step,
            "steps_this_run": steps_run,
            "seconds": train_secs,
            "steps_per_second": steps_run as f64 / train_secs.max(1e-9),
            "final_loss_mean_last_100": final_loss,
        },
    });
    println!(
        "trained {} on {} for {} steps ({} params) in {:.1} s ({:.1} steps/s), final loss {:.4}",
        spec.preset.as_deref().unwrap_or("model"),
        spec.dataset.kind,
        state.step,
        pipe.num_params(),
        train_secs,
        steps_run as f64 / train_secs.max(1e-9),
        final_loss
    );
    if a.sampler.samples > 0 {
        let s = draw_samples(
            env,
            &pipe,
            data.as_ref(),
            &spec.sampler,
            a.sampler.samples,
            spec.train.seed,
            &rd.file("samples"),
        )?;
        metrics["samples"] = s;
    }
    if a.eval_examples > 0 {
        metrics["eval"] = eval_pipeline(&pipe, data.as_ref(), a.eval_examples, 1)?;
    }
    write_text(
        &rd.file(METRICS_FILE),
        &serde_json::to_string_pretty(&metrics)?,
    )?;
    println!("run written to {}", out.display());
    Ok(metrics)
}

/// Samples `n` points with a sampler spec and writes `prefix.png` and `prefix.safetensors`.
pub fn draw_samples(
    env: &Env,
    pipe: &Pipeline,
    data: &dyn Dataset,
    sampler: &SamplerSpec,
    n: usize,
    seed: u64,
    prefix: &Path,
) -> Result<Value> {
    let solver = env.plugins.build_solver(&sampler.solver, &env.ctx())?;
    let steps = sampler.steps.or(pipe.spec.steps).unwrap_or(100);
    let grid = TimeGrid::for_process(steps, sampler.spacing, pipe)?;
    let mut rng = Rng::derived(seed, "sample");
    let t0 = Instant::now();
    let s = sample(pipe, solver.as_ref(), &grid, n, &mut rng)?;
    let secs = t0.elapsed().as_secs_f64();
    let png = prefix.with_extension("png");
    if pipe.data_shape == [2] {
        let pts: Vec<[f64; 2]> =
            s.x.to_dtype(DType::F64)?
                .to_vec2::<f64>()?
                .into_iter()
                .map(|r| [r[0], r[1]])
                .collect();
        plot::scatter_png(&pts, &png)?;
    }
    let mut t = HashMap::new();
    t.insert("samples".to_string(), s.x.clone());
    t.insert("z_start".to_string(), s.z_start.clone());
    write_tensors(&prefix.with_extension("safetensors"), &t)?;
    let mut m = json!({
        "solver": sampler.solver.kind,
        "solver_params": sampler.solver.params,
        "steps": grid.steps(),
        "spacing": sampler.spacing,
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
    if pipe.data_shape == [2] {
        println!("samples: {}", png.display());
    }
    Ok(m)
}

fn eval_pipeline(pipe: &Pipeline, data: &dyn Dataset, n: usize, seed: u64) -> Result<Value> {
    let t0 = Instant::now();
    let r = evaluate_nelbo(pipe, data, n, 500, &mut Rng::derived(seed, "eval"))?;
    println!(
        "NELBO {:.4} ± {:.4} nats ({:.4} bits/dim) on {} held-out examples: L_prior {:.4}, L_diff {:.4}, L_rec {:.4}{}",
        r.nelbo_nats,
        r.stderr_nats,
        r.bits_per_dim,
        r.examples,
        r.l_prior,
        r.l_diff,
        r.l_rec,
        data.entropy().map(|h| format!(" (data entropy {h:.4} nats)")).unwrap_or_default()
    );
    let mut v = serde_json::to_value(&r)?;
    v["seconds"] = json!(t0.elapsed().as_secs_f64());
    if let Some(h) = data.entropy() {
        v["data_entropy_nats"] = json!(h);
    }
    Ok(v)
}

fn nll_pipeline(pipe: &Pipeline, data: &dyn Dataset, a: &EvalArgs) -> Result<Value> {
    use ndm_api::likelihood::{ode_nll, NllOptions, Trace};
    let dims: usize = pipe.data_shape.iter().product();
    let mut opts = NllOptions::default_for(dims);
    opts.trace = match a.trace.as_str() {
        "auto" => opts.trace,
        "exact" => Trace::Exact,
        "rademacher" => Trace::Rademacher,
        "gaussian" => Trace::Gaussian,
        other => bail!("unknown --trace `{other}`; known: auto, exact, rademacher, gaussian"),
    };
    if a.probes == 0 || !(a.rtol > 0.0 && a.atol > 0.0) {
        bail!("--probes must be at least 1 and --rtol, --atol positive");
    }
    opts.probes = a.probes;
    opts.tol.rtol = a.rtol;
    opts.tol.atol = a.atol;
    let mut rng = Rng::derived(a.seed, "nll");
    let x = data.sample(a.examples, ndm_api::Split::Test, &mut rng, &pipe.device)?;
    let t0 = Instant::now();
    let mut all = Vec::with_capacity(a.examples);
    let mut nfe = 0;
    for start in (0..a.examples).step_by(500) {
        let b = 500.min(a.examples - start);
        let r = ode_nll(pipe, &x.narrow(0, start, b)?, &opts, &mut rng)?;
        all.extend(r.nll);
        nfe += r.stats.nfe;
    }
    let n = all.len() as f64;
    let mean = all.iter().sum::<f64>() / n;
    let se = (all.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0) / n).sqrt();
    let bpd = mean / (dims as f64 * std::f64::consts::LN_2);
    println!(
        "ODE NLL {mean:.4} ± {se:.4} nats ({bpd:.4} bits/dim) on {} held-out examples, trace {:?} x{}, rk45 NFE {nfe}{}",
        all.len(),
        opts.trace,
        if opts.trace == Trace::Exact { 1 } else { opts.probes },
        data.entropy().map(|h| format!(" (data entropy {h:.4} nats)")).unwrap_or_default()
    );
    Ok(json!({
        "nll_nats": mean,
        "stderr_nats": se,
        "bits_per_dim": bpd,
        "trace": format!("{:?}", opts.trace),
        "probes": opts.probes,
        "rtol": opts.tol.rtol,
        "atol": opts.tol.atol,
        "nfe": nfe,
        "seconds": t0.elapsed().as_secs_f64(),
    }))
}

/// Loads a trained run: its spec, pipeline (EMA weights) and dataset.
pub fn load_run(env: &Env, dir: &Path) -> Result<(RunSpec, Pipeline, Box<dyn Dataset>)> {
    let rd = RunDir::new(dir);
    let spec = rd.read_spec()?;
    let pipe = build_pipeline(env, &spec)?;
    rd.load_weights(&pipe)?;
    let data = env.dataset(&spec.dataset)?;
    Ok((spec, pipe, data))
}

/// `runner sample`.
pub fn sample_cmd(env: &Env, a: &SampleArgs) -> Result<Value> {
    if a.sampler.samples == 0 {
        bail!("--samples must be at least 1");
    }
    let (spec, pipe, data) = load_run(env, &a.run)?;
    let mut sampler = spec.sampler.clone();
    apply_sampler_args(&mut sampler, &a.sampler)?;
    for s in &a.set {
        let (field, value) = s
            .strip_prefix("solver.")
            .and_then(|r| r.split_once('='))
            .ok_or_else(|| anyhow!("--set {s}: sample takes solver.FIELD=VALUE"))?;
        sampler.solver.set(field, value);
    }
    sampler.solver = sampler.solver.resolve(Family::Solver, &env.plugins)?;
    let steps = sampler.steps.or(pipe.spec.steps).unwrap_or(100);
    let prefix = a.out.clone().unwrap_or_else(|| {
        a.run
            .join(format!("samples-{}-{steps}", sampler.solver.kind))
    });
    draw_samples(
        env,
        &pipe,
        data.as_ref(),
        &sampler,
        a.sampler.samples,
        a.seed,
        &prefix,
    )
}

/// `runner eval`.
pub fn eval_cmd(env: &Env, a: &EvalArgs) -> Result<Value> {
    let (_, pipe, data) = load_run(env, &a.run)?;
    let mut v = eval_pipeline(&pipe, data.as_ref(), a.examples, a.seed)?;
    if a.nll {
        v["ode_nll"] = nll_pipeline(&pipe, data.as_ref(), a)?;
    }
    write_text(&a.run.join("eval.json"), &serde_json::to_string_pretty(&v)?)?;
    Ok(v)
}

/// `runner list`: every plugin by family with its summary and default params, then the presets.
pub fn list(env: &Env) -> String {
    let mut s = String::new();
    for family in Family::ALL {
        s += &format!("{family}:\n");
        for e in env
            .plugins
            .entries()
            .iter()
            .filter(|e| e.info.family() == family)
        {
            let defaults = (e.info.defaults)();
            let d = toml::Value::Table(defaults).to_string();
            s += &format!("  {:<18} {}\n", e.info.name, e.info.summary);
            s += &format!(
                "  {:<18}   defaults {} [{}]\n",
                "",
                if d.trim().is_empty() {
                    "{}".into()
                } else {
                    d.replace('\n', ", ").trim_end_matches(", ").to_string()
                },
                e.origin
            );
        }
    }
    s += "presets:\n";
    for (name, p) in &env.file.presets {
        s += &format!("  {name:<18} {}\n", p.summary);
    }
    s
}

/// Samples of a tensor as rows (for tests and examples).
pub fn rows(x: &Tensor) -> Result<Vec<Vec<f64>>> {
    Ok(x.to_dtype(DType::F64)?.flatten_from(1)?.to_vec2::<f64>()?)
}
