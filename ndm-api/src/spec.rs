//! Serializable descriptions of models, samplers, training runs and the registry file.

use crate::registry::{Family, Params, PluginRegistry};
use crate::solver::Spacing;
use crate::{NdmError, Result};
use serde::{Deserialize, Serialize};

/// One part of a model: a plugin name within its family and its params (`{ kind = "cosine", s = 0.008 }`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginSpec {
    pub kind: String,
    #[serde(flatten)]
    pub params: Params,
}

impl PluginSpec {
    /// A spec with default params.
    pub fn new(kind: impl Into<String>) -> Self {
        PluginSpec {
            kind: kind.into(),
            params: Params::new(),
        }
    }
    /// Checks the name and the params against the registry and returns the spec with every default
    /// filled in, so a checkpoint records exactly what was built.
    pub fn resolve(&self, family: Family, reg: &PluginRegistry) -> Result<PluginSpec> {
        let info = reg.get(family, &self.kind)?;
        Ok(PluginSpec {
            kind: info.name.to_string(),
            params: (info.resolve)(&self.params)?,
        })
    }
    /// Sets one param from a string, parsed as a TOML value (`0.5`, `true`, `"x"`, bare words as strings).
    /// A dotted key reaches into a nested table, such as the spec of a plugin inside a plugin:
    /// `net.base_channels` sets `base_channels` in the table `net` (created when absent, replacing
    /// a value that is not a table).
    pub fn set(&mut self, key: &str, value: &str) {
        set_nested(&mut self.params, key, parse_value(value));
    }
}

fn set_nested(table: &mut Params, key: &str, v: toml::Value) {
    match key.split_once('.') {
        None => {
            table.insert(key.to_string(), v);
        }
        Some((head, rest)) => {
            let entry = table
                .entry(head.to_string())
                .or_insert_with(|| toml::Value::Table(Params::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(Params::new());
            }
            if let toml::Value::Table(inner) = entry {
                set_nested(inner, rest, v);
            }
        }
    }
}

fn parse_value(value: &str) -> toml::Value {
    value
        .parse::<toml::Value>()
        .ok()
        .or_else(|| {
            format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
        })
        .unwrap_or_else(|| toml::Value::String(value.to_string()))
}

/// The composed model: one plugin per role and the training time grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Discrete training grid `T` (`t_i = i / T`); absent for continuous time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    pub transform: PluginSpec,
    pub schedule: PluginSpec,
    pub param: PluginSpec,
    pub backbone: PluginSpec,
    pub prior: PluginSpec,
    pub objective: PluginSpec,
    /// The decoder `p(x | z_0)` of the NELBO's `L_rec` (for transforms without their own).
    #[serde(default, skip_serializing_if = "Decoder::is_default")]
    pub decoder: Decoder,
    /// A class-conditional model: its networks see the class of each example (and a "no class"
    /// entry, trained by label dropout `train.cond_drop`, for classifier-free guidance).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub conditional: bool,
    /// The number of classes of a conditional model, taken from the dataset when the run is
    /// resolved ([`crate::spec::RunSpec::resolve`]); 0 when unconditional.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub classes: usize,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

/// The decoder `p(x | z_0)` of the reconstruction term, around the prediction `xhat(z_0, 0)` with
/// standard deviation `sigma_0 / alpha_0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decoder {
    /// A Gaussian density: for continuous data, or dequantized discrete data.
    #[default]
    Gaussian,
    /// The Gaussian's mass on the value's cell of 8-bit data (256 cells of `[-1, 1]`, the end
    /// cells open to infinity): a probability of the discrete value, so the NELBO bounds
    /// `-log P(x)` directly, without dequantization.
    Discretized,
}

impl Decoder {
    fn is_default(&self) -> bool {
        *self == Decoder::Gaussian
    }
}

impl ModelSpec {
    /// The parts by family, for resolving and listing.
    pub fn parts_mut(&mut self) -> [(Family, &mut PluginSpec); 6] {
        [
            (Family::Transform, &mut self.transform),
            (Family::Schedule, &mut self.schedule),
            (Family::Param, &mut self.param),
            (Family::Backbone, &mut self.backbone),
            (Family::Prior, &mut self.prior),
            (Family::Objective, &mut self.objective),
        ]
    }
    /// Resolves every part against the registry (names checked, defaults filled in).
    pub fn resolve(&self, reg: &PluginRegistry) -> Result<ModelSpec> {
        if self.steps == Some(0) {
            return Err(NdmError::Spec(
                "model.steps must be at least 1 (or absent for continuous time)".into(),
            ));
        }
        if self.conditional && self.classes == 0 {
            return Err(NdmError::Spec(
                "model.conditional needs the number of classes (model.classes): a run takes it from a dataset with labels".into(),
            ));
        }
        if !self.conditional && self.classes > 0 {
            return Err(NdmError::Spec(format!(
                "model.classes = {} on a model that is not conditional: set model.conditional = true too",
                self.classes
            )));
        }
        let mut out = self.clone();
        for (family, part) in out.parts_mut() {
            *part = part.resolve(family, reg)?;
        }
        Ok(out)
    }
}

/// How to sample by default: a solver, its number of steps and their spacing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerSpec {
    pub solver: PluginSpec,
    /// Solver steps; absent means the training grid (discrete) or 100 (continuous).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    #[serde(default)]
    pub spacing: Spacing,
    /// Clamp the prediction `xhat` to the data range `[-1, 1]` at every step (diffusers'
    /// `clip_sample`). Absent: on for discrete data (images), off otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<bool>,
}

/// Training hyper-parameters. Every field has a default, so a preset or a flag names only what it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    pub batch_size: usize,
    /// AdamW peak learning rate, reached after a linear warm-up of `warmup` steps and then decayed
    /// along a half cosine to `lr * final_lr_ratio` at the last step.
    pub lr: f64,
    pub warmup: usize,
    pub final_lr_ratio: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub adam_eps: f64,
    /// Global gradient-norm clip (0 disables).
    pub grad_clip: f64,
    /// EMA decay of the weights that sampling and evaluation use.
    pub ema_decay: f64,
    /// Seed of every random draw (weights, noise, times, data).
    pub seed: u64,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    /// Conditional models: the probability that an example's label is replaced by "no class" in
    /// a training step, which trains the unconditional model classifier-free guidance needs.
    /// Unconditional models ignore it.
    pub cond_drop: f64,
    /// Changes of `steps` made when a run was resumed with another step count, oldest first. From
    /// each change's `at_step` on, the rate follows a half cosine from the rate the run had reached
    /// at that step down to `lr * final_lr_ratio` at the new `steps`: no jump, and the first
    /// `at_step` steps keep the schedule they were trained with. Empty for a run never changed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub step_changes: Vec<StepChange>,
    /// A model with an encoder (LSGM's VAE): the first `encoder_warmup` steps train the VAE alone,
    /// with a standard normal prior on its latents in place of the diffusion (`docs/math.md`,
    /// "LSGM"); the rest train everything jointly on the objective. Ignored without an encoder.
    #[serde(skip_serializing_if = "is_zero")]
    pub encoder_warmup: usize,
}

/// One change of a run's step count (see [`TrainConfig::step_changes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepChange {
    /// The step the run had reached when it was resumed.
    pub at_step: usize,
    /// `steps` before the change.
    pub previous_steps: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 4000,
            batch_size: 512,
            lr: 2e-3,
            warmup: 100,
            final_lr_ratio: 0.05,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            adam_eps: 1e-8,
            grad_clip: 1.0,
            ema_decay: 0.995,
            seed: 0,
            checkpoint_every: 1000,
            cond_drop: 0.1,
            step_changes: Vec::new(),
            encoder_warmup: 0,
        }
    }
}

impl TrainConfig {
    /// The learning rate at optimizer step `step` (1-based): linear warm-up, then a half cosine to
    /// `lr * final_lr_ratio` at `steps`, continued through [`TrainConfig::step_changes`].
    pub fn lr_at(&self, step: usize) -> f64 {
        let changes = &self.step_changes;
        // Segment k runs from changes[k-1].at_step (0 for k = 0) to its total steps.
        let total = |k: usize| changes.get(k).map_or(self.steps, |c| c.previous_steps);
        let k = changes.iter().take_while(|c| step > c.at_step).count();
        let cosine = |progress: f64| 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos());
        let end = self.lr * self.final_lr_ratio;
        if k == 0 {
            let warm = (step as f64 / self.warmup.max(1) as f64).min(1.0);
            let span = total(0).saturating_sub(self.warmup).max(1) as f64;
            let progress = step.saturating_sub(self.warmup) as f64 / span;
            return self.lr
                * warm
                * (self.final_lr_ratio + (1.0 - self.final_lr_ratio) * cosine(progress));
        }
        let at = changes[k - 1].at_step;
        let from = self.lr_at(at);
        let span = total(k).saturating_sub(at).max(1) as f64;
        end + (from - end) * cosine((step - at) as f64 / span)
    }

    /// Changes the total number of steps of a run that has reached `at_step`, recording the change
    /// so the learning rate continues without a jump. The same total is no change.
    pub fn change_steps(&mut self, at_step: usize, steps: usize) -> Result<()> {
        if steps == self.steps {
            return Ok(());
        }
        if steps <= at_step {
            return Err(NdmError::InvalidArgument(format!(
                "the run is at step {at_step}; --train-steps must be larger to continue it"
            )));
        }
        self.step_changes.push(StepChange {
            at_step,
            previous_steps: self.steps,
        });
        self.steps = steps;
        Ok(())
    }

    /// Rejects values that cannot train.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(NdmError::InvalidArgument(m.to_string()));
        if self.batch_size == 0 {
            return bad("train.batch_size must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("train.lr must be a positive number");
        }
        if !(0.0..=1.0).contains(&self.final_lr_ratio) {
            return bad("train.final_lr_ratio must be in [0, 1]");
        }
        if !(0.0..1.0).contains(&self.cond_drop) {
            return bad("train.cond_drop must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad("train.ema_decay must be in [0, 1)");
        }
        // AdamW divides by 1 - beta^t and by sqrt(v) + eps: beta = 1 or eps = 0 divide by zero.
        if !(0.0..1.0).contains(&self.beta1) {
            return bad("train.beta1 must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return bad("train.beta2 must be in [0, 1)");
        }
        if !(self.adam_eps.is_finite() && self.adam_eps > 0.0) {
            return bad("train.adam_eps must be a positive number");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("train.weight_decay must be a non-negative number");
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return bad("train.grad_clip must be a non-negative number (0 disables clipping)");
        }
        if self.checkpoint_every == 0 {
            return bad("train.checkpoint_every must be at least 1");
        }
        Ok(())
    }
}

/// A named configuration in `registry.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub summary: String,
    pub model: ModelSpec,
    pub sampler: SamplerSpec,
    #[serde(default)]
    pub train: TrainConfig,
    /// What changes when the dataset holds images (`[C, H, W]`): a preset is written for flat
    /// data and says here which parts, training values and sampler it uses on images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<ImageVariant>,
}

/// The image variant of a preset ([`Preset::images`]): parts that replace the preset's, training
/// values set on top of its training config, and optionally another sampler.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageVariant {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<PluginSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<PluginSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param: Option<PluginSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backbone: Option<PluginSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior: Option<PluginSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective: Option<PluginSpec>,
    /// The decoder on images (LSGM's VAE scores 8-bit pixels with `discretized`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder: Option<Decoder>,
    /// Training fields to set (`{ batch_size = 64, lr = 2e-4 }`).
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub train: toml::Table,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<SamplerSpec>,
}

/// Everything a run directory's `spec.toml` records: the resolved model, sampler, training
/// config and dataset, with the versions that wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    pub ndm_version: String,
    pub data_shape: Vec<usize>,
    pub dataset: PluginSpec,
    pub model: ModelSpec,
    pub sampler: SamplerSpec,
    pub train: TrainConfig,
}

#[cfg(test)]
mod lr_schedule_tests {
    use super::*;

    #[test]
    fn changing_the_step_count_continues_the_rate_without_a_jump() {
        let base = TrainConfig {
            steps: 1000,
            warmup: 100,
            ..TrainConfig::default()
        };
        // Interrupted at 600 and extended to 2000; then at 1500 shortened to 1800.
        let mut c = base.clone();
        c.change_steps(600, 2000).unwrap();
        c.change_steps(1500, 1800).unwrap();
        for s in 1..=600 {
            assert_eq!(c.lr_at(s), base.lr_at(s), "step {s} changed");
        }
        let end = c.lr * c.final_lr_ratio;
        let mut prev = c.lr_at(600);
        for s in 601..=1800 {
            let lr = c.lr_at(s);
            // Decreasing, with steps no larger than the original schedule's steepest.
            let steepest = c.lr * std::f64::consts::PI / 2.0 / 900.0;
            assert!(
                lr <= prev + 1e-15 && prev - lr < steepest,
                "step {s}: {prev} -> {lr}"
            );
            prev = lr;
        }
        assert!((c.lr_at(1800) - end).abs() < 1e-12);
        assert!((c.lr_at(2500) - end).abs() < 1e-12);
        // A completed run extended stays at the final rate.
        let mut done = base.clone();
        done.change_steps(1000, 3000).unwrap();
        assert!((done.lr_at(2000) - end).abs() < 1e-12);
        // The same count is no change; a count already passed is refused.
        let mut same = base.clone();
        same.change_steps(500, 1000).unwrap();
        assert!(same.step_changes.is_empty());
        assert!(base.clone().change_steps(500, 400).is_err());
    }
}
