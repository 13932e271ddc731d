//! The composed model: transform + schedule + parameterization + backbone + prior + objective,
//! with one `VarMap` holding every trainable weight under its role's prefix.

use crate::backbone::NetInput;
use crate::param::Coeffs;
use crate::registry::{BuildCtx, Family, PluginRegistry};
use crate::reverse::{Gaussian, ReverseProcess};
use crate::schedule::{ScheduleBatch, SchedulePoint, Times};
use crate::spec::ModelSpec;
use crate::vars::{seeded_var_builder, sorted_vars};
use crate::{
    Backbone, Dataset, NdmError, NoiseSchedule, Objective, Parameterization, Prior, Result, Solver,
    Transform,
};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

/// A composed diffusion model. Training, sampling and evaluation are functions over it.
pub struct Pipeline {
    /// The resolved spec it was built from (every default filled in).
    pub spec: ModelSpec,
    pub data_shape: Vec<usize>,
    pub latent_shape: Vec<usize>,
    pub transform: Box<dyn Transform>,
    pub schedule: Box<dyn NoiseSchedule>,
    pub param: Box<dyn Parameterization>,
    pub backbone: Box<dyn Backbone>,
    pub prior: Box<dyn Prior>,
    pub objective: Box<dyn Objective>,
    /// Every trainable weight, under `transform.`, `schedule.`, `backbone.`, `prior.`.
    pub varmap: VarMap,
    pub device: Device,
    pub dtype: DType,
    /// Set by the trainer for the length of one training step: the generator of the backbone's
    /// training-time randomness (dropout). `None` outside training, so sampling and evaluation
    /// are deterministic.
    training: std::sync::Mutex<Option<crate::Rng>>,
    /// Set for the length of a [`Condition`]: the classes of the batch being trained, sampled or
    /// evaluated, which every network call of a conditional model sees.
    condition: std::sync::Mutex<Option<Tensor>>,
}

/// While alive, every network of a conditional pipeline sees the classes it was made with
/// ([`Pipeline::conditioned`]); dropping it puts back the classes that were set before (also on
/// an error path), so conditions nest.
#[derive(Debug)]
pub struct Condition<'a> {
    pipe: &'a Pipeline,
    previous: Option<Tensor>,
}

impl Drop for Condition<'_> {
    fn drop(&mut self) {
        *self
            .pipe
            .condition
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = self.previous.take();
    }
}

/// While alive, [`Pipeline::xhat`] runs the backbone in training mode with draws from its
/// generator; dropping it ends training mode (also on an error path).
#[derive(Debug)]
pub struct TrainingMode<'a> {
    pipe: &'a Pipeline,
}

impl Drop for TrainingMode<'_> {
    fn drop(&mut self) {
        *self.pipe.training.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("spec", &self.spec)
            .field("data_shape", &self.data_shape)
            .field("latent_shape", &self.latent_shape)
            .field("params", &self.num_params())
            .field("device", &self.device)
            .finish()
    }
}

impl Pipeline {
    /// Builds every part from the registry; weights are drawn from `seed`.
    pub fn build(
        spec: &ModelSpec,
        data_shape: &[usize],
        reg: &PluginRegistry,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let spec = spec.resolve(reg)?;
        let dtype = DType::F32;
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, seed, dtype, device);
        let base = BuildCtx {
            device,
            dtype,
            shape: data_shape,
            vb,
            registry: reg,
            classes: if spec.conditional { spec.classes } else { 0 },
        };
        let data_shape = data_shape.to_vec();
        let transform = reg.build_transform(&spec.transform, &base.pp("transform", &data_shape))?;
        let latent_shape = transform.latent_shape(&data_shape);
        let schedule = reg.build_schedule(&spec.schedule, &base.pp("schedule", &latent_shape))?;
        let param = reg.build_param(&spec.param, &base.pp("param", &latent_shape))?;
        let backbone = reg.build_backbone(&spec.backbone, &base.pp("backbone", &latent_shape))?;
        let prior = reg.build_prior(&spec.prior, &base.pp("prior", &latent_shape))?;
        let objective =
            reg.build_objective(&spec.objective, &base.pp("objective", &latent_shape))?;
        let pipe = Pipeline {
            spec,
            data_shape,
            latent_shape,
            transform,
            schedule,
            param,
            backbone,
            prior,
            objective,
            varmap,
            device: device.clone(),
            dtype,
            training: std::sync::Mutex::new(None),
            condition: std::sync::Mutex::new(None),
        };
        pipe.validate()?;
        pipe.objective.check(&pipe)?;
        Ok(pipe)
    }

    fn validate(&self) -> Result<()> {
        let t_end = self.prior.t_end();
        if !(t_end > 0.0 && t_end <= 1.0) {
            return Err(NdmError::Spec(format!(
                "prior time t_end = {t_end} is outside (0, 1]"
            )));
        }
        if let Some(t) = self.spec.steps {
            let k = t_end * t as f64;
            if (k - k.round()).abs() > 1e-9 {
                return Err(NdmError::Spec(format!(
                    "prior {}: its time t_end = {t_end} (prior.t_m) is not on the training grid \
                     of model.steps = {t}: use a multiple of 1/{t}",
                    self.spec.prior.kind
                )));
            }
        }
        let t_min = self.schedule.t_min();
        if !(0.0..t_end).contains(&t_min) {
            return Err(NdmError::Spec(format!(
                "schedule {} starts at t_min = {t_min}, not below the prior's time {t_end}",
                self.spec.schedule.kind
            )));
        }
        for t in [t_min, 0.5 * (t_min + t_end), t_end] {
            let p = self.schedule.point(t);
            // Flow matching ends at alpha_1 = 0 (lambda_1 = -inf): allowed at the prior's time only.
            let open_end = t == 1.0 && p.alpha == 0.0 && p.dalpha.is_finite();
            if !(p.sigma > 0.0 && (open_end || (p.alpha > 0.0 && p.log_snr.is_finite()))) {
                return Err(NdmError::Spec(format!(
                    "schedule {} gives alpha = {}, sigma = {} at t = {t}: both must be positive \
                     (alpha may be 0 at t = 1 only)",
                    self.spec.schedule.kind, p.alpha, p.sigma
                )));
            }
            if open_end && !self.param.finite_at_zero_alpha() {
                return Err(NdmError::Incompatible(format!(
                    "param {} cannot predict the data where alpha = 0 (schedule {} at t = 1); \
                     use param velocity, v or x0",
                    self.spec.param.kind, self.spec.schedule.kind
                )));
            }
        }
        Ok(())
    }

    /// The variables in name order.
    pub fn vars(&self) -> Vec<(String, Var)> {
        sorted_vars(&self.varmap)
    }

    /// Number of data dimensions (the product of the data shape): the `D` of bits per dimension.
    pub fn data_dims(&self) -> usize {
        self.data_shape.iter().product()
    }

    /// Number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// The time of the prior.
    pub fn t_end(&self) -> f64 {
        self.prior.t_end()
    }

    /// The lowest time of the process ([`NoiseSchedule::t_min`]; 0 except for rectified flow).
    pub fn t_min(&self) -> f64 {
        self.schedule.t_min()
    }

    /// A `[n]` tensor filled with `t`.
    pub fn time_tensor(&self, t: f64, n: usize) -> candle_core::Result<Tensor> {
        Tensor::full(t, n, &self.device)?.to_dtype(self.dtype)
    }

    /// `n` copies of the time `t`, known on the host too ([`Times`]).
    pub fn times(&self, t: f64, n: usize) -> candle_core::Result<Times> {
        Times::constant(t, n, self.dtype, &self.device)
    }

    /// Per-example times from host values ([`Times`]): one copy to the device.
    pub fn times_from(&self, values: Vec<f64>) -> candle_core::Result<Times> {
        Times::new(values, self.dtype, &self.device)
    }

    /// A `[B]` tensor reshaped to `[B, 1, ..]` to broadcast against latents.
    pub fn per_example(&self, v: &Tensor) -> candle_core::Result<Tensor> {
        crate::schedule::per_example(v, 1 + self.latent_shape.len())
    }

    /// The parameterization's coefficients at a schedule batch, broadcastable to latents.
    pub fn coeffs(&self, sb: &ScheduleBatch) -> candle_core::Result<Coeffs> {
        let dsigma = (&sb.dsigma2 / (&sb.sigma * 2.0)?)?;
        Ok(Coeffs {
            alpha: self.per_example(&sb.alpha)?,
            sigma: self.per_example(&sb.sigma)?,
            dalpha: self.per_example(&sb.dalpha)?,
            dsigma: self.per_example(&dsigma)?,
        })
    }

    /// `F(x, t)` (given the classes of the current [`Condition`] for a conditional transform).
    pub fn f(&self, x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
        if self.transform.is_identity() {
            Ok(x.clone())
        } else {
            let class = self.class_for(x.dim(0)?)?;
            self.transform.forward_with(x, t, class.as_ref())
        }
    }

    /// `dF/dt (x, t)` (given the classes of the current [`Condition`]).
    pub fn f_dot(&self, x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
        if self.transform.is_identity() {
            x.zeros_like()
        } else {
            let class = self.class_for(x.dim(0)?)?;
            self.transform.time_derivative_with(x, t, class.as_ref())
        }
    }

    /// `F(x, t)` and `dF/dt (x, t)` in one call (one forward-mode pass for a learned `F` whose
    /// network has it); `None` for the derivative of a time-independent `F` (the identity, a VAE,
    /// a Glow flow), where it is zero and callers skip its terms.
    pub fn f_and_dot(
        &self,
        x: &Tensor,
        t: &Tensor,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        if self.transform.is_time_independent() {
            return Ok((self.f(x, t)?, None));
        }
        let class = self.class_for(x.dim(0)?)?;
        let (f, dot) = self
            .transform
            .forward_and_time_derivative_with(x, t, class.as_ref())?;
        Ok((f, Some(dot)))
    }

    /// The number of classes of a conditional model; 0 when unconditional.
    pub fn classes(&self) -> usize {
        if self.spec.conditional {
            self.spec.classes
        } else {
            0
        }
    }

    /// The "no class" label (`K`) of a conditional model with `K` classes.
    pub fn no_class(&self) -> u32 {
        self.classes() as u32
    }

    /// Conditions every network call on `class` (`u32` `[B]`, values in `0..=K`, `K` meaning no
    /// class; `None` means no class for every example) until the returned guard is dropped.
    /// Objectives, solvers and likelihoods need not know: the networks see the classes through
    /// [`Pipeline::network`] and [`Pipeline::f`]. A call on a batch that stacks `k` copies of
    /// the conditioned batch (as the continuous NELBO does with `[x; xhat]`) sees the classes
    /// repeated `k` times. On an unconditional model this is a no-op.
    pub fn conditioned(&self, class: Option<Tensor>) -> Condition<'_> {
        let mut cur = self.condition.lock().unwrap_or_else(|e| e.into_inner());
        let previous = if self.classes() > 0 {
            std::mem::replace(&mut *cur, class)
        } else {
            cur.clone()
        };
        Condition {
            pipe: self,
            previous,
        }
    }

    /// Conditions every network call on the rows `idx` (`u32` `[m]`) of the current condition's
    /// classes, for terms evaluated on those rows of the batch, until the guard is dropped. A
    /// no-op for an unconditional model or outside a condition.
    pub fn condition_rows(&self, idx: &Tensor) -> candle_core::Result<Condition<'_>> {
        let cur = self
            .condition
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let rows = cur.map(|c| c.index_select(idx, 0)).transpose()?;
        Ok(self.conditioned(rows))
    }

    /// The classes of the current condition for a network call on `batch` examples.
    fn class_for(&self, batch: usize) -> candle_core::Result<Option<Tensor>> {
        let cur = self.condition.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = cur.as_ref() else {
            return Ok(None);
        };
        let n = c.dim(0)?;
        if n == batch {
            return Ok(Some(c.clone()));
        }
        if n == 0 || !batch.is_multiple_of(n) {
            candle_core::bail!(
                "a network call on {batch} examples inside a condition on {n} classes"
            );
        }
        Ok(Some(Tensor::cat(&vec![c; batch / n], 0)?))
    }

    /// Training mode until the returned guard is dropped: the backbone's training-time randomness
    /// (dropout) draws from `rng`. The trainer derives `rng` from the seed and the step, so a
    /// resumed run draws the same masks.
    pub fn training_mode(&self, rng: crate::Rng) -> TrainingMode<'_> {
        *self.training.lock().unwrap_or_else(|e| e.into_inner()) = Some(rng);
        TrainingMode { pipe: self }
    }

    /// The backbone's raw output: in training mode ([`Pipeline::training_mode`]) its training
    /// forward with the step's generator, otherwise its deterministic forward.
    pub fn network(&self, input: &NetInput) -> candle_core::Result<Tensor> {
        let class = match input.class {
            Some(_) => None,
            None => self.class_for(input.z.dim(0)?)?,
        };
        let input = match &class {
            Some(c) => input.clone().with_class(Some(c)),
            None => input.clone(),
        };
        let mut training = self.training.lock().unwrap_or_else(|e| e.into_inner());
        match training.as_mut() {
            Some(rng) => self.backbone.forward_train(&input, rng),
            None => {
                drop(training);
                self.backbone.forward(&input)
            }
        }
    }

    /// The model's prediction `xhat(z_t, t)` given the schedule at `t`.
    pub fn xhat(&self, z: &Tensor, t: &Tensor, sb: &ScheduleBatch) -> candle_core::Result<Tensor> {
        let raw = self.network(&NetInput::at(z, t, sb))?;
        if self.backbone.predicts_data() {
            return Ok(raw);
        }
        self.xhat_from_raw(&raw, z, t, sb)
    }

    /// `xhat` from a raw network output through the parameterization, per basis component for a
    /// [`crate::Diagonal`] transform; the inverse of [`Pipeline::raw_target`].
    pub fn xhat_from_raw(
        &self,
        raw: &Tensor,
        z: &Tensor,
        t: &Tensor,
        sb: &ScheduleBatch,
    ) -> candle_core::Result<Tensor> {
        self.through_param(t, sb, (raw, raw), z, |r, z, c| {
            self.param.predict_x(r, z, c)
        })
    }

    /// The regression target of the simple losses (`eps-mse`, `cfm`) for `z_t = alpha_t F(x, t) +
    /// sigma_t eps`, given `F(x, t)` as `fx`: the parameterization's target, per basis component
    /// for a [`crate::Diagonal`] transform (where it is still `eps` for noise prediction).
    pub fn raw_target(
        &self,
        x: &Tensor,
        fx: &Tensor,
        eps: &Tensor,
        t: &Tensor,
        sb: &ScheduleBatch,
    ) -> candle_core::Result<Tensor> {
        self.through_param(t, sb, (x, fx), eps, |x, e, c| self.param.target(x, e, c))
    }

    /// Applies an elementwise parameterization formula `formula(a, b, coeffs)`. For a transform
    /// with a [`crate::Diagonal`] form it runs on the basis components of `a.0` and `b` with
    /// `alpha_k = alpha d_k`, `alpha_k' = alpha' d_k + alpha d_k'`, `sigma`, `sigma'` (all shaped
    /// like the gains), and the result goes back out of the basis; otherwise it runs on `a.1` and
    /// `b` with the schedule's coefficients.
    fn through_param(
        &self,
        t: &Tensor,
        sb: &ScheduleBatch,
        a: (&Tensor, &Tensor),
        b: &Tensor,
        formula: impl Fn(&Tensor, &Tensor, &Coeffs) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let c = self.coeffs(sb)?;
        let Some(d) = self.transform.diagonal() else {
            return formula(a.1, b, &c);
        };
        let (g, dg) = d.gains(t)?;
        let full = |v: &Tensor| v.broadcast_as(g.shape());
        let ck = Coeffs {
            alpha: g.broadcast_mul(&c.alpha)?,
            dalpha: (g.broadcast_mul(&c.dalpha)? + dg.broadcast_mul(&c.alpha)?)?,
            sigma: full(&c.sigma)?,
            dsigma: full(&c.dsigma)?,
        };
        d.synthesize(&formula(&d.analyze(a.0)?, &d.analyze(b)?, &ck)?)
    }

    /// Decodes a final latent `z` at `t_min` into data: the decoder mean `xhat(z, t_min)`, passed
    /// through the transform's decoder where it has one. One network evaluation.
    pub fn decode(&self, z: &Tensor, t_min: f64) -> Result<Tensor> {
        let xhat = self.predict_x(z, t_min)?;
        Ok(self.transform.decode(&xhat)?.unwrap_or(xhat))
    }

    /// Sets every variable to the tensors of `weights` (by name); all must be present with their shapes.
    pub fn set_weights(&self, weights: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in self.vars() {
            let w = weights
                .get(&name)
                .ok_or_else(|| NdmError::Spec(format!("weights have no tensor `{name}`")))?;
            if w.shape() != var.shape() {
                return Err(NdmError::Spec(format!(
                    "weight `{name}` has shape {:?}, the model needs {:?}",
                    w.dims(),
                    var.dims()
                )));
            }
            var.set(&w.to_dtype(var.dtype())?.to_device(&self.device)?)?;
        }
        Ok(())
    }
}

impl ReverseProcess for Pipeline {
    fn latent_shape(&self) -> &[usize] {
        &self.latent_shape
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn t_end(&self) -> f64 {
        self.prior.t_end()
    }
    fn t_min(&self) -> f64 {
        Pipeline::t_min(self)
    }
    fn training_steps(&self) -> Option<usize> {
        self.spec.steps
    }
    fn schedule_point(&self, t: f64) -> SchedulePoint {
        self.schedule.point(t)
    }
    fn predict_x(&self, z: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        let tt = self.times(t, z.dim(0)?)?;
        let sb = self.schedule.batch_at(&tt)?;
        // Solvers never differentiate through the network: detaching here keeps a long solve from
        // holding every step's autograd graph alive.
        Ok(self.xhat(z, tt.tensor(), &sb)?.detach())
    }
    fn posterior(
        &self,
        z_t: &Tensor,
        xhat: &Tensor,
        t: f64,
        s: f64,
        eta: f64,
    ) -> candle_core::Result<Gaussian> {
        let (pt, ps) = (self.schedule.point(t), self.schedule.point(s));
        let c = posterior_coeffs(&pt, &ps, eta);
        let n = z_t.dim(0)?;
        let f_t = self.f(xhat, &self.time_tensor(t, n)?)?;
        let f_s = self.f(xhat, &self.time_tensor(s, n)?)?;
        // mean = alpha_s F(xhat, s) + k (z_t - alpha_t F(xhat, t))
        let mean = ((f_s * ps.alpha)? + ((z_t - (f_t * pt.alpha)?)? * c.k)?)?;
        // Detached like everything a solver gets: with a learned F the mean would otherwise carry
        // the transform's graph, and z would chain every step's graph to the next.
        Ok(Gaussian {
            mean: mean.detach(),
            std: c.var.sqrt(),
        })
    }
    fn score(&self, z: &Tensor, xhat: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        let tt = self.time_tensor(t, z.dim(0)?)?;
        Ok(self
            .tracked_score(z, xhat, &tt, &self.schedule.point(t))?
            .detach())
    }
    fn reverse_sde(
        &self,
        z: &Tensor,
        xhat: &Tensor,
        t: f64,
        eta: f64,
    ) -> candle_core::Result<(Tensor, f64)> {
        let (drift, g) = self.sde_drift(z, xhat, t, eta)?;
        Ok((drift.detach(), g))
    }
}

impl Pipeline {
    /// The reverse-SDE drift and diffusion (`docs/math.md`, "Reverse SDE and probability-flow ODE") without detaching, so the likelihood can
    /// differentiate the probability-flow drift with respect to `z` (see [`ReverseProcess::reverse_sde`]).
    pub fn sde_drift(
        &self,
        z: &Tensor,
        xhat: &Tensor,
        t: f64,
        eta: f64,
    ) -> candle_core::Result<(Tensor, f64)> {
        // alpha Fdot + r z - c/2 s with c = dsig2 - 2 r sigma^2 + g^2 (docs/math.md) is written as
        // the probability-flow drift alpha' F + alpha Fdot + sigma' epshat, epshat = (z - alpha F) / sigma,
        // minus g^2/2 s: the same number, with no `r`, so it stays finite where alpha = 0
        // (flow matching's t = 1, where r and g^2 are infinite).
        let p = self.schedule.point(t);
        let tt = self.time_tensor(t, z.dim(0)?)?;
        let (fx, fdot) = self.f_and_dot(xhat, &tt)?;
        let dsigma = p.dsigma2 / (2.0 * p.sigma);
        let mean = (&fx * p.alpha)?;
        let mut drift = ((&fx * p.dalpha)? + ((z - &mean)? * (dsigma / p.sigma))?)?;
        if let Some(fdot) = fdot {
            drift = (drift + (fdot * p.alpha)?)?;
        }
        let g2 = if eta == 0.0 {
            0.0
        } else {
            eta * eta * (-p.dlog_snr()) * p.sigma * p.sigma
        };
        if !g2.is_finite() {
            candle_core::bail!(
                "the reverse SDE with eta = {eta} has infinite noise at t = {t} (alpha_t = 0): sample this \
                 schedule with eta = 0 or an ODE solver"
            );
        }
        if g2 > 0.0 {
            let score = ((mean - z)? / (p.sigma * p.sigma))?;
            drift = (drift - (score * (g2 / 2.0))?)?;
        }
        Ok((drift, g2.max(0.0).sqrt()))
    }

    /// The score `(alpha F(xhat, t) - z) / sigma^2` at `t` (as a `[B]` tensor `tt` and the schedule
    /// point `p`), with gradients kept.
    fn tracked_score(
        &self,
        z: &Tensor,
        xhat: &Tensor,
        tt: &Tensor,
        p: &SchedulePoint,
    ) -> candle_core::Result<Tensor> {
        ((self.f(xhat, tt)? * p.alpha)? - z)? / (p.sigma * p.sigma)
    }

    /// The probability-flow ODE drift at `(z, t)` with gradients kept (one network evaluation).
    pub fn ode_drift(&self, z: &Tensor, t: f64) -> candle_core::Result<Tensor> {
        let tt = self.times(t, z.dim(0)?)?;
        let sb = self.schedule.batch_at(&tt)?;
        let xhat = self.xhat(z, tt.tensor(), &sb)?;
        Ok(self.sde_drift(z, &xhat, t, 0.0)?.0)
    }
}

/// The scalar coefficients of NDM's posterior `q(z_s | z_t, x)` (`docs/math.md`, "Forward process and posterior").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PosteriorCoeffs {
    /// `sig~^2_{s|t} = eta^2 sigma_s^2 (1 - exp(lambda_t - lambda_s))`.
    pub var: f64,
    /// `k_{s|t} = sqrt(sigma_s^2 - sig~^2) / sigma_t`.
    pub k: f64,
}

/// Computes [`PosteriorCoeffs`] in f64 (`1 - exp` via `expm1` for accuracy on fine grids).
pub fn posterior_coeffs(pt: &SchedulePoint, ps: &SchedulePoint, eta: f64) -> PosteriorCoeffs {
    let var = eta * eta * ps.sigma * ps.sigma * (-(pt.log_snr - ps.log_snr).exp_m1());
    let k = ((ps.sigma * ps.sigma - var).max(0.0)).sqrt() / pt.sigma;
    PosteriorCoeffs { var, k }
}

/// Builds one plugin of each family from the registry.
macro_rules! family_builders {
    ($($fn_name:ident, $family:ident, $ty:ident;)*) => {
        impl PluginRegistry {
            $(
                #[doc = concat!("Builds a `", stringify!($family), "` plugin from its spec.")]
                pub fn $fn_name(&self, spec: &crate::spec::PluginSpec, ctx: &BuildCtx) -> Result<Box<dyn $ty>> {
                    let info = self.get(Family::$family, &spec.kind)?;
                    match info.builder {
                        // Every error of a plugin's build names the plugin (`schedule.cosine: ...`),
                        // so plugin authors write only what is wrong.
                        crate::registry::Builder::$family(f) => {
                            f(&spec.params, ctx).map_err(|e| e.in_plugin(&info.full_name()))
                        }
                        _ => Err(NdmError::Spec(format!("plugin {} is not a {}", spec.kind, Family::$family))),
                    }
                }
            )*
        }
    };
}

family_builders! {
    build_transform, Transform, Transform;
    build_schedule, Schedule, NoiseSchedule;
    build_param, Param, Parameterization;
    build_prior, Prior, Prior;
    build_objective, Objective, Objective;
    build_backbone, Backbone, Backbone;
    build_solver, Solver, Solver;
    build_dataset, Dataset, Dataset;
}
