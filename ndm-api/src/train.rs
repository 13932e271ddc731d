//! Training: AdamW with warm-up, global-norm clipping and an EMA of the weights, over any objective.
//! candle's AdamW keeps its moments private, so the optimizer lives here where its state can be
//! checkpointed and resumed bit for bit.

use crate::dataset::Split;
use crate::pipeline::Pipeline;
use crate::rng::Rng;
use crate::spec::TrainConfig;
use crate::{Dataset, NdmError, Result};
use candle_core::{DType, Tensor, Var};
use rayon::prelude::*;
use std::collections::HashMap;

/// Everything needed to continue training exactly where it stopped.
///
/// On the CPU the trainer updates the moment and EMA tensors in place (and the weights, as every
/// optimizer does), so `clone` copies them: a clone is a snapshot that later steps leave alone.
#[derive(Debug)]
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

impl Clone for TrainState {
    fn clone(&self) -> Self {
        let deep = |m: &HashMap<String, Tensor>| -> HashMap<String, Tensor> {
            m.iter()
                .map(|(k, t)| (k.clone(), t.copy().unwrap_or_else(|_| t.clone())))
                .collect()
        };
        TrainState {
            step: self.step,
            m: deep(&self.m),
            v: deep(&self.v),
            ema: deep(&self.ema),
            rng: self.rng.clone(),
            data: self.data.clone(),
        }
    }
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
    /// Update f32 weights on the CPU in place, one pass per tensor in f64 arithmetic, instead of
    /// a chain of tensor ops (on by default; the two give the same numbers up to rounding).
    pub host_update: bool,
}

impl<'a> Trainer<'a> {
    pub fn new(pipe: &'a Pipeline, cfg: &TrainConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Trainer {
            pipe,
            cfg: cfg.clone(),
            vars: pipe.vars(),
            host_update: true,
        })
    }

    /// A conditional model's classes for a training step: the batch's labels, each replaced by
    /// "no class" with probability `train.cond_drop` (label dropout, from a generator derived
    /// from the seed and the step, so a resumed run drops the same labels). `None` for an
    /// unconditional model, which draws nothing here. The labels stay on their device: the drops
    /// are drawn on the host and applied there.
    fn training_classes(
        &self,
        labels: Option<Tensor>,
        data: &dyn Dataset,
        step: usize,
    ) -> Result<Option<Tensor>> {
        let k = self.pipe.classes();
        if k == 0 {
            return Ok(None);
        }
        let labels = labels.ok_or_else(|| {
            NdmError::Incompatible("a conditional model needs a dataset with labels".into())
        })?;
        if data.num_classes() > k {
            return Err(NdmError::Incompatible(format!(
                "the dataset has {} classes; the model has {k}",
                data.num_classes()
            )));
        }
        let ids = labels.to_dtype(DType::U32)?;
        if self.cfg.cond_drop <= 0.0 {
            return Ok(Some(ids));
        }
        let n = ids.dim(0)?;
        let mut rng = Rng::derived(self.cfg.seed.wrapping_add(step as u64), "cond_drop");
        let drop: Vec<u8> = (0..n)
            .map(|_| u8::from(rng.uniform() < self.cfg.cond_drop))
            .collect();
        let drop = Tensor::from_vec(drop, n, ids.device())?;
        let none = Tensor::full(k as u32, n, ids.device())?;
        Ok(Some(drop.where_cond(&none, &ids)?))
    }

    /// A fresh run's data-dependent initialisation (Glow's actnorm): the prior sees latents
    /// `z_end ~ q(z_end | x)` of the first batch, drawn from a generator of their own so the
    /// training stream is the same with or without it; the EMA restarts from the new weights.
    fn data_init(&self, state: &mut TrainState, x: &Tensor) -> Result<()> {
        let mut rng = Rng::derived(self.cfg.seed, "data-init");
        let (x, _) = crate::elbo::encode(self.pipe, x, &mut rng)?;
        let (_, _, z) = crate::elbo::end_latent(self.pipe, &x, &mut rng)?;
        self.pipe.prior.data_init(&z.detach())?;
        for (name, var) in &self.vars {
            state
                .ema
                .insert(name.clone(), var.as_tensor().detach().copy()?);
        }
        Ok(())
    }

    /// One step. A non-finite loss or gradient is an error and leaves weights and state untouched,
    /// so the caller can still checkpoint the last good state.
    pub fn step(&self, state: &mut TrainState, data: &dyn Dataset) -> Result<StepReport> {
        let cfg = &self.cfg;
        let step = state.step + 1;
        let (x, labels) = data.sample_labeled(
            cfg.batch_size,
            Split::Train,
            &mut state.rng,
            &self.pipe.device,
        )?;
        let data_after = data.iteration_state();
        if state.step == 0 && self.pipe.prior.needs_data_init() {
            self.data_init(state, &x)?;
        }
        let class = self.training_classes(labels, data, step)?;
        let mode = self
            .pipe
            .training_mode(Rng::derived(cfg.seed.wrapping_add(step as u64), "dropout"));
        let cond = self.pipe.conditioned(class);
        let out = match self.pipe.transform.encoder() {
            Some(enc) if step <= cfg.encoder_warmup => {
                encoder_warmup_loss(enc, self.pipe.spec.decoder, &x, &mut state.rng)?
            }
            _ => crate::kernels::expect_backward(|| {
                self.pipe.objective.loss(self.pipe, &x, &mut state.rng)
            })?,
        };
        drop(cond);
        drop(mode);
        // A non-finite loss only makes non-finite gradients: nothing changes before both are
        // checked below.
        let grads = out.loss.backward()?;
        // VDM: the schedule's interior weights descend the variance of the L_diff estimate.
        let variance_grads = match &out.variance {
            Some(v) => Some((v.backward()?, self.pipe.schedule.variance_trained_vars())),
            None => None,
        };
        let mut gs = Vec::with_capacity(self.vars.len());
        for (name, var) in &self.vars {
            let store = match &variance_grads {
                Some((vg, names)) if names.contains(name) => vg,
                _ => &grads,
            };
            // Optimizer arithmetic must not be recorded: a tracked update would chain every step's
            // graph to the next and memory would grow with the number of steps.
            let g = match store.get(var.as_tensor()) {
                Some(g) => g.detach(),
                None => var.zeros_like()?,
            };
            gs.push((name, var, g));
        }
        let host = self.host_update && gs.iter().all(|(_, v, g)| on_host_f32(v) && on_host_f32(g));
        // The step's one read from the device: the loss, its logged terms and, off the CPU, the
        // squared gradient norm, in one copy.
        let device_sq_norm = if host {
            None
        } else {
            Some(sq_norm_tensor(&gs)?)
        };
        let mut wanted: Vec<&Tensor> = vec![&out.loss];
        wanted.extend(out.terms.iter().map(|(_, t)| t));
        wanted.extend(device_sq_norm.as_ref());
        let vals = crate::objective::read_scalars(&wanted)?;
        let loss = vals[0];
        if !loss.is_finite() {
            return Err(NdmError::NonFinite(format!(
                "the loss became {loss} at step {step}"
            )));
        }
        let terms = out
            .terms
            .iter()
            .map(|(n, _)| n.clone())
            .zip(vals[1..].iter().copied())
            .collect();
        let norm = match device_sq_norm {
            Some(_) => vals[vals.len() - 1].sqrt(),
            None => host_sq_norm(&gs)?.sqrt(),
        };
        if !norm.is_finite() {
            return Err(NdmError::NonFinite(format!(
                "the gradient norm became {norm} at step {step}"
            )));
        }
        let lr = cfg.lr_at(step);
        let (b1, b2) = (cfg.beta1, cfg.beta2);
        let mut upd = Update {
            clip: 1.0,
            b1,
            b2,
            c1: 1.0 - b1.powi(step as i32),
            c2: 1.0 - b2.powi(step as i32),
            eps: cfg.adam_eps,
            lr,
            decay: 1.0 - lr * cfg.weight_decay,
            ema: cfg
                .ema_decay
                .min((1.0 + step as f64) / (10.0 + step as f64)),
        };
        upd.set_clip(norm, cfg.grad_clip);
        if host {
            in_place_update(&gs, state, &upd)?;
        } else {
            tensor_update(&gs, state, &upd)?;
        }
        state.step = step;
        state.data = data_after;
        Ok(StepReport {
            step,
            loss,
            grad_norm: norm,
            lr,
            terms,
        })
    }
}

/// The warm-up stage of a model with an encoder: the VAE alone, its latents under `N(0, I)`:
/// `E_q[-log p(x | z)] + KL(q(z | x) || N(0, I))` per data dimension (one draw, the KL in closed
/// form).
fn encoder_warmup_loss(
    enc: &dyn crate::Encoder,
    decoder: crate::spec::Decoder,
    x: &Tensor,
    rng: &mut Rng,
) -> candle_core::Result<crate::LossOutput> {
    let (mean, log_std, z) = crate::elbo::posterior_draw(enc, x, rng)?;
    let nll = enc.decoder_nll(x, &z, decoder)?.mean_all()?;
    let per_dim =
        ((mean.sqr()? + (&log_std * 2.0)?.exp()?)? - (&log_std * 2.0)?)?.affine(0.5, -0.5)?;
    let kl = per_dim.flatten_from(1)?.sum(1)?.mean_all()?;
    let dims = (x.elem_count() / x.dim(0)?) as f64;
    let loss = ((&nll + &kl)? / dims)?;
    Ok(crate::LossOutput::new(
        loss,
        vec![("vae_nll".into(), nll), ("vae_kl".into(), kl)],
    ))
}

/// The scalars of one AdamW step with bias correction, decoupled weight decay and the EMA:
/// `g' = clip g`, `m = b1 m + (1 - b1) g'`, `v = b2 v + (1 - b2) g'^2`,
/// `w = decay w - lr (m / c1) / (sqrt(v / c2) + eps)`, `ema = d ema + (1 - d) w`.
#[derive(Debug, Clone, Copy)]
struct Update {
    clip: f64,
    b1: f64,
    b2: f64,
    c1: f64,
    c2: f64,
    eps: f64,
    lr: f64,
    /// `1 - lr * weight_decay`.
    decay: f64,
    ema: f64,
}

impl Update {
    /// The clip factor for a gradient norm.
    fn set_clip(&mut self, norm: f64, grad_clip: f64) {
        self.clip = if grad_clip > 0.0 && norm > grad_clip {
            grad_clip / norm
        } else {
            1.0
        };
    }
}

fn on_host_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

fn missing(n: &str) -> NdmError {
    NdmError::Spec(format!("training state has no entry for `{n}`"))
}

type Grads<'g> = [(&'g String, &'g Var, Tensor)];

/// The contiguous f32 elements of a CPU storage under `l`.
fn f32s<'s>(
    s: &'s candle_core::CpuStorage,
    l: &candle_core::Layout,
) -> candle_core::Result<&'s [f32]> {
    match (s, l.contiguous_offsets()) {
        (candle_core::CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("optimizer: expected a contiguous f32 tensor on the CPU"),
    }
}

/// [`f32s`], mutable.
fn f32s_mut<'s>(
    s: &'s mut candle_core::CpuStorage,
    l: &candle_core::Layout,
) -> candle_core::Result<&'s mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (candle_core::CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("optimizer: expected a contiguous f32 tensor on the CPU"),
    }
}

/// A running mean in place, `a <- b a + (1 - b) x'` with `x' = s x` or `(s x)^2`: Adam's first
/// (`s` the clip factor) and second (squared) moments, and the EMA of the weights (`s = 1`).
struct RunningMean {
    b: f64,
    scale: f64,
    square: bool,
}

impl candle_core::InplaceOp2 for RunningMean {
    fn name(&self) -> &'static str {
        "ndm-running-mean"
    }
    fn cpu_fwd(
        &self,
        sa: &mut candle_core::CpuStorage,
        la: &candle_core::Layout,
        sx: &candle_core::CpuStorage,
        lx: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let x = f32s(sx, lx)?;
        let a = f32s_mut(sa, la)?;
        for (a, x) in a.iter_mut().zip(x) {
            let xi = *x as f64 * self.scale;
            let xi = if self.square { xi * xi } else { xi };
            *a = (self.b * *a as f64 + (1.0 - self.b) * xi) as f32;
        }
        Ok(())
    }
}

/// `w <- decay w - lr (m / c1) / (sqrt(v / c2) + eps)`, in place.
struct AdamStep(Update);

impl candle_core::InplaceOp3 for AdamStep {
    fn name(&self) -> &'static str {
        "ndm-adam-step"
    }
    fn cpu_fwd(
        &self,
        sw: &mut candle_core::CpuStorage,
        lw: &candle_core::Layout,
        sm: &candle_core::CpuStorage,
        lm: &candle_core::Layout,
        sv: &candle_core::CpuStorage,
        lv: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let u = &self.0;
        let (m, v) = (f32s(sm, lm)?, f32s(sv, lv)?);
        let w = f32s_mut(sw, lw)?;
        for ((w, m), v) in w.iter_mut().zip(m).zip(v) {
            let step = (*m as f64 / u.c1) / ((*v as f64 / u.c2).sqrt() + u.eps);
            *w = (u.decay * *w as f64 - u.lr * step) as f32;
        }
        Ok(())
    }
}

/// The squared gradient norm from the CPU's f32 gradients, in f64, the variables in parallel.
fn host_sq_norm(gs: &Grads) -> Result<f64> {
    let sq = gs
        .par_iter()
        .map(|(_, _, g)| {
            let (s, l) = g.storage_and_layout();
            match &*s {
                candle_core::Storage::Cpu(c) => Ok(f32s(c, l)?
                    .iter()
                    .map(|&x| (x as f64) * (x as f64))
                    .sum::<f64>()),
                _ => Err(NdmError::Spec(
                    "optimizer: a gradient is not on the CPU".into(),
                )),
            }
        })
        .collect::<Result<Vec<f64>>>()?;
    Ok(sq.iter().sum())
}

/// The squared gradient norm as an f64 scalar on the gradients' device (no read).
fn sq_norm_tensor(gs: &Grads) -> Result<Tensor> {
    let sums = gs
        .iter()
        .map(|(_, _, g)| Ok(g.to_dtype(DType::F64)?.sqr()?.sum_all()?.reshape(1)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&sums, 0)?.sum_all()?)
}

/// The update in place on the CPU's f32 tensors (weights, moments and EMA overwritten, nothing
/// allocated), one pass per tensor in f64 arithmetic, the variables in parallel.
fn in_place_update(gs: &Grads, state: &TrainState, u: &Update) -> Result<()> {
    let u = *u;
    gs.par_iter().try_for_each(|(name, var, g)| -> Result<()> {
        let m = state.m.get(*name).ok_or_else(|| missing(name))?;
        let v = state.v.get(*name).ok_or_else(|| missing(name))?;
        let e = state.ema.get(*name).ok_or_else(|| missing(name))?;
        let w = var.as_tensor();
        let mean = |b: f64, scale: f64, square: bool| RunningMean { b, scale, square };
        m.inplace_op2(g, &mean(u.b1, u.clip, false))?;
        v.inplace_op2(g, &mean(u.b2, u.clip, true))?;
        w.inplace_op3(m, v, &AdamStep(u))?;
        e.inplace_op2(w, &mean(u.ema, 1.0, false))?;
        Ok(())
    })
}

/// The same update with tensor ops, for any device and dtype.
fn tensor_update(gs: &Grads, state: &mut TrainState, u: &Update) -> Result<()> {
    for (name, var, g) in gs {
        let g = (g * u.clip)?;
        let m = state.m.get(*name).ok_or_else(|| missing(name))?;
        let v = state.v.get(*name).ok_or_else(|| missing(name))?;
        let m = ((m * u.b1)? + (&g * (1.0 - u.b1))?)?;
        let v = ((v * u.b2)? + (g.sqr()? * (1.0 - u.b2))?)?;
        let step = ((&m / u.c1)? / ((&v / u.c2)?.sqrt()? + u.eps)?)?;
        let w = var.as_tensor().detach();
        let new_w = ((&w * u.decay)? - (step * u.lr)?)?;
        var.set(&new_w)?;
        let e = state.ema.get(*name).ok_or_else(|| missing(name))?;
        let e = ((e * u.ema)? + (new_w * (1.0 - u.ema))?)?;
        state.ema.insert((*name).clone(), e.detach());
        state.m.insert((*name).clone(), m.detach());
        state.v.insert((*name).clone(), v.detach());
    }
    Ok(())
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
