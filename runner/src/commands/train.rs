//! `runner train` and the flat form: make or resume a run directory, train with a progress bar and
//! Ctrl-C handling, then sample and evaluate.

use crate::cli::TrainArgs;
use crate::env::Env;
use crate::Outcome;
use anyhow::{bail, Context, Result};
use ndm_api::checkpoint::{write_text, RunDir, METRICS_FILE, SPEC_FILE};
use ndm_api::train::{train_loop, Control, TrainState, Trainer};
use ndm_api::{Family, RunSpec};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// The per-step log of a run directory.
const LOG_FILE: &str = "train-log.csv";

/// `train-log.csv`: one row per step (step, loss, gradient norm, learning rate, seconds since
/// this process started training). A resumed run keeps the rows up to its checkpoint's step and
/// appends; rows past it (steps redone after the checkpoint) are dropped.
struct TrainLog {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    t0: std::time::Instant,
    error: Option<std::io::Error>,
}

impl TrainLog {
    fn open(path: &std::path::Path, step: usize) -> Result<TrainLog> {
        let header = "step,loss,grad_norm,lr,seconds";
        let kept: Vec<String> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter(|l| {
                l.split(',')
                    .next()
                    .and_then(|s| s.parse::<usize>().ok())
                    .is_some_and(|s| s <= step)
            })
            .map(str::to_string)
            .collect();
        let mut text = format!("{header}\n");
        for l in kept {
            text += &l;
            text.push('\n');
        }
        ndm_api::checkpoint::write_text(path, &text)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("cannot append to {}", path.display()))?;
        Ok(TrainLog {
            path: path.to_path_buf(),
            out: std::io::BufWriter::new(file),
            t0: std::time::Instant::now(),
            error: None,
        })
    }

    fn row(&mut self, r: &ndm_api::train::StepReport) {
        use std::io::Write;
        if self.error.is_none() {
            let secs = self.t0.elapsed().as_secs_f64();
            let line = format!("{},{},{},{},{secs:.3}", r.step, r.loss, r.grad_norm, r.lr);
            if let Err(e) = writeln!(self.out, "{line}") {
                self.error = Some(e);
            }
        }
    }

    fn finish(mut self) -> Result<()> {
        use std::io::Write;
        if let Some(e) = self.error.take() {
            return Err(e).with_context(|| format!("cannot write {}", self.path.display()));
        }
        self.out
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// (step, loss) of every row of a training log.
fn read_losses(path: &std::path::Path) -> Result<Vec<(usize, f64)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split(',');
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect())
}

/// The dataset when none is named.
const DEFAULT_DATASET: &str = "checkerboard";

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

fn preset_name(a: &TrainArgs) -> Result<String> {
    a.model.clone().map_or_else(|| default_preset(a), Ok)
}

fn dataset_name(a: &TrainArgs) -> &str {
    a.dataset.as_deref().unwrap_or(DEFAULT_DATASET)
}

/// The run spec a new training run asks for: a preset with the command's overrides, resolved.
pub fn new_spec(env: &Env, a: &TrainArgs) -> Result<RunSpec> {
    // The dataset's own settings first: its shape picks the preset's variant for images.
    let mut dataset = ndm_api::PluginSpec::new(dataset_name(a));
    let (data_sets, other_sets): (Vec<&String>, Vec<&String>) =
        a.parts.set.iter().partition(|s| s.starts_with("dataset."));
    for s in data_sets {
        let (field, value) = s["dataset.".len()..]
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--set {s}: expected PART.FIELD=VALUE"))?;
        dataset.set(field, value);
    }
    let mut spec = RunSpec::from_preset(
        &env.setup.file,
        &preset_name(a)?,
        dataset,
        env.plugins(),
        &env.device,
    )?;
    for (family, kind) in a.parts.plugins() {
        if let Some(k) = kind {
            spec.swap_plugin(family, k);
        }
    }
    if let Some(s) = &a.sampler.solver {
        spec.swap_plugin(Family::Solver, s);
    }
    a.sampler.apply(&mut spec.sampler)?;
    let t = &mut spec.train;
    t.steps = a.train_steps.unwrap_or(t.steps);
    t.batch_size = a.batch_size.unwrap_or(t.batch_size);
    t.lr = a.lr.unwrap_or(t.lr);
    t.seed = a.seed.unwrap_or(t.seed);
    for s in other_sets {
        spec.set(s).context("--set")?;
    }
    Ok(spec.resolve(env.plugins(), &env.device)?)
}

/// Flags that choose what a run is. A resumed run is what its `spec.toml` records, so these are
/// refused rather than silently ignored. (A part flag is named like its family: `--schedule`.)
fn flags_resume_cannot_honour(a: &TrainArgs) -> Vec<String> {
    let (p, s) = (&a.parts, &a.sampler);
    let given = [
        ("model", a.model.is_some()),
        ("dataset", a.dataset.is_some()),
        ("batch-size", a.batch_size.is_some()),
        ("lr", a.lr.is_some()),
        ("seed", a.seed.is_some()),
        ("set", !p.set.is_empty()),
        ("solver", s.solver.is_some()),
        ("steps", s.steps.is_some()),
        ("spacing", s.spacing.is_some()),
        ("eta", s.eta.is_some()),
        ("clip", s.clip.is_some()),
    ];
    let parts = p.plugins().map(|(f, k)| (f.key(), k.is_some()));
    given
        .into_iter()
        .chain(parts)
        .filter(|&(_, on)| on)
        .map(|(flag, _)| format!("--{flag}"))
        .collect()
}

/// Set by Ctrl-C; the training loop stops at the next step boundary and saves a checkpoint.
fn interrupt_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        // If a handler cannot be installed, Ctrl-C keeps its default meaning (the last
        // checkpoint is still on disk, written atomically).
        let _ = ctrlc::set_handler(move || f.store(true, Ordering::SeqCst));
        flag
    })
    .clone()
}

pub fn run(env: &Env, a: &TrainArgs) -> Result<Outcome> {
    let out = match &a.out {
        Some(o) => o.clone(),
        None => PathBuf::from("runs").join(format!("{}-{}", preset_name(a)?, dataset_name(a))),
    };
    let rd = RunDir::new(&out);
    let (spec, pipe, state) = if a.resume {
        let refused = flags_resume_cannot_honour(a);
        if !refused.is_empty() {
            bail!(
                "--resume continues the run recorded in {} and cannot change {}; only --train-steps, -n and --eval-examples apply (start a new run with another --out)",
                rd.file(SPEC_FILE).display(),
                refused.join(", ")
            );
        }
        let mut spec = rd.read_spec()?;
        let pipe = spec.build_pipeline(env.plugins(), &env.device)?;
        let state = rd.load_state(&pipe)?;
        if let Some(n) = a.train_steps {
            spec.train.change_steps(state.step, n)?;
            rd.write_spec(&spec)?;
        }
        (spec, pipe, state)
    } else {
        if rd.file(SPEC_FILE).exists() {
            bail!(
                "{} already holds a run; pass --resume to continue it or --out DIR for a new one",
                out.display()
            );
        }
        let spec = new_spec(env, a)?;
        let pipe = spec.build_pipeline(env.plugins(), &env.device)?;
        rd.create()?;
        rd.write_spec(&spec)?;
        let state = TrainState::new(&pipe, spec.train.seed)?;
        (spec, pipe, state)
    };
    let counts = crate::cli::DefaultCounts::for_shape(&spec.data_shape);
    let after = After {
        samples: a.sampler.samples.unwrap_or(counts.samples),
        eval_examples: a.eval_examples.unwrap_or(counts.eval_examples),
    };
    fit(env, &rd, &spec, &pipe, state, &after)
}

/// What a finished training run does next: draw samples (0: none) and the NELBO on held-out
/// examples (0: none).
#[derive(Debug, Clone, Copy)]
pub struct After {
    pub samples: usize,
    pub eval_examples: usize,
}

/// Trains the run in `rd` (its spec written, its state fresh or loaded) to `spec.train.steps`,
/// with a progress bar, the per-step log and Ctrl-C handling; then writes the loss curve, the EMA
/// weights' samples, pictures, NELBO and `metrics.json`.
pub fn fit(
    env: &Env,
    rd: &RunDir,
    spec: &RunSpec,
    pipe: &ndm_api::Pipeline,
    mut state: TrainState,
    after: &After,
) -> Result<Outcome> {
    let out = &rd.path;
    let interrupted = interrupt_flag();
    let data = spec.build_dataset(env.plugins(), &env.device)?;
    let trainer = Trainer::new(pipe, &spec.train)?;
    let mut log = TrainLog::open(&rd.file(LOG_FILE), state.step)?;
    let pb = env.progress(spec.train.steps as u64, "train");
    pb.set_position(state.step as u64);
    let log_ref = &mut log;
    let mut on_step = |r: &ndm_api::train::StepReport| {
        log_ref.row(r);
        pb.set_position(r.step as u64);
        if r.step.is_multiple_of(25) {
            pb.set_message(format!("loss {:.4}", r.loss));
        }
        if interrupted.load(Ordering::SeqCst) {
            Control::Stop
        } else {
            Control::Continue
        }
    };
    let mut save = |s: &TrainState| rd.write_checkpoint(pipe, s);
    let result = train_loop(&trainer, &mut state, data.as_ref(), &mut on_step, &mut save);
    log.finish()?;
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            pb.abandon();
            return Err(e).with_context(|| format!("run {}", out.display()));
        }
    };
    pb.finish_and_clear();
    if let Err(e) =
        crate::plot::loss_curve_png(&read_losses(&rd.file(LOG_FILE))?, &rd.file("loss.png"))
    {
        eprintln!("note: no loss curve: {e}");
    }
    if summary.stopped_early {
        eprintln!(
            "interrupted at step {} of {}; the checkpoint is saved in {}; continue with: runner train --out {} --resume",
            summary.step,
            spec.train.steps,
            out.display(),
            out.display()
        );
        return Ok(Outcome::Interrupted);
    }
    pipe.set_weights(&state.ema)?;
    let mut metrics = json!({
        "preset": spec.preset,
        "dataset": spec.dataset.kind,
        "params": pipe.num_params(),
        "train": {
            "steps": summary.step,
            "steps_this_run": summary.steps_run,
            "seconds": summary.seconds,
            "steps_per_second": summary.steps_per_second(),
            "final_loss_mean_last_100": summary.final_loss,
        },
    });
    println!(
        "trained {} on {} for {} steps ({} params) in {:.1} s ({:.1} steps/s), final loss {:.4}",
        spec.preset.as_deref().unwrap_or("model"),
        spec.dataset.kind,
        summary.step,
        pipe.num_params(),
        summary.seconds,
        summary.steps_per_second(),
        summary.final_loss
    );
    let n_samples = after.samples;
    if n_samples > 0 {
        metrics["samples"] = super::sample::draw(
            env,
            pipe,
            data.as_ref(),
            &spec.sampler,
            &super::sample::Request {
                n: n_samples,
                seed: spec.train.seed,
                classes: super::sample::ClassChoice::parse(None, pipe)?,
                guidance: 0.0,
                export: super::sample::Export::default(),
            },
            &rd.file("samples"),
            None,
        )?;
    }
    if spec.data_shape.len() == 3 {
        super::pictures::denoising_strip(pipe, data.as_ref(), &rd.file("denoise.png"))?;
        if !pipe.transform.is_identity() {
            super::pictures::transform_strip(pipe, data.as_ref(), &rd.file("transform.png"))?;
        }
    }
    let n_eval = after.eval_examples;
    if n_eval > 0 {
        metrics["eval"] = super::eval::nelbo(pipe, data.as_ref(), n_eval, 1)?;
    }
    write_text(
        &rd.file(METRICS_FILE),
        &serde_json::to_string_pretty(&metrics)?,
    )?;
    println!("run written to {}", out.display());
    Ok(Outcome::Done)
}
