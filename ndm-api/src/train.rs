//! Training: AdamW with warm-up, global-norm clipping and an EMA of the weights, over any objective.
//! candle's AdamW keeps its moments private, so the optimizer lives here where its state can be
//! checkpointed and resumed bit for bit.

use crate::dataset::Split;
use crate::pipeline::Pipeline;
use crate::rng::Rng;
use crate::spec::TrainConfig;
use crate::{Dataset, NdmError, Result};
use candle_core::{DType, Tensor, Var};
use std::collections::HashMap;

/// Everything needed to continue training exactly where it stopped.
#[derive(Debug, Clone)]
pub struct TrainState {
    /// Optimizer steps taken.
    pub step: usize,
    /// AdamW first and second moments by variable name.
    pub m: HashMap<String, Tensor>,
    pub v: HashMap<String, Tensor>,
    /// EMA of the weights by variable name (what sampling and evaluation use).
    pub ema: HashMap<String, Tensor>,
    /// The generator of data batches, times and noise.
    pub rng: Rng,
    /// The dataset's iteration state after the last step ([`Dataset::iteration_state`]).
    pub data: Vec<u64>,
}

impl TrainState {
    /// A fresh state: zero moments, EMA equal to the initial weights.
    pub fn new(pipe: &Pipeline, seed: u64) -> Result<Self> {
        let mut m = HashMap::new();
        let mut v = HashMap::new();
        let mut ema = HashMap::new();
        for (name, var) in pipe.vars() {
            m.insert(name.clone(), var.zeros_like()?);
            v.insert(name.clone(), var.zeros_like()?);
            ema.insert(name, var.as_tensor().detach().copy()?);
        }
        Ok(TrainState {
            step: 0,
            m,
            v,
            ema,
            rng: Rng::derived(seed, "train"),
            data: Vec::new(),
        })
    }
}

/// What one step reports.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub step: usize,
    pub loss: f64,
    pub grad_norm: f64,
    /// The learning rate of this step.
    pub lr: f64,
    pub terms: Vec<(String, f64)>,
}

/// Runs optimizer steps of a pipeline's objective on a dataset.
#[derive(Debug)]
pub struct Trainer<'a> {
    pipe: &'a Pipeline,
    cfg: TrainConfig,
    vars: Vec<(String, Var)>,
}

fn scalar(t: &Tensor) -> candle_core::Result<f64> {
    t.to_dtype(DType::F64)?.to_scalar::<f64>()
}

impl<'a> Trainer<'a> {
    pub fn new(pipe: &'a Pipeline, cfg: &TrainConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Trainer {
            pipe,
            cfg: cfg.clone(),
            vars: pipe.vars(),
        })
    }

    /// One step. A non-finite loss or gradient is an error and leaves weights and state untouched,
    /// so the caller can still checkpoint the last good state.
    pub fn step(&self, state: &mut TrainState, data: &dyn Dataset) -> Result<StepReport> {
        let cfg = &self.cfg;
        let step = state.step + 1;
        let x = data.sample(
            cfg.batch_size,
            Split::Train,
            &mut state.rng,
            &self.pipe.device,
        )?;
        let data_after = data.iteration_state();
        let out = self.pipe.objective.loss(self.pipe, &x, &mut state.rng)?;
        let loss = scalar(&out.loss)?;
        if !loss.is_finite() {
            return Err(NdmError::NonFinite(format!(
                "the loss became {loss} at step {step}"
            )));
        }
        let grads = out.loss.backward()?;
        let mut sq = 0.0;
        let mut gs = Vec::with_capacity(self.vars.len());
        for (name, var) in &self.vars {
            let g = match grads.get(var.as_tensor()) {
                Some(g) => g.clone(),
                None => var.zeros_like()?,
            };
            sq += scalar(&g.sqr()?.sum_all()?)?;
            gs.push((name, var, g));
        }
        let norm = sq.sqrt();
        if !norm.is_finite() {
            return Err(NdmError::NonFinite(format!(
                "the gradient norm became {norm} at step {step}"
            )));
        }
        let clip = if cfg.grad_clip > 0.0 && norm > cfg.grad_clip {
            cfg.grad_clip / norm
        } else {
            1.0
        };
        let lr = cfg.lr_at(step);
        let (b1, b2) = (cfg.beta1, cfg.beta2);
        let (c1, c2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
        let ema_decay = cfg
            .ema_decay
            .min((1.0 + step as f64) / (10.0 + step as f64));
        let missing = |n: &str| NdmError::Spec(format!("training state has no entry for `{n}`"));
        for (name, var, g) in gs {
            // Optimizer arithmetic must not be recorded: a tracked update would chain every step's
            // graph to the next and memory would grow with the number of steps.
            let g = (g.detach() * clip)?;
            let m = state.m.get(name).ok_or_else(|| missing(name))?;
            let v = state.v.get(name).ok_or_else(|| missing(name))?;
            let m = ((m * b1)? + (&g * (1.0 - b1))?)?;
            let v = ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let upd = ((&m / c1)? / ((&v / c2)?.sqrt()? + cfg.adam_eps)?)?;
            let w = var.as_tensor().detach();
            let new_w = ((&w * (1.0 - lr * cfg.weight_decay))? - (upd * lr)?)?;
            var.set(&new_w)?;
            let e = state.ema.get(name).ok_or_else(|| missing(name))?;
            let e = ((e * ema_decay)? + (new_w * (1.0 - ema_decay))?)?;
            state.ema.insert(name.clone(), e.detach());
            state.m.insert(name.clone(), m.detach());
            state.v.insert(name.clone(), v.detach());
        }
        state.step = step;
        state.data = data_after;
        Ok(StepReport {
            step,
            loss,
            grad_norm: norm,
            lr,
            terms: out.terms,
        })
    }
}

/// What the step hook tells the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// Save a checkpoint at this step boundary and return (Ctrl-C, a time budget, early stopping).
    Stop,
}

/// How a training run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    /// The step the state is at now.
    pub step: usize,
    /// Steps taken by this call.
    pub steps_run: usize,
    pub seconds: f64,
    /// Mean loss over the last (up to) 100 steps of this call; NaN if none ran.
    pub final_loss: f64,
    /// Whether the step hook stopped the run before `steps`.
    pub stopped_early: bool,
}

impl TrainSummary {
    pub fn steps_per_second(&self) -> f64 {
        self.steps_run as f64 / self.seconds.max(1e-9)
    }
}

/// Trains until `cfg.steps`: calls `on_step` after every step, and `checkpoint` every
/// `cfg.checkpoint_every` steps, when `on_step` says [`Control::Stop`], and at the last step. A
/// non-finite loss or gradient checkpoints the last good state and returns
/// [`NdmError::NonFinite`] naming its step.
pub fn train_loop(
    trainer: &Trainer,
    state: &mut TrainState,
    data: &dyn Dataset,
    on_step: &mut dyn FnMut(&StepReport) -> Control,
    checkpoint: &mut dyn FnMut(&TrainState) -> Result<()>,
) -> Result<TrainSummary> {
    let t0 = std::time::Instant::now();
    let start = state.step;
    let mut recent = std::collections::VecDeque::with_capacity(100);
    let mut stopped_early = false;
    if !state.data.is_empty() {
        data.restore_iteration_state(&state.data)?;
    }
    while state.step < trainer.cfg.steps {
        let report = match trainer.step(state, data) {
            Ok(r) => r,
            Err(NdmError::NonFinite(m)) => {
                checkpoint(state)?;
                return Err(NdmError::NonFinite(format!(
                    "{m}; training stopped, the last good state (step {}) is saved",
                    state.step
                )));
            }
            Err(e) => return Err(e),
        };
        if recent.len() == 100 {
            recent.pop_front();
        }
        recent.push_back(report.loss);
        let stop = on_step(&report) == Control::Stop;
        let last = state.step == trainer.cfg.steps;
        if stop || last || state.step.is_multiple_of(trainer.cfg.checkpoint_every) {
            checkpoint(state)?;
        }
        if stop {
            stopped_early = !last;
            break;
        }
    }
    Ok(TrainSummary {
        step: state.step,
        steps_run: state.step - start,
        seconds: t0.elapsed().as_secs_f64(),
        final_loss: if recent.is_empty() {
            f64::NAN
        } else {
            recent.iter().sum::<f64>() / recent.len() as f64
        },
        stopped_early,
    })
}
