//! Evaluation of a trained pipeline on held-out data: the NELBO split into its terms, and the
//! negative log-likelihood under the probability-flow ODE. Both report an [`Estimate`] (mean ±
//! standard error over examples) in nats per example and in bits per dimension.
//!
//! Discrete data (8-bit images, [`Dataset::quantization`]) is evaluated on uniformly dequantized
//! values `y = x + u`, `u` uniform over the pixel's cell of width `2 / levels`, one draw per
//! example; the density's NLL of `y` plus `D log(levels / 2)` bounds `-log P(x)` of the discrete
//! data from above, so bits/dim = nats / (D ln 2) + log2(levels / 2) (+7 for 256 levels).

use crate::elbo::{
    continuous_nelbo, discrete_nelbo, BoundaryTerms, DiffEstimate, ImportanceTable, TimeSampling,
};
use crate::likelihood::{ode_nll, NllOptions, Trace};
use crate::pipeline::Pipeline;
use crate::rng::Rng;
use crate::spec::Decoder;
use crate::stats::Estimate;
use crate::{Dataset, NdmError, Result, Split};
use candle_core::{DType, Tensor};
use serde::Serialize;

/// Stratified importance-sampled times per example when evaluating a continuous-time NELBO.
pub const CONTINUOUS_EVAL_TIMES: usize = 64;

/// How discrete data was made continuous for a density: uniform noise over each value's cell.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Dequantization {
    /// Cells of `[-1, 1]` per dimension (256 for 8-bit images).
    pub levels: u32,
    /// Dequantization draws per example.
    pub draws: usize,
    /// `D log(levels / 2)`: nats per example added to the density's NLL of the dequantized data.
    pub log_volume_nats: f64,
}

impl Dequantization {
    /// For `data`, if its values are quantized, with one draw per example.
    pub fn for_data(data: &dyn Dataset, dims: usize) -> Option<Dequantization> {
        data.quantization().map(|levels| Dequantization {
            levels,
            draws: 1,
            log_volume_nats: dims as f64 * (levels as f64 / 2.0).ln(),
        })
    }

    /// `x` (cell centres) plus uniform noise over each value's cell.
    pub fn apply(&self, x: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        let half = 1.0 / self.levels as f64;
        let u = rng.uniform_tensor(x.dims(), -half, half, x.dtype(), x.device())?;
        Ok((x + u)?)
    }
}

/// A NELBO estimate on held-out data.
#[derive(Debug, Clone, Serialize)]
pub struct NelboReport {
    /// The NELBO per example, nats (of the discrete data, when dequantized).
    pub nelbo: Estimate,
    /// The same in bits per dimension.
    pub bits_per_dim: Estimate,
    /// Means of the three terms, nats (with `dequantization`'s log-volume they add up to
    /// `nelbo.mean`).
    pub l_prior: f64,
    pub l_diff: f64,
    pub l_rec: f64,
    /// Present when the data is discrete and was dequantized.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dequantization: Option<Dequantization>,
    /// A conditional model's NELBO of each class, conditional on the label (bits/dim); empty for
    /// an unconditional model.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_class: Vec<ClassEstimate>,
}

/// An estimate over the held-out examples of one class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClassEstimate {
    pub class: usize,
    pub bits_per_dim: Estimate,
}

/// Per-class bits/dim of per-example values in nats, for a conditional model's report.
fn per_class(values: &[f64], labels: &[u32], classes: usize, dims: usize) -> Vec<ClassEstimate> {
    (0..classes)
        .filter_map(|k| {
            let v: Vec<f64> = values
                .iter()
                .zip(labels)
                .filter(|(_, &l)| l as usize == k)
                .map(|(v, _)| *v)
                .collect();
            Estimate::of(&v).map(|e| ClassEstimate {
                class: k,
                bits_per_dim: e.bits_per_dim(dims),
            })
        })
        .collect()
}

/// A held-out batch with its labels, and the condition a conditional model evaluates it under
/// (the NELBO and NLL of a conditional model are conditional on the label).
fn labeled_batch(
    pipe: &Pipeline,
    data: &dyn Dataset,
    n: usize,
    rng: &mut Rng,
) -> Result<(Tensor, Option<Vec<u32>>)> {
    let (x, labels) = data.sample_labeled(n, Split::Test, rng, &pipe.device)?;
    if pipe.classes() == 0 {
        return Ok((x, None));
    }
    let labels = labels.ok_or_else(|| {
        NdmError::Incompatible("a conditional model is evaluated on labelled data".into())
    })?;
    Ok((x, Some(labels.to_dtype(DType::U32)?.to_vec1::<u32>()?)))
}

fn condition<'a>(
    pipe: &'a Pipeline,
    labels: &Option<Vec<u32>>,
    start: usize,
    b: usize,
) -> Result<crate::pipeline::Condition<'a>> {
    let class = labels
        .as_ref()
        .map(|l| Tensor::from_vec(l[start..start + b].to_vec(), b, &pipe.device))
        .transpose()?;
    Ok(pipe.conditioned(class))
}

impl std::fmt::Display for NelboReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NELBO {} nats ({:.4} bits/dim) on {} held-out examples: L_prior {:.4}, L_diff {:.4}, L_rec {:.4}",
            self.nelbo, self.bits_per_dim.mean, self.nelbo.n, self.l_prior, self.l_diff, self.l_rec
        )?;
        dequantization_note(f, &self.dequantization)?;
        per_class_note(f, &self.per_class)
    }
}

fn dequantization_note(
    f: &mut std::fmt::Formatter<'_>,
    d: &Option<Dequantization>,
) -> std::fmt::Result {
    match d {
        Some(d) => write!(
            f,
            " (uniformly dequantized, {} draw per example, + D log {} = {:.1} nats: an upper bound on -log P(x))",
            d.draws,
            d.levels / 2,
            d.log_volume_nats
        ),
        None => Ok(()),
    }
}

/// `; conditional on the label, bits/dim per class: 0: 1.23, 1: ...` for a conditional model.
fn per_class_note(
    f: &mut std::fmt::Formatter<'_>,
    per_class: &[ClassEstimate],
) -> std::fmt::Result {
    if per_class.is_empty() {
        return Ok(());
    }
    write!(f, "; conditional on the label, bits/dim per class:")?;
    for (i, c) in per_class.iter().enumerate() {
        let sep = if i == 0 { " " } else { ", " };
        write!(f, "{sep}{}: {:.3}", c.class, c.bits_per_dim.mean)?;
    }
    Ok(())
}

fn to_f64s(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

/// The NELBO of `n` held-out examples (the `Test` split), in batches of `batch`. Discrete-time
/// models sum every KL term of their grid; continuous-time models average the diffusion loss over
/// [`CONTINUOUS_EVAL_TIMES`] stratified, importance-sampled times per example.
pub fn evaluate_nelbo(
    pipe: &Pipeline,
    data: &dyn Dataset,
    n: usize,
    batch: usize,
    rng: &mut Rng,
) -> Result<NelboReport> {
    if n == 0 || batch == 0 {
        return Err(NdmError::InvalidArgument(
            "evaluation needs at least one example".into(),
        ));
    }
    let table = pipe
        .spec
        .steps
        .is_none()
        .then(|| ImportanceTable::defensive(pipe, 4096, 0.5));
    // A discretized decoder gives a probability of the discrete data itself: no dequantization.
    let deq =
        match pipe.spec.decoder {
            Decoder::Gaussian => Dequantization::for_data(data, pipe.data_dims()),
            Decoder::Discretized if data.quantization() == Some(256) => None,
            Decoder::Discretized => return Err(NdmError::Incompatible(
                "model.decoder = discretized needs 8-bit data (256 levels); this dataset is not"
                    .into(),
            )),
        };
    let offset = deq.map_or(0.0, |d| d.log_volume_nats);
    let mut totals: Vec<f64> = Vec::with_capacity(n);
    let mut all_labels = Vec::new();
    let mut sums = [0.0f64; 3];
    for start in (0..n).step_by(batch) {
        let b = batch.min(n - start);
        let (mut x, labels) = labeled_batch(pipe, data, b, rng)?;
        if let Some(d) = &deq {
            x = d.apply(&x, rng)?;
        }
        let _cond = condition(pipe, &labels, 0, b)?;
        all_labels.extend(labels.unwrap_or_default());
        let terms = match pipe.spec.steps {
            Some(t_total) => discrete_nelbo(pipe, &x, t_total, DiffEstimate::Exhaustive, rng)?,
            None => continuous_nelbo(
                pipe,
                &x,
                TimeSampling::Importance,
                table.as_ref(),
                CONTINUOUS_EVAL_TIMES,
                BoundaryTerms::Every,
                rng,
            )?,
        };
        let (p, d, r) = (
            to_f64s(&terms.l_prior)?,
            to_f64s(&terms.l_diff)?,
            to_f64s(&terms.l_rec)?,
        );
        for i in 0..b {
            sums[0] += p[i];
            sums[1] += d[i];
            sums[2] += r[i];
            totals.push(p[i] + d[i] + r[i] + offset);
        }
    }
    let nelbo = Estimate::of(&totals).ok_or_else(|| NdmError::Spec("no examples".into()))?;
    if !nelbo.is_finite() {
        return Err(NdmError::NonFinite("the NELBO is not finite".into()));
    }
    let nf = n as f64;
    Ok(NelboReport {
        nelbo,
        bits_per_dim: nelbo.bits_per_dim(pipe.data_dims()),
        l_prior: sums[0] / nf,
        l_diff: sums[1] / nf,
        l_rec: sums[2] / nf,
        dequantization: deq,
        per_class: per_class(&totals, &all_labels, pipe.classes(), pipe.data_dims()),
    })
}

/// An ODE NLL estimate on held-out data.
#[derive(Debug, Clone, Serialize)]
pub struct NllReport {
    /// The NLL per example, nats.
    pub nll: Estimate,
    pub bits_per_dim: Estimate,
    /// How the divergence was computed and how many probes were averaged per example.
    pub trace: String,
    pub probes: usize,
    pub rtol: f64,
    pub atol: f64,
    /// Drift evaluations over all solves.
    pub nfe: usize,
    /// Present when the data is discrete and was dequantized.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dequantization: Option<Dequantization>,
    /// A conditional model's NLL of each class, conditional on the label; empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_class: Vec<ClassEstimate>,
}

impl std::fmt::Display for NllReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ODE NLL {} nats ({:.4} bits/dim) on {} held-out examples, trace {} x{}, rk45 NFE {}",
            self.nll, self.bits_per_dim.mean, self.nll.n, self.trace, self.probes, self.nfe
        )?;
        dequantization_note(f, &self.dequantization)?;
        per_class_note(f, &self.per_class)
    }
}

/// The ODE NLL of `n` held-out examples, solved `batch` examples at a time.
pub fn evaluate_ode_nll(
    pipe: &Pipeline,
    data: &dyn Dataset,
    n: usize,
    batch: usize,
    opts: &NllOptions,
    rng: &mut Rng,
) -> Result<NllReport> {
    if n == 0 || batch == 0 {
        return Err(NdmError::InvalidArgument(
            "evaluation needs at least one example".into(),
        ));
    }
    if opts.probes == 0 || !(opts.tol.rtol > 0.0 && opts.tol.atol > 0.0) {
        return Err(NdmError::InvalidArgument(
            "the ODE NLL needs at least one probe and positive rtol, atol".into(),
        ));
    }
    let deq = Dequantization::for_data(data, pipe.data_dims());
    let (mut x, labels) = labeled_batch(pipe, data, n, rng)?;
    if let Some(d) = &deq {
        x = d.apply(&x, rng)?;
    }
    let offset = deq.map_or(0.0, |d| d.log_volume_nats);
    let mut all = Vec::with_capacity(n);
    let mut nfe = 0;
    for start in (0..n).step_by(batch) {
        let b = batch.min(n - start);
        let _cond = condition(pipe, &labels, start, b)?;
        let r = ode_nll(pipe, &x.narrow(0, start, b)?, opts, rng)?;
        all.extend(r.nll.into_iter().map(|v| v + offset));
        nfe += r.stats.nfe;
    }
    let nll = Estimate::of(&all).ok_or_else(|| NdmError::Spec("no examples".into()))?;
    Ok(NllReport {
        nll,
        bits_per_dim: nll.bits_per_dim(pipe.data_dims()),
        trace: format!("{:?}", opts.trace).to_lowercase(),
        probes: if opts.trace == Trace::Exact {
            1
        } else {
            opts.probes
        },
        rtol: opts.tol.rtol,
        atol: opts.tol.atol,
        nfe,
        dequantization: deq,
        per_class: per_class(
            &all,
            labels.as_deref().unwrap_or_default(),
            pipe.classes(),
            pipe.data_dims(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// 8-bit data of some shape (only its quantization matters here).
    #[derive(Debug)]
    struct Bytes;
    impl Dataset for Bytes {
        fn data_shape(&self) -> Vec<usize> {
            vec![1]
        }
        fn sample(
            &self,
            _: usize,
            _: Split,
            _: &mut Rng,
            _: &Device,
        ) -> candle_core::Result<Tensor> {
            candle_core::bail!("not used")
        }
        fn quantization(&self) -> Option<u32> {
            Some(256)
        }
    }

    fn dequant(dims: usize) -> Dequantization {
        Dequantization::for_data(&Bytes, dims).unwrap()
    }

    /// A model whose density is uniform on [-1, 1]^D (NLL of the dequantized data D ln 2 nats)
    /// scores exactly 8 bits per dimension on 8-bit data, through the report's own conversion.
    #[test]
    fn a_uniform_density_scores_eight_bits_per_dim() {
        for dims in [1usize, 784, 3072] {
            let d = dequant(dims);
            let nll_y = dims as f64 * std::f64::consts::LN_2;
            let e = Estimate::of(&[nll_y + d.log_volume_nats]).unwrap();
            assert!((e.bits_per_dim(dims).mean - 8.0).abs() < 1e-12, "{dims}");
        }
    }

    /// Dequantized values stay in their pixel's cell and fill it uniformly.
    #[test]
    fn dequantized_values_fill_their_cells() {
        let pixels: Vec<f32> = (0..4096).map(|i| (i % 256) as f32).collect();
        let x: Vec<f32> = pixels.iter().map(|p| (p + 0.5) / 128.0 - 1.0).collect();
        let x = Tensor::from_vec(x, 4096, &Device::Cpu).unwrap();
        let y: Vec<f32> = dequant(4096)
            .apply(&x, &mut Rng::new(3))
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut offsets = Vec::new();
        for (v, p) in y.iter().zip(&pixels) {
            let cell = ((v + 1.0) * 128.0).floor();
            assert_eq!(cell, *p, "{v} left the cell of pixel {p}");
            offsets.push(((v + 1.0) * 128.0 - p) as f64);
        }
        // Uniform on [0, 1): mean 1/2, variance 1/12.
        let e = Estimate::of(&offsets).unwrap();
        assert!((e.mean - 0.5).abs() < 4.0 * (1.0f64 / 12.0 / 4096.0).sqrt());
    }
}
