//! Objectives: `objective.eps-mse` (DDPM's simple loss) and `objective.ndm-elbo-discrete` (the full
//! discrete-time NELBO of `docs/math.md`; with the identity transform it is DDPM's variational bound) and
//! `objective.ndm-elbo-continuous` (its continuous-time limit), and `objective.cfm` (flow matching's
//! velocity regression).

use ndm_api::candle_core::{Result, Tensor};
use ndm_api::elbo::{
    continuous_nelbo, discrete_nelbo, noise_like, BoundaryTerms, DiffEstimate, ImportanceTable,
    NelboTerms, TimeSampling,
};
use ndm_api::registry::BuildCtx;
use ndm_api::registry::NoParams;
use ndm_api::{LossOutput, NdmError, Objective, Pipeline, Rng, Times};
use serde::{Deserialize, Serialize};

/// Draws one training time per example: uniform on the training grid `i / T`, `i in 1..=n`, for
/// discrete models, uniform on `(t_min, t_end]` in continuous time.
pub fn draw_times(pipe: &Pipeline, b: usize, rng: &mut Rng) -> Result<Times> {
    let t_end = pipe.t_end();
    let ts: Vec<f64> = match pipe.spec.steps {
        Some(t_total) => {
            let n = ndm_api::solver::grid_index(t_end, t_total);
            (0..b)
                .map(|_| (1 + rng.below(n)) as f64 / t_total as f64)
                .collect()
        }
        None => {
            let t_min = pipe.t_min();
            (0..b)
                .map(|_| t_min + (t_end - t_min) * (1.0 - rng.uniform()))
                .collect()
        }
    };
    pipe.times_from(ts)
}

/// The NELBO objectives' loss: the batch mean of the NELBO per data dimension (nats per dimension,
/// scale-free across data sets), with the terms in nats per example for logs.
/// A schedule with variance-trained weights (VDM) also gets the mean squared `L_diff` per example,
/// rescaled to the loss's units.
fn nelbo_loss(pipe: &Pipeline, terms: &NelboTerms, x: &Tensor) -> Result<LossOutput> {
    let dims = (x.elem_count() / x.dim(0)?) as f64;
    let mut out = LossOutput::new((terms.total()?.mean_all()? / dims)?, terms.means()?);
    if !pipe.schedule.variance_trained_vars().is_empty() {
        // E[L_diff^2], divided by the constant 2 |E L_diff| D: the same gradient direction, in the
        // loss's units (the gradient of L_diff^2 is 2 L_diff dL_diff), so that clipping by the
        // global gradient norm does not let the variance term scale every other gradient away.
        let l = &terms.l_diff;
        let scale = (l.mean_all()?.detach().abs()? * (2.0 * dims))?;
        let scale = scale.clamp(1e-6, f64::INFINITY)?;
        out.variance = Some(l.sqr()?.mean_all()?.div(&scale)?);
    }
    Ok(out)
}

/// Refuses what a plain regression of the network output cannot train: a learnable transform
/// (minimised by `F` collapsing to 0, NDM sec. 6) and a backbone that predicts data directly.
fn check_regression(name: &str, pipe: &Pipeline) -> ndm_api::Result<()> {
    if pipe.transform.is_trainable() {
        return Err(NdmError::Incompatible(format!(
            "objective {name} cannot train the learnable transform {}: a plain regression loss is \
             minimised by F collapsing to 0 (NDM sec. 6); use ndm-elbo-discrete or ndm-elbo-continuous",
            pipe.spec.transform.kind
        )));
    }
    if pipe.backbone.predicts_data() {
        return Err(NdmError::Incompatible(format!(
            "objective {name} regresses a network output, but backbone {} predicts data directly",
            pipe.spec.backbone.kind
        )));
    }
    Ok(())
}

/// `E_{t, x, eps} || raw(z_t, t) - target(x, eps) ||^2` with the parameterization's target, `t`
/// drawn by [`draw_times`]; the term is logged as `term`.
fn regression_loss(pipe: &Pipeline, x: &Tensor, rng: &mut Rng, term: &str) -> Result<LossOutput> {
    let times = draw_times(pipe, x.dim(0)?, rng)?;
    let t = times.tensor();
    let sb = pipe.schedule.batch_at(&times)?;
    let c = pipe.coeffs(&sb)?;
    let fx = pipe.f(x, t)?;
    let eps = noise_like(&fx, rng)?;
    let z = c.noised(&fx, &eps)?;
    let raw = pipe.network(&ndm_api::NetInput::at(&z, t, &sb))?;
    let target = pipe.raw_target(x, &fx, &eps, t, &sb)?;
    let loss = (raw - target)?.sqr()?.mean_all()?;
    let mut terms = vec![(term.to_string(), loss.clone())];
    if !pipe.prior.is_trainable() {
        return Ok(LossOutput::new(loss, terms));
    }
    // A learned prior (DiNof's flow at t_m) trains on its own term, L_prior per data dimension,
    // added with weight 1 as in the DiNof code; the regression only covers times below t_m.
    let dims = (x.elem_count() / x.dim(0)?) as f64;
    let l_prior = ndm_api::elbo::prior_term(pipe, x, rng)?.mean_all()?;
    terms.push(("l_prior".into(), l_prior.clone()));
    Ok(LossOutput::new((loss + (l_prior / dims)?)?, terms))
}

/// `E || raw(z_t, t) - target ||^2`, the parameterization's target (eps for `param.eps`).
#[derive(Debug, Clone, Default)]
pub struct EpsMse;

impl Objective for EpsMse {
    fn check(&self, pipe: &Pipeline) -> ndm_api::Result<()> {
        check_regression("eps-mse", pipe)
    }

    fn loss(&self, pipe: &Pipeline, x: &Tensor, rng: &mut Rng) -> Result<LossOutput> {
        regression_loss(pipe, x, rng, "mse")
    }
}

/// Conditional flow matching (Lipman et al. 2023): `E_{t ~ U, x, eps} || u_theta(z_t, t) - u ||^2`
/// with the path's velocity `u = alpha' x + sigma' eps` (`param.velocity`'s target).
#[derive(Debug, Clone, Default)]
pub struct Cfm;

impl Objective for Cfm {
    fn check(&self, pipe: &Pipeline) -> ndm_api::Result<()> {
        if pipe.spec.param.kind != "velocity" {
            return Err(NdmError::Incompatible(format!(
                "objective cfm regresses the path's velocity and needs param velocity, not {}",
                pipe.spec.param.kind
            )));
        }
        if pipe.spec.steps.is_some() {
            return Err(NdmError::Incompatible(
                "objective cfm draws continuous times: unset model.steps".into(),
            ));
        }
        check_regression("cfm", pipe)
    }

    fn loss(&self, pipe: &Pipeline, x: &Tensor, rng: &mut Rng) -> Result<LossOutput> {
        regression_loss(pipe, x, rng, "velocity_mse")
    }
}

/// The discrete NELBO `L_prior + T E_i KL_{t_i} + L_rec` on the model's grid of `T = model.steps`,
/// one `i` per example, divided by the data dimension (nats per dimension) for a scale-free loss.
#[derive(Debug, Clone, Default)]
pub struct ElboDiscrete;

impl Objective for ElboDiscrete {
    fn check(&self, pipe: &Pipeline) -> ndm_api::Result<()> {
        if pipe.spec.steps.is_none() {
            return Err(NdmError::Incompatible(
                "objective ndm-elbo-discrete needs a discrete model: set model.steps (e.g. 1000)"
                    .into(),
            ));
        }
        if pipe.schedule.is_trainable() {
            return Err(NdmError::Incompatible(format!(
                "objective ndm-elbo-discrete computes its coefficients on the host and cannot train schedule {}",
                pipe.spec.schedule.kind
            )));
        }
        Ok(())
    }

    fn loss(&self, pipe: &Pipeline, x: &Tensor, rng: &mut Rng) -> Result<LossOutput> {
        let t_total = pipe.spec.steps.ok_or_else(|| {
            ndm_api::candle_core::Error::Msg("ndm-elbo-discrete needs model.steps".into())
        })?;
        let terms = discrete_nelbo(pipe, x, t_total, DiffEstimate::Sampled, rng)?;
        nelbo_loss(pipe, &terms, x)
    }
}

ndm_api::register_plugin!(
    Objective,
    "eps-mse",
    "DDPM's simple loss: MSE to the parameterization's target (refuses a learnable transform)",
    NoParams,
    |_c: NoParams, _ctx: &BuildCtx| Ok(Box::new(EpsMse))
);
ndm_api::register_plugin!(
    Objective,
    "cfm",
    "conditional flow matching: MSE of the predicted velocity to u = alpha' x + sigma' eps (param velocity)",
    NoParams,
    |_c: NoParams, _ctx: &BuildCtx| Ok(Box::new(Cfm))
);
ndm_api::register_plugin!(
    Objective,
    "ndm-elbo-discrete",
    "NDM's discrete-time NELBO: L_prior + L_diff + L_rec (DDPM's VLB for the identity transform)",
    NoParams,
    |_c: NoParams, _ctx: &BuildCtx| Ok(Box::new(ElboDiscrete))
);

/// `objective.ndm-elbo-continuous` config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ElboContinuousConfig {
    /// `importance` (p(t) proportional to 1/g^2, NDM sec. 3.2), `uniform`, or `antithetic`
    /// (uniform times spread evenly over the batch, VDM's low-discrepancy sampler).
    pub time_sampling: TimeSampling,
    /// Share of each batch, in (0, 1], on which `L_prior` and `L_rec` are evaluated, drawn at
    /// random and weighted by its inverse (an unbiased estimate of the same NELBO, with more
    /// variance in those two terms). 1 evaluates them on every example, as the NDM paper does;
    /// below 1 it saves most of `L_rec`'s denoiser pass and `L_prior`'s pass through `F`.
    pub boundary_fraction: f64,
}

impl Default for ElboContinuousConfig {
    fn default() -> Self {
        ElboContinuousConfig {
            time_sampling: TimeSampling::default(),
            boundary_fraction: 1.0,
        }
    }
}

/// The continuous-time NELBO `L_prior + L_diff + L_rec` of `docs/math.md` ("Continuous-time loss", NDM's eq. 11 corrected), one
/// time per example drawn by `time_sampling` and reweighted by `1 / p(t)`, divided by the data
/// dimension. Gradients reach the backbone, a learned transform, a learned schedule and a prior.
#[derive(Debug)]
pub struct ElboContinuous {
    rule: TimeSampling,
    boundary: BoundaryTerms,
    table: std::sync::OnceLock<ImportanceTable>,
}

impl Objective for ElboContinuous {
    fn loss(&self, pipe: &Pipeline, x: &Tensor, rng: &mut Rng) -> Result<LossOutput> {
        // A learned schedule moves 1/g^2 while training: rebuild its table every step.
        let fresh;
        let table = match self.rule {
            TimeSampling::Uniform | TimeSampling::Antithetic => None,
            TimeSampling::Importance if pipe.schedule.is_trainable() => {
                fresh = ImportanceTable::new(pipe, 1024);
                Some(&fresh)
            }
            TimeSampling::Importance => {
                Some(self.table.get_or_init(|| ImportanceTable::new(pipe, 4096)))
            }
        };
        let terms = continuous_nelbo(pipe, x, self.rule, table, 1, self.boundary, rng)?;
        nelbo_loss(pipe, &terms, x)
    }
}

ndm_api::register_plugin!(
    Objective,
    "ndm-elbo-continuous",
    "NDM's continuous-time NELBO (corrected eq. 13), importance-sampled time (p ~ 1/g^2)",
    ElboContinuousConfig,
    |c: ElboContinuousConfig, _ctx: &BuildCtx| {
        let f = c.boundary_fraction;
        if !(f > 0.0 && f <= 1.0) {
            return Err(NdmError::invalid_param(format!(
                "boundary_fraction must be in (0, 1], got {f}"
            )));
        }
        Ok(Box::new(ElboContinuous {
            rule: c.time_sampling,
            boundary: if f < 1.0 {
                BoundaryTerms::Share(f)
            } else {
                BoundaryTerms::Every
            },
            table: std::sync::OnceLock::new(),
        }))
    }
);
