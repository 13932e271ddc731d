//! Command-line arguments.

use clap::{Args, Parser, Subcommand};
use ndm_api::{Family, SamplerSpec};
use std::path::PathBuf;

/// ndm: composable diffusion models. `runner --transform X --solver Y` trains and samples in one go.
#[derive(Debug, Parser)]
#[command(name = "runner", version, subcommand_negates_reqs = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The flat form: train then sample, with defaults for every part not named.
    #[command(flatten)]
    pub flat: TrainArgs,
}

#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Registry file (presets, plugin libraries): its libraries load. Default: $NDM_REGISTRY (whose
    /// libraries load too), else ./registry.toml (presets only), else the built-in presets.
    #[arg(long, global = true)]
    pub registry: Option<PathBuf>,
    /// cpu or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, global = true, default_value = "cpu")]
    pub device: String,
    /// No progress bars.
    #[arg(long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model and write a run directory (spec, weights, state, samples, metrics).
    Train(Box<TrainArgs>),
    /// Sample from a trained run.
    Sample(SampleArgs),
    /// Evaluate a trained run: NELBO in nats and bits/dim on held-out data.
    Eval(EvalArgs),
    /// A comparison matrix: models x datasets x seeds trained (or reused), each sampled with
    /// solvers x spacings x steps and evaluated; writes results.md/.csv/.json and plots.
    Matrix(MatrixArgs),
    /// Train the small image classifier whose features FID, KID and precision/recall use
    /// (`runner sample --features DIR`); reports its test accuracy and its hash.
    Classifier(ClassifierArgs),
    /// List every registered plugin by family, and the presets.
    List,
}

#[derive(Debug, Args, Clone)]
pub struct ClassifierArgs {
    /// A labelled image dataset (mnist, fashion-mnist, cifar10, image-folder).
    #[arg(long, default_value = "mnist")]
    pub dataset: String,
    /// Set one dataset param: `dataset.dir=DIR` (repeatable).
    #[arg(long = "set", value_name = "dataset.FIELD=VALUE")]
    pub set: Vec<String>,
    #[arg(long, default_value_t = 3000)]
    pub train_steps: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder; default classifiers/DATASET.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `runner matrix [FILE] [flags]`: the file's lists, or flags alone for the simple case; a flag
/// given replaces the file's list.
#[derive(Debug, Args, Clone, Default)]
pub struct MatrixArgs {
    /// A matrix file (TOML: models, datasets, solvers, steps, spacings, seeds, ...).
    pub file: Option<PathBuf>,
    /// Presets, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Datasets, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub datasets: Vec<String>,
    /// Solvers (with their default params), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub solvers: Vec<String>,
    /// Step counts, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub steps: Vec<usize>,
    /// Training seeds, comma-separated (default 0).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Samples per cell (default 10,000 for flat data, 64 for images).
    #[arg(long, short = 'n')]
    pub samples: Option<usize>,
    /// Training steps of every model (default: each preset's).
    #[arg(long)]
    pub train_steps: Option<usize>,
    /// Held-out examples for each run's NELBO (0 skips it).
    #[arg(long)]
    pub eval_examples: Option<usize>,
    /// Leave out the cells a solver or grid cannot run, instead of refusing the matrix.
    #[arg(long)]
    pub skip_incompatible: bool,
    /// Extra sample formats per cell: png, npz.
    #[arg(long, value_delimiter = ',')]
    pub export: Vec<String>,
    /// Output folder (default runs/matrix-FILE, or runs/matrix-flags).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A feature network folder (`runner classifier`) for FID, KID and precision/recall of
    /// image cells.
    #[arg(long, value_name = "DIR")]
    pub features: Option<PathBuf>,
    /// Check the matrix and list its runs (with their folders) and cells; run nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Overrides of one part each: a plugin name, with its default params.
#[derive(Debug, Args, Clone, Default)]
pub struct PartArgs {
    #[arg(long)]
    pub transform: Option<String>,
    #[arg(long)]
    pub schedule: Option<String>,
    #[arg(long)]
    pub param: Option<String>,
    #[arg(long)]
    pub backbone: Option<String>,
    #[arg(long)]
    pub prior: Option<String>,
    #[arg(long)]
    pub objective: Option<String>,
    /// Set one param: `schedule.beta_end=0.03`, `backbone.hidden=256`, `solver.eta=0.5`,
    /// `dataset.noise=0.1`, `train.lr=1e-3`, `model.steps=10` (repeatable).
    #[arg(long = "set", value_name = "PART.FIELD=VALUE")]
    pub set: Vec<String>,
}

/// Sampler choices shared by `train`, `sample` and the flat form.
impl PartArgs {
    /// The plugin flags by family.
    pub fn plugins(&self) -> [(Family, Option<&str>); 6] {
        [
            (Family::Transform, self.transform.as_deref()),
            (Family::Schedule, self.schedule.as_deref()),
            (Family::Param, self.param.as_deref()),
            (Family::Backbone, self.backbone.as_deref()),
            (Family::Prior, self.prior.as_deref()),
            (Family::Objective, self.objective.as_deref()),
        ]
    }
}

#[derive(Debug, Args, Clone, Default)]
pub struct SamplerArgs {
    #[arg(long)]
    pub solver: Option<String>,
    /// Solver steps (a sub-grid of the training grid for discrete models).
    #[arg(long)]
    pub steps: Option<usize>,
    /// uniform, trailing, log-snr, karras or karras:RHO.
    #[arg(long)]
    pub spacing: Option<String>,
    /// Stochasticity of posterior solvers in [0, 1].
    #[arg(long)]
    pub eta: Option<f64>,
    /// Clamp the prediction xhat to [-1, 1] at every step: true or false (default: true for
    /// images, false for other data).
    #[arg(long)]
    pub clip: Option<bool>,
    /// Number of samples to draw (default 10,000 for flat data, 64 for images: an 8x8 grid).
    #[arg(long, short = 'n')]
    pub samples: Option<usize>,
}

/// Default sizes, by kind of data: flat data is cheap per example, images are not.
#[derive(Debug, Clone, Copy)]
pub struct DefaultCounts {
    pub samples: usize,
    pub eval_examples: usize,
}

impl DefaultCounts {
    pub fn for_shape(data_shape: &[usize]) -> DefaultCounts {
        if data_shape.len() == 3 {
            DefaultCounts {
                samples: 64,
                eval_examples: 100,
            }
        } else {
            DefaultCounts {
                samples: 10_000,
                eval_examples: 2000,
            }
        }
    }
}

impl SamplerArgs {
    /// Applies `--steps`, `--spacing` and `--eta` to a sampler spec (`--solver` is a plugin swap).
    pub fn apply(&self, sampler: &mut SamplerSpec) -> anyhow::Result<()> {
        if let Some(n) = self.steps {
            anyhow::ensure!(n > 0, "--steps must be at least 1");
            sampler.steps = Some(n);
        }
        if let Some(s) = &self.spacing {
            sampler.spacing = s.parse()?;
        }
        if let Some(c) = self.clip {
            sampler.clip = Some(c);
        }
        if let Some(eta) = self.eta {
            sampler
                .solver
                .params
                .insert("eta".into(), toml::Value::Float(eta));
        }
        Ok(())
    }
}

#[derive(Debug, Args, Clone, Default)]
pub struct TrainArgs {
    /// A preset of the registry (ddpm, ddim, ...).
    #[arg(long)]
    pub model: Option<String>,
    /// A dataset plugin (checkerboard, moons, 8gaussians, swissroll, gaussian); default checkerboard.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Run directory; default runs/MODEL-DATASET.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint, exactly as its spec.toml records it
    /// (--train-steps may change its length; flags that would change the run are refused).
    #[arg(long)]
    pub resume: bool,
    #[arg(long)]
    pub train_steps: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Held-out examples for the NELBO after training (0 skips it; default 2000 for flat data,
    /// 100 test images for images).
    #[arg(long)]
    pub eval_examples: Option<usize>,
    #[command(flatten)]
    pub parts: PartArgs,
    #[command(flatten)]
    pub sampler: SamplerArgs,
}

#[derive(Debug, Args, Clone)]
pub struct SampleArgs {
    /// The run directory.
    pub run: PathBuf,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output path prefix: writes PREFIX.png and PREFIX.safetensors; default RUN/samples-SOLVER-STEPS.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Set one solver param: `solver.snr=0.1`, `solver.rtol=1e-4` (repeatable).
    #[arg(long = "set", value_name = "solver.FIELD=VALUE")]
    pub set: Vec<String>,
    /// A conditional run's class for every sample (0..K-1), or `all` for an equal share of every
    /// class (images: a grid with one row per class). Default for a conditional run: all.
    #[arg(long, visible_alias = "classes", value_name = "K|all")]
    pub class: Option<String>,
    /// Classifier-free guidance scale w >= 0 of a conditional run: xhat = (1 + w) xhat(z | c) -
    /// w xhat(z); 0 (the default) samples the conditional model.
    #[arg(long, allow_negative_numbers = true)]
    pub guidance: Option<f64>,
    /// A feature network folder written by `runner classifier`: also FID, KID and k-NN
    /// precision/recall of the samples against the test images in its feature space.
    #[arg(long, value_name = "DIR")]
    pub features: Option<PathBuf>,
    /// Also write the samples as `png` (a folder PREFIX-png/ of one PNG per image, what
    /// torch-fidelity and pytorch-fid read) and / or `npz` (PREFIX.npz: `arr_0` bytes
    /// [N, H, W, C] for images, `samples` floats); comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "png,npz")]
    pub export: Vec<String>,
}

#[derive(Debug, Args, Clone)]
pub struct EvalArgs {
    /// The run directory.
    pub run: PathBuf,
    /// Held-out examples (default 2000 for flat data, 100 test images for images).
    #[arg(long)]
    pub examples: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also the NLL under the probability-flow ODE (RK45), for transforms that are the identity at t = 0.
    #[arg(long)]
    pub nll: bool,
    /// Only the ODE NLL: skip the NELBO and keep the other entries of an existing `eval.json`.
    #[arg(long)]
    pub nll_only: bool,
    /// Divergence of the drift: auto (exact up to 16 dimensions), exact, rademacher, gaussian.
    #[arg(long, default_value = "auto")]
    pub trace: String,
    /// Hutchinson probes (independent solves) averaged per example.
    #[arg(long, default_value_t = 1)]
    pub probes: usize,
    /// RK45 relative and absolute tolerances.
    #[arg(long, default_value_t = 1e-5)]
    pub rtol: f64,
    #[arg(long, default_value_t = 1e-5)]
    pub atol: f64,
}
