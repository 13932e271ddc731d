//! `runner matrix`: a comparison matrix. Every model of a matrix file is trained (or reused) on
//! every dataset with every seed, evaluated once, and sampled with every solver x spacing x step
//! count; the results become `results.md`, `results.csv`, `results.json` and plots.
//!
//! Layout of the output folder:
//! - `runs/<model>-<dataset>-s<seed>-<hash>/`: an ordinary run directory (`runner sample` and
//!   `runner eval` work on it), named by a hash of what decides its weights (its resolved spec
//!   less the default sampler), so a run is reused exactly when that matches, also between two
//!   models that differ only in how they sample; `matrix-eval.json` holds its NELBO (and ODE NLL).
//! - `cells/<model>-<run>/<solver>-<spacing>-<steps>.json` (and `.png`, `.safetensors`,
//!   exports): one sampling cell. A cell whose JSON exists is done and is not redone, so running the same
//!   command again after an interruption finishes the rest.

use crate::cli::{MatrixArgs, PartArgs, TrainArgs};
use crate::env::Env;
use crate::Outcome;
use anyhow::{anyhow, bail, Context, Result};
use ndm_api::checkpoint::{write_text, RunDir, METRICS_FILE, SPEC_FILE, STATE_FILE};
use ndm_api::likelihood::NllOptions;
use ndm_api::train::TrainState;
use ndm_api::{BuildCtx, Family, Pipeline, PluginSpec, RunSpec, SamplerSpec, Spacing};
use plotters::style::RGBColor;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A matrix file (TOML). Every list is crossed with every other.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixFile {
    /// Output folder; default `runs/matrix-<file name>`.
    #[serde(default)]
    pub out: Option<PathBuf>,
    pub models: Vec<ModelEntry>,
    /// Dataset names, or tables `{ kind = "mnist", dir = "..." }`.
    pub datasets: Vec<DatasetEntry>,
    /// Solver tables `{ kind = "pc", snr = 0.1, label = "pc-0.1", steps = [50] }` (label: its
    /// name in the tables; steps: its own step counts instead of the matrix's); a bare name takes
    /// the solver's defaults.
    pub solvers: Vec<SolverEntry>,
    pub steps: Vec<usize>,
    /// Step spacings; default each model's own.
    #[serde(default)]
    pub spacings: Vec<String>,
    /// Training seeds; each run samples with its own seed too. Default `[0]`.
    #[serde(default)]
    pub seeds: Vec<u64>,
    /// Samples per cell; default 10,000 for flat data, 64 for images.
    #[serde(default)]
    pub samples: Option<usize>,
    /// Held-out examples for each run's NELBO (0: none); default 2000 flat, 100 images.
    #[serde(default)]
    pub eval_examples: Option<usize>,
    /// Held-out examples for each run's ODE NLL (0, the default: none).
    #[serde(default)]
    pub nll_examples: usize,
    /// RK45 rtol = atol of the ODE NLL (default 1e-5).
    #[serde(default)]
    pub nll_tolerance: Option<f64>,
    /// Training steps and batch size for every model (default: each preset's).
    #[serde(default)]
    pub train_steps: Option<usize>,
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// `error` (the default): a solver that cannot run a model, or a step count its grid
    /// cannot take, is a mistake in the file. `skip`: such cells are listed and left out.
    #[serde(default)]
    pub incompatible: Option<String>,
    /// Extra sample formats per cell: `png`, `npz`.
    #[serde(default)]
    pub export: Vec<String>,
    /// A feature network folder (`runner classifier`): image cells also get FID, KID and
    /// precision/recall in its feature space.
    #[serde(default)]
    pub features: Option<PathBuf>,
}

/// A model: a preset with overrides.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub preset: String,
    /// Its name in the tables; default the preset's.
    #[serde(default)]
    pub label: Option<String>,
    /// Plugin swaps by family: `{ schedule = "cosine" }`.
    #[serde(default)]
    pub plugins: BTreeMap<String, String>,
    /// `PART.FIELD=VALUE` assignments, as `--set` takes them.
    #[serde(default)]
    pub set: Vec<String>,
}

impl ModelEntry {
    fn label(&self) -> &str {
        self.label.as_deref().unwrap_or(&self.preset)
    }
}

/// A dataset: a name or a plugin table.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DatasetEntry {
    Name(String),
    Spec(PluginSpec),
}

impl DatasetEntry {
    fn spec(&self) -> PluginSpec {
        match self {
            DatasetEntry::Name(n) => PluginSpec::new(n.clone()),
            DatasetEntry::Spec(s) => s.clone(),
        }
    }
}

/// A solver: a name or a plugin table with an optional `label`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SolverEntry {
    Name(String),
    Spec(PluginSpec),
}

/// A solver of the matrix: its label, its plugin spec and its own step counts, if any.
#[derive(Debug, Clone)]
struct SolverPlan {
    label: String,
    spec: PluginSpec,
    steps: Option<Vec<usize>>,
}

impl SolverEntry {
    /// Its label and its own step counts taken out of the params (`label`, `steps`).
    fn split(&self) -> Result<SolverPlan> {
        match self {
            SolverEntry::Name(n) => Ok(SolverPlan {
                label: n.clone(),
                spec: PluginSpec::new(n.clone()),
                steps: None,
            }),
            SolverEntry::Spec(s) => {
                let mut spec = s.clone();
                let label = match spec.params.remove("label") {
                    Some(toml::Value::String(l)) => l,
                    Some(other) => bail!("solver {}: label must be a string, got {other}", s.kind),
                    None => s.kind.clone(),
                };
                let steps = match spec.params.remove("steps") {
                    None => None,
                    Some(v) => Some(v.try_into::<Vec<usize>>().map_err(|_| {
                        anyhow!("solver `{label}`: steps must be a list of step counts")
                    })?),
                };
                Ok(SolverPlan { label, spec, steps })
            }
        }
    }
}

impl MatrixFile {
    /// Reads and parses a matrix file; a bad field names the file and the field.
    pub fn read(path: &Path) -> Result<MatrixFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read matrix file {}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            anyhow!(
                "{}: {}",
                path.display(),
                ndm_api::error::one_line(&e).trim_end()
            )
        })
    }

    /// The flags on top of a file (or alone): each flag given replaces that list.
    fn with_flags(mut self, a: &MatrixArgs) -> Result<MatrixFile> {
        if !a.models.is_empty() {
            self.models = a
                .models
                .iter()
                .map(|m| ModelEntry {
                    preset: m.clone(),
                    ..ModelEntry::default()
                })
                .collect();
        }
        if !a.datasets.is_empty() {
            self.datasets = a
                .datasets
                .iter()
                .map(|d| DatasetEntry::Name(d.clone()))
                .collect();
        }
        if !a.solvers.is_empty() {
            self.solvers = a
                .solvers
                .iter()
                .map(|s| SolverEntry::Name(s.clone()))
                .collect();
        }
        if !a.steps.is_empty() {
            self.steps = a.steps.clone();
        }
        if !a.seeds.is_empty() {
            self.seeds = a.seeds.clone();
        }
        if !a.export.is_empty() {
            self.export = a.export.clone();
        }
        self.out = a.out.clone().or(self.out);
        self.samples = a.samples.or(self.samples);
        self.train_steps = a.train_steps.or(self.train_steps);
        self.eval_examples = a.eval_examples.or(self.eval_examples);
        self.features = a.features.clone().or(self.features);
        if a.skip_incompatible {
            self.incompatible = Some("skip".into());
        }
        if self.seeds.is_empty() {
            self.seeds = vec![0];
        }
        let missing: Vec<&str> = [
            ("models", self.models.is_empty()),
            ("datasets", self.datasets.is_empty()),
            ("solvers", self.solvers.is_empty()),
            ("steps", self.steps.is_empty()),
        ]
        .into_iter()
        .filter(|&(_, empty)| empty)
        .map(|(k, _)| k)
        .collect();
        if !missing.is_empty() {
            bail!(
                "the matrix has no {}: give them in the file or as --{}",
                missing.join(", no "),
                missing.join(", --")
            );
        }
        Ok(self)
    }
}

/// One sampling cell of a run.
#[derive(Debug, Clone)]
struct Cell {
    solver: String,
    spacing: String,
    steps: usize,
    sampler: SamplerSpec,
}

impl Cell {
    fn id(&self) -> String {
        format!(
            "{}-{}-{}",
            safe(&self.solver),
            safe(&self.spacing),
            self.steps
        )
    }
}

/// One trained run and its cells.
#[derive(Debug, Clone)]
struct RunPlan {
    model: String,
    dataset: String,
    seed: u64,
    spec: RunSpec,
    /// [`training_text`] of `spec`: what its weights depend on.
    training: String,
    dir: PathBuf,
    cells: Vec<Cell>,
    /// Cells left out (`incompatible = "skip"`), with the reason.
    skipped: Vec<(String, String)>,
}

/// A name made safe for a file name.
fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn spec_text(spec: &RunSpec) -> Result<String> {
    toml::to_string_pretty(spec).map_err(|e| anyhow!("cannot write spec: {e}"))
}

/// What decides a run's weights: its spec less the default sampler (the cells bring their own),
/// so presets that differ only in how they sample (ddpm, ddim) share one trained run.
fn training_text(spec: &RunSpec) -> Result<String> {
    let mut s = spec.clone();
    s.preset = None;
    s.sampler = SamplerSpec {
        solver: PluginSpec::new("-"),
        steps: None,
        spacing: Spacing::default(),
        clip: None,
    };
    spec_text(&s)
}

/// The resolved spec of `model` on `dataset` with `seed`, as `runner train` would make it.
fn model_spec(
    env: &Env,
    f: &MatrixFile,
    model: &ModelEntry,
    dataset: &PluginSpec,
    seed: u64,
) -> Result<RunSpec> {
    let mut set: Vec<String> = dataset
        .params
        .iter()
        .map(|(k, v)| format!("dataset.{k}={v}"))
        .collect();
    set.extend(model.set.iter().cloned());
    let mut parts = PartArgs {
        set,
        ..PartArgs::default()
    };
    for (family, kind) in &model.plugins {
        let slot = match family.as_str() {
            "transform" => &mut parts.transform,
            "schedule" => &mut parts.schedule,
            "param" => &mut parts.param,
            "backbone" => &mut parts.backbone,
            "prior" => &mut parts.prior,
            "objective" => &mut parts.objective,
            other => bail!(
                "unknown part `{other}` in plugins; known: transform, schedule, param, backbone, prior, objective"
            ),
        };
        *slot = Some(kind.clone());
    }
    let a = TrainArgs {
        model: Some(model.preset.clone()),
        dataset: Some(dataset.kind.clone()),
        train_steps: f.train_steps,
        batch_size: f.batch_size,
        seed: Some(seed),
        parts,
        ..TrainArgs::default()
    };
    super::train::new_spec(env, &a)
}

/// Checks the whole matrix before anything runs: every problem, each with its cell.
fn plan(env: &Env, f: &MatrixFile, out: &Path) -> Result<Vec<RunPlan>> {
    let skip = match f.incompatible.as_deref() {
        None | Some("error") => false,
        Some("skip") => true,
        Some(other) => bail!("incompatible = `{other}`; known: error, skip"),
    };
    let mut problems: Vec<String> = Vec::new();
    let mut solvers = Vec::new();
    for s in &f.solvers {
        match s.split() {
            Ok(mut plan) => match plan.spec.resolve(Family::Solver, env.plugins()) {
                Ok(resolved) => {
                    plan.spec = resolved;
                    solvers.push(plan)
                }
                Err(e) => problems.push(format!("solver `{}`: {e}", plan.label)),
            },
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    let mut spacings = Vec::new();
    for s in &f.spacings {
        match s.parse::<Spacing>() {
            Ok(sp) => spacings.push((s.clone(), Some(sp))),
            Err(e) => problems.push(format!("spacing `{s}`: {e}")),
        }
    }
    if spacings.is_empty() && f.spacings.is_empty() {
        spacings.push(("default".to_string(), None));
    }
    if f.steps.contains(&0)
        || solvers.iter().any(|s| {
            s.steps
                .as_ref()
                .is_some_and(|v| v.contains(&0) || v.is_empty())
        })
    {
        problems.push("steps: every step count must be at least 1".into());
    }
    if let Err(e) = super::sample::Export::parse(&f.export, &[1, 1, 1]) {
        problems.push(format!("export: {e}"));
    }
    if let Some(dir) = &f.features {
        let file = dir.join(super::classifier::NET_FILE);
        if !file.is_file() {
            problems.push(format!(
                "features: no {} (train one with `runner classifier --dataset mnist --out {}`)",
                file.display(),
                dir.display()
            ));
        }
    }
    let mut labels: Vec<String> = f.models.iter().map(|m| m.label().to_string()).collect();
    labels.sort();
    labels.dedup();
    if labels.len() != f.models.len() {
        problems.push("two models share a label: give each a distinct `label`".into());
    }
    let ctx = BuildCtx::without_weights(&env.device, env.plugins());
    let mut runs = Vec::new();
    for d in &f.datasets {
        let dspec = d.spec();
        if let Err(e) = dspec.resolve(Family::Dataset, env.plugins()) {
            problems.push(format!("dataset `{}`: {e}", dspec.kind));
            continue;
        }
        for m in &f.models {
            let at = format!("model `{}` on {}", m.label(), dspec.kind);
            let spec = match model_spec(env, f, m, &dspec, f.seeds[0]) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(format!("{at}: {e:#}"));
                    continue;
                }
            };
            let pipe = match spec.build_pipeline(env.plugins(), &env.device) {
                Ok(p) => p,
                Err(e) => {
                    problems.push(format!("{at}: {e}"));
                    continue;
                }
            };
            if !f.export.is_empty() {
                if let Err(e) = super::sample::Export::parse(&f.export, &spec.data_shape) {
                    problems.push(format!("{at}: {e}"));
                }
            }
            let (cells, skipped) = cells_of(&pipe, &spec, &solvers, &spacings, &f.steps, &ctx, env)
                .unwrap_or_else(|e| (Vec::new(), vec![("(all)".into(), e.to_string())]));
            for (cell, why) in &skipped {
                if !skip {
                    problems.push(format!("{at}, {cell}: {why}"));
                }
            }
            for &seed in &f.seeds {
                let spec = if seed == f.seeds[0] {
                    spec.clone()
                } else {
                    match model_spec(env, f, m, &dspec, seed) {
                        Ok(s) => s,
                        Err(e) => {
                            problems.push(format!("{at}, seed {seed}: {e:#}"));
                            continue;
                        }
                    }
                };
                let training = training_text(&spec)?;
                let twin = runs.iter().find(|r: &&RunPlan| r.training == training);
                let dir = match twin {
                    // Another model of the matrix trains exactly this: one run serves both.
                    Some(t) => t.dir.clone(),
                    None => out.join("runs").join(format!(
                        "{}-{}-s{seed}-{:08x}",
                        safe(m.label()),
                        safe(&dspec.kind),
                        ndm_api::checkpoint::Fnv1a::of(training.as_bytes()) as u32
                    )),
                };
                runs.push(RunPlan {
                    model: m.label().to_string(),
                    dataset: dspec.kind.clone(),
                    seed,
                    spec,
                    training,
                    dir,
                    cells: cells.clone(),
                    skipped: skipped.clone(),
                });
            }
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("  {p}");
        }
        if !skip {
            eprintln!("  (incompatible = \"skip\" in the file, or --skip-incompatible, leaves incompatible cells out instead of refusing them)");
        }
        bail!(
            "the matrix has {} problem{}, listed above; nothing was run",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
        );
    }
    Ok(runs)
}

/// The cells a run accepts, and those it refuses with the reason.
type CellSplit = (Vec<Cell>, Vec<(String, String)>);

fn cells_of(
    pipe: &Pipeline,
    spec: &RunSpec,
    solvers: &[SolverPlan],
    spacings: &[(String, Option<Spacing>)],
    steps: &[usize],
    ctx: &BuildCtx,
    env: &Env,
) -> ndm_api::Result<CellSplit> {
    let (mut cells, mut skipped) = (Vec::new(), Vec::new());
    for SolverPlan {
        label,
        spec: solver_spec,
        steps: own_steps,
    } in solvers
    {
        let solver = env.plugins().build_solver(solver_spec, ctx)?;
        if let Err(e) = solver.check(pipe) {
            skipped.push((format!("solver `{label}`"), e.to_string()));
            continue;
        }
        for (sp_label, sp) in spacings {
            for &n in own_steps.as_deref().unwrap_or(steps) {
                let sampler = SamplerSpec {
                    solver: solver_spec.clone(),
                    steps: Some(n),
                    spacing: sp.unwrap_or(spec.sampler.spacing),
                    clip: spec.sampler.clip,
                };
                let cell = Cell {
                    solver: label.clone(),
                    spacing: sp_label.clone(),
                    steps: n,
                    sampler,
                };
                match cell.sampler.grid(pipe) {
                    Ok(_) => cells.push(cell),
                    Err(e) => skipped.push((
                        format!("solver `{label}`, {sp_label} spacing, {n} steps"),
                        e.to_string(),
                    )),
                }
            }
        }
    }
    Ok((cells, skipped))
}

/// Trains the run (or resumes it, or reuses it when finished). Returns whether it was
/// interrupted.
fn ensure_trained(env: &Env, run: &RunPlan) -> Result<Outcome> {
    let rd = RunDir::new(&run.dir);
    let after = super::train::After {
        samples: 0,
        eval_examples: 0,
    };
    if rd.file(SPEC_FILE).exists() {
        let old = rd.read_spec()?;
        if training_text(&old)? != run.training {
            bail!(
                "{} holds a run with another spec (edited by hand?); move it away",
                run.dir.display()
            );
        }
        if rd.file(METRICS_FILE).exists() {
            return Ok(Outcome::Done);
        }
        let pipe = old.build_pipeline(env.plugins(), &env.device)?;
        let state = if rd.file(STATE_FILE).exists() {
            rd.load_state(&pipe)?
        } else {
            TrainState::new(&pipe, old.train.seed)?
        };
        eprintln!(
            "resuming {} at step {} of {}",
            run.dir.display(),
            state.step,
            old.train.steps
        );
        return super::train::fit(env, &rd, &old, &pipe, state, &after);
    }
    let pipe = run.spec.build_pipeline(env.plugins(), &env.device)?;
    rd.create()?;
    rd.write_spec(&run.spec)?;
    let state = TrainState::new(&pipe, run.spec.train.seed)?;
    super::train::fit(env, &rd, &run.spec, &pipe, state, &after)
}

/// Reads a JSON file written by an earlier pass, if it is there and readable.
fn read_json(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// The run's NELBO (and ODE NLL) in `matrix-eval.json`, computed unless already there with
/// the same counts.
fn evaluate(
    f: &MatrixFile,
    run: &RunPlan,
    pipe: &Pipeline,
    data: &dyn ndm_api::Dataset,
) -> Result<Value> {
    let counts = crate::cli::DefaultCounts::for_shape(&run.spec.data_shape);
    let n_eval = f.eval_examples.unwrap_or(counts.eval_examples);
    let tol = f.nll_tolerance.unwrap_or(1e-5);
    let path = run.dir.join("matrix-eval.json");
    if let Some(v) = read_json(&path) {
        if v["eval_examples"] == json!(n_eval)
            && v["nll_examples"] == json!(f.nll_examples)
            && (f.nll_examples == 0 || v["nll_tolerance"] == json!(tol))
        {
            return Ok(v);
        }
    }
    let mut v = json!({
        "eval_examples": n_eval,
        "nll_examples": f.nll_examples,
        "nll_tolerance": tol,
    });
    if n_eval > 0 {
        v["nelbo"] = super::eval::nelbo(pipe, data, n_eval, 1)?;
    }
    if f.nll_examples > 0 {
        let mut opts = NllOptions::default_for(pipe.data_dims());
        opts.tol.rtol = tol;
        opts.tol.atol = tol;
        v["ode_nll"] = super::eval::ode_nll(pipe, data, f.nll_examples, &opts, 1)?;
    }
    write_text(&path, &serde_json::to_string_pretty(&v)?)?;
    Ok(v)
}

/// One row of the results: a cell with its run's numbers.
fn row(run: &RunPlan, cell: &Cell, sample: &Value, eval: &Value, train: &Value) -> Value {
    let mut r = Map::new();
    r.insert("model".into(), json!(run.model));
    r.insert("dataset".into(), json!(run.dataset));
    r.insert("seed".into(), json!(run.seed));
    r.insert("solver".into(), json!(cell.solver));
    r.insert("spacing".into(), json!(cell.spacing));
    r.insert("steps".into(), json!(cell.steps));
    for key in ["nfe", "n", "seconds"] {
        r.insert(key.into(), sample[key].clone());
    }
    if let Value::Object(m) = sample {
        for (k, v) in m {
            if v.is_number() && !r.contains_key(k) && k != "steps" {
                r.insert(k.clone(), v.clone());
            }
        }
    }
    let est = |v: &Value, prefix: &str, r: &mut Map<String, Value>| {
        for (what, key) in [("mean", ""), ("stderr", "_stderr"), ("n", "_n")] {
            if !v[what].is_null() {
                r.insert(format!("{prefix}{key}"), v[what].clone());
            }
        }
    };
    est(&eval["nelbo"]["nelbo"], "nelbo_nats", &mut r);
    est(&eval["nelbo"]["bits_per_dim"], "nelbo_bpd", &mut r);
    for k in ["l_prior", "l_diff", "l_rec"] {
        if !eval["nelbo"][k].is_null() {
            r.insert(k.into(), eval["nelbo"][k].clone());
        }
    }
    est(&eval["ode_nll"]["nll"], "nll_nats", &mut r);
    est(&eval["ode_nll"]["bits_per_dim"], "nll_bpd", &mut r);
    if let Some(h) = eval["nelbo"]["data_entropy_nats"].as_f64() {
        r.insert("data_entropy_nats".into(), json!(h));
    }
    r.insert("train_seconds".into(), train["train"]["seconds"].clone());
    r.insert("params".into(), train["params"].clone());
    Value::Object(r)
}

/// The columns that lead every table, in this order; the other keys follow alphabetically.
const LEAD: [&str; 9] = [
    "model", "dataset", "seed", "solver", "spacing", "steps", "nfe", "n", "seconds",
];

/// The columns of the results: the keys of every row, [`LEAD`] first.
fn columns(rows: &[Value]) -> Vec<String> {
    let mut rest: Vec<String> = Vec::new();
    for r in rows {
        if let Value::Object(m) = r {
            for k in m.keys() {
                if !LEAD.contains(&k.as_str()) && !rest.contains(k) {
                    rest.push(k.clone());
                }
            }
        }
    }
    rest.sort();
    LEAD.iter()
        .filter(|k| rows.iter().any(|r| !r[**k].is_null()))
        .map(|k| k.to_string())
        .chain(rest)
        .collect()
}

fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(x) if n.is_f64() => super::sample::fmt_metric(x),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

fn write_csv(rows: &[Value], path: &Path) -> Result<()> {
    let cols = columns(rows);
    let mut s = cols.join(",") + "\n";
    for r in rows {
        let line: Vec<String> = cols
            .iter()
            .map(|c| match &r[c] {
                Value::Null => String::new(),
                Value::String(t) => t.clone(),
                v => v.to_string(),
            })
            .collect();
        s += &line.join(",");
        s.push('\n');
    }
    Ok(write_text(path, &s)?)
}

/// Colours of the models in the plots (and their names, for the captions).
const PALETTE: [(&str, RGBColor); 8] = [
    ("blue", RGBColor(31, 119, 180)),
    ("orange", RGBColor(255, 127, 14)),
    ("green", RGBColor(44, 160, 44)),
    ("red", RGBColor(214, 39, 40)),
    ("purple", RGBColor(148, 103, 189)),
    ("brown", RGBColor(140, 86, 75)),
    ("pink", RGBColor(227, 119, 194)),
    ("grey", RGBColor(127, 127, 127)),
];

/// The metric a quality plot shows: the first of these that the rows have.
const QUALITY_KEYS: [&str; 4] = ["fid", "sliced_w2", "mmd2_rbf", "pixel_mean_error"];

/// `results.md` and the plots of one dataset's rows.
fn dataset_report(dataset: &str, rows: &[&Value], runs: &[&RunPlan], out: &Path) -> Result<String> {
    let mut md = format!("## {dataset}\n\n");
    let models: Vec<&str> = {
        let mut m: Vec<&str> = Vec::new();
        for r in runs {
            if !m.contains(&r.model.as_str()) {
                m.push(&r.model);
            }
        }
        m
    };
    let colour = |m: &str| PALETTE[models.iter().position(|x| *x == m).unwrap_or(0) % 8];
    // The models: what each run cost and its likelihood.
    let entropy = rows.iter().find_map(|r| r["data_entropy_nats"].as_f64());
    let excess = |v: &Value| match (v.as_f64(), entropy) {
        (Some(m), Some(h)) => format!(" | {}", super::sample::fmt_metric(m - h)),
        (None, Some(_)) => " | -".into(),
        _ => String::new(),
    };
    let hcol = if entropy.is_some() {
        " | minus H(data)"
    } else {
        ""
    };
    md += &format!("| model | seed | params | train s | NELBO nats{hcol} | bits/dim | n | ODE NLL nats{hcol} | bits/dim | n | run |\n");
    md += &format!(
        "|---|---|---|---|---|{}---|---|---|{}---|---|---|\n",
        if entropy.is_some() { "---|" } else { "" },
        if entropy.is_some() { "---|" } else { "" }
    );
    let pm = |mean: &Value, se: &Value| match (mean.as_f64(), se.as_f64()) {
        (Some(m), Some(s)) => format!(
            "{} ± {}",
            super::sample::fmt_metric(m),
            super::sample::fmt_metric(s)
        ),
        (Some(m), None) => super::sample::fmt_metric(m),
        _ => "-".into(),
    };
    let mut bpd_bars = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let ev = read_json(&run.dir.join("matrix-eval.json")).unwrap_or(Value::Null);
        let tr = read_json(&run.dir.join(METRICS_FILE)).unwrap_or(Value::Null);
        let (ne, nl) = (&ev["nelbo"], &ev["ode_nll"]);
        md += &format!(
            "| {} | {} | {} | {} | {}{} | {} | {} | {}{} | {} | {} | `{}` |\n",
            run.model,
            run.seed,
            cell_text(&tr["params"]),
            cell_text(&tr["train"]["seconds"]),
            pm(&ne["nelbo"]["mean"], &ne["nelbo"]["stderr"]),
            excess(&ne["nelbo"]["mean"]),
            pm(&ne["bits_per_dim"]["mean"], &ne["bits_per_dim"]["stderr"]),
            cell_text(&ne["nelbo"]["n"]),
            pm(&nl["nll"]["mean"], &nl["nll"]["stderr"]),
            excess(&nl["nll"]["mean"]),
            pm(&nl["bits_per_dim"]["mean"], &nl["bits_per_dim"]["stderr"]),
            cell_text(&nl["nll"]["n"]),
            run.dir.strip_prefix(out).unwrap_or(&run.dir).display(),
        );
        let v = ne["bits_per_dim"]["mean"]
            .as_f64()
            .or(ne["nelbo"]["mean"].as_f64());
        if let Some(v) = v {
            let x = i as f64;
            let bar = vec![
                (x - 0.35, 0.0),
                (x - 0.35, v),
                (x + 0.35, v),
                (x + 0.35, 0.0),
            ];
            bpd_bars.push((bar, colour(&run.model).1));
        }
    }
    // The cells.
    let skip = [
        "model",
        "dataset",
        "seed",
        "nelbo_nats",
        "nelbo_nats_stderr",
        "nelbo_nats_n",
        "nelbo_bpd",
        "nelbo_bpd_stderr",
        "nelbo_bpd_n",
        "nll_nats",
        "nll_nats_stderr",
        "nll_nats_n",
        "nll_bpd",
        "nll_bpd_stderr",
        "nll_bpd_n",
        "l_prior",
        "l_diff",
        "l_rec",
        "data_entropy_nats",
        "train_seconds",
        "params",
        "metrics_n",
    ];
    let owned: Vec<Value> = rows.iter().map(|r| (*r).clone()).collect();
    let cols: Vec<String> = columns(&owned)
        .into_iter()
        .filter(|c| !skip.contains(&c.as_str()))
        .collect();
    md += "\nSamples per cell (`n`), wall seconds of the whole draw (`seconds`), network evaluations (`nfe`):\n\n";
    md += &format!("| model | seed | {} |\n", cols.join(" | "));
    md += &format!("|---|---|{}\n", "---|".repeat(cols.len()));
    for r in rows {
        let vals: Vec<String> = cols.iter().map(|c| cell_text(&r[c])).collect();
        md += &format!(
            "| {} | {} | {} |\n",
            cell_text(&r["model"]),
            cell_text(&r["seed"]),
            vals.join(" | ")
        );
    }
    let skipped: Vec<String> = runs
        .iter()
        .filter(|r| r.seed == runs[0].seed)
        .flat_map(|r| {
            r.skipped
                .iter()
                .map(move |(c, why)| format!("- {}, {c}: {why}", r.model))
        })
        .collect();
    if !skipped.is_empty() {
        md += "\nLeft out (the solver or grid cannot run the model):\n\n";
        md += &skipped.join("\n");
        md.push('\n');
    }
    // Plots: one line per (model, solver, spacing, seed) against log10 NFE.
    let quality = QUALITY_KEYS
        .into_iter()
        .find(|k| rows.iter().any(|r| r[*k].is_number()));
    let mut groups: BTreeMap<(String, String, String, u64), Vec<&Value>> = BTreeMap::new();
    for r in rows {
        groups
            .entry((
                cell_text(&r["model"]),
                cell_text(&r["solver"]),
                cell_text(&r["spacing"]),
                r["seed"].as_u64().unwrap_or(0),
            ))
            .or_default()
            .push(r);
    }
    let series = |key: &str, log_y: bool| -> Vec<(Vec<(f64, f64)>, RGBColor)> {
        groups
            .iter()
            .filter_map(|((m, ..), rs)| {
                let mut pts: Vec<(f64, f64)> = rs
                    .iter()
                    .filter_map(|r| {
                        let (x, y) = (r["nfe"].as_f64()?, r[key].as_f64()?);
                        let y = if log_y { y.max(1e-12).log10() } else { y };
                        (x > 0.0 && y.is_finite()).then(|| (x.log10(), y))
                    })
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                (!pts.is_empty()).then(|| (pts, colour(m).1))
            })
            .collect()
    };
    let stem = safe(dataset);
    let mut pictures = Vec::new();
    let mut plot = |name: String, lines: Vec<(Vec<(f64, f64)>, RGBColor)>, what: String| {
        match crate::plot::lines_png(&lines, &out.join(&name)) {
            Ok(()) => pictures.push(format!("- `{name}`: {what}")),
            Err(e) => eprintln!("note: no {name}: {e}"),
        }
    };
    if let Some(q) = quality {
        plot(
            format!("quality-{stem}.png"),
            series(q, false),
            format!("`{q}` (y) against log10 NFE (x), one line per model and solver"),
        );
    }
    plot(
        format!("wall-{stem}.png"),
        series("seconds", true),
        "log10 wall seconds (y) against log10 NFE (x), one line per model and solver".into(),
    );
    if !bpd_bars.is_empty() {
        plot(
            format!("nelbo-{stem}.png"),
            bpd_bars,
            "NELBO (bits/dim for images, nats otherwise), one bar per run in the table's order"
                .into(),
        );
    }
    if !pictures.is_empty() {
        let legend: Vec<String> = models
            .iter()
            .map(|m| format!("{m} {}", colour(m).0))
            .collect();
        md += &format!(
            "\nPlots (colours: {}):\n\n{}\n",
            legend.join(", "),
            pictures.join("\n")
        );
    }
    Ok(md + "\n")
}

pub fn run(env: &Env, a: &MatrixArgs) -> Result<Outcome> {
    let started = Instant::now();
    let file = match &a.file {
        Some(p) => MatrixFile::read(p)?,
        None => MatrixFile::default(),
    };
    let f = file.with_flags(a)?;
    let out = f.out.clone().unwrap_or_else(|| {
        let stem = a
            .file
            .as_ref()
            .and_then(|p| p.file_stem())
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "flags".into());
        PathBuf::from("runs").join(format!("matrix-{stem}"))
    });
    let runs = plan(env, &f, &out)?;
    let total: usize = runs.iter().map(|r| 2 + r.cells.len()).sum();
    eprintln!(
        "matrix: {} runs, {} cells, into {}",
        runs.len(),
        runs.iter().map(|r| r.cells.len()).sum::<usize>(),
        out.display()
    );
    if a.dry_run {
        for r in &runs {
            let state = if r.dir.join(METRICS_FILE).exists() {
                "trained"
            } else if r.dir.join(SPEC_FILE).exists() {
                "started"
            } else {
                "new"
            };
            println!(
                "{} on {} (seed {}): {} cells, {} left out; run {} ({state})",
                r.model,
                r.dataset,
                r.seed,
                r.cells.len(),
                r.skipped.len(),
                r.dir.display()
            );
        }
        return Ok(Outcome::Done);
    }
    let mut done = 0usize;
    let mut tick = |what: &str| {
        done += 1;
        let s = started.elapsed().as_secs();
        eprintln!(
            "[{done}/{total} {:02}:{:02}:{:02}] {what}",
            s / 3600,
            s / 60 % 60,
            s % 60
        );
    };
    let mut rows = Vec::new();
    for run in &runs {
        let name = format!("{} on {} (seed {})", run.model, run.dataset, run.seed);
        if ensure_trained(env, run).with_context(|| format!("training {name}"))?
            == Outcome::Interrupted
        {
            eprintln!("matrix interrupted; run the same command again to finish it");
            return Ok(Outcome::Interrupted);
        }
        tick(&format!("trained {name}"));
        let loaded = RunDir::new(&run.dir).load(env.plugins(), &env.device)?;
        let features = match (&f.features, run.spec.data_shape.len()) {
            (Some(dir), 3) => Some(super::classifier::FeatureRef::for_run(dir, &run.spec, env)?),
            _ => None,
        };
        let eval = evaluate(&f, run, &loaded.pipe, loaded.data.as_ref())
            .with_context(|| format!("evaluating {name}"))?;
        tick(&format!("evaluated {name}"));
        let train = read_json(&run.dir.join(METRICS_FILE)).unwrap_or(Value::Null);
        let cell_dir = out.join("cells").join(format!(
            "{}-{}",
            safe(&run.model),
            run.dir.file_name().unwrap_or_default().to_string_lossy()
        ));
        std::fs::create_dir_all(&cell_dir)
            .with_context(|| format!("cannot create {}", cell_dir.display()))?;
        let counts = crate::cli::DefaultCounts::for_shape(&run.spec.data_shape);
        for cell in &run.cells {
            let prefix = cell_dir.join(cell.id());
            let json_path = prefix.with_extension("json");
            let sample = match read_json(&json_path) {
                Some(v) => v,
                None => {
                    let request = super::sample::Request {
                        n: f.samples.unwrap_or(counts.samples),
                        seed: run.seed,
                        classes: super::sample::ClassChoice::parse(None, &loaded.pipe)?,
                        guidance: 0.0,
                        export: super::sample::Export::parse(&f.export, &run.spec.data_shape)?,
                    };
                    let v = super::sample::draw(
                        env,
                        &loaded.pipe,
                        loaded.data.as_ref(),
                        &cell.sampler,
                        &request,
                        &prefix,
                        features.as_ref(),
                    )
                    .with_context(|| format!("{name}, {}", cell.id()))?;
                    write_text(&json_path, &serde_json::to_string_pretty(&v)?)?;
                    v
                }
            };
            tick(&format!("{name}: {}", cell.id()));
            rows.push(row(run, cell, &sample, &eval, &train));
        }
    }
    let cmd: Vec<String> = std::env::args().collect();
    let cmd = cmd.join(" ");
    write_text(
        &out.join("results.json"),
        &serde_json::to_string_pretty(&rows)?,
    )?;
    write_csv(&rows, &out.join("results.csv"))?;
    let mut md = format!(
        "# Comparison matrix\n\nWritten by `{cmd}` (ndm {}), {} runs and {} cells; this pass took {:.0} s.\nNELBO and ODE NLL: mean ± standard error over `n` held-out examples. Sample metrics: over `n` samples per cell against as many held-out points.\n\n",
        ndm_api::VERSION,
        runs.len(),
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    let mut datasets: Vec<&str> = Vec::new();
    for r in &runs {
        if !datasets.contains(&r.dataset.as_str()) {
            datasets.push(&r.dataset);
        }
    }
    for d in datasets {
        let drows: Vec<&Value> = rows.iter().filter(|r| r["dataset"] == json!(d)).collect();
        let druns: Vec<&RunPlan> = runs.iter().filter(|r| r.dataset == d).collect();
        md += &dataset_report(d, &drows, &druns, &out)?;
    }
    write_text(&out.join("results.md"), &md)?;
    println!(
        "matrix written to {} (results.md, results.csv, results.json, plots)",
        out.display()
    );
    Ok(Outcome::Done)
}
