//! Glow (Kingma & Dhariwal 2018) on candle: actnorm with data-dependent initialisation, an
//! invertible 1x1 convolution in LU form and an affine coupling whose last layer starts at zero.
//!
//! Images (`[C, H, W]`) get the multi-scale architecture: each of `L` levels squeezes
//! `C x H x W -> 4C x H/2 x W/2`, runs `K` steps and (except the last) factors half the channels
//! out to a Gaussian whose mean and log-std a zero-initialised convolution predicts from the other
//! half. Flat data (`[D]`) gets one level of `K` steps with MLP couplings and a `D x D` LU linear map
//! in place of the 1x1 convolution (RealNVP with learned mixing). Internally flat data travels as
//! `[B, D, 1, 1]`, so every layer is written once.
//!
//! Direction: `encode` maps a latent `z` to the base noise (the density direction, with the
//! log-determinants); `sample` runs the inverse from the base noise.

use ndm_api::candle_core::{DType, Module, Result, Tensor};
use ndm_api::candle_nn::{Init, Linear, VarBuilder};
use ndm_api::elbo::HALF_LN_2PI;
use ndm_api::rng::host_tensor;
use ndm_api::{linalg, NdmError, Rng};
use ndm_unet::layers::Conv2d;
use ndm_unet::KernelBackend;

/// The sizes of a Glow flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlowSize {
    /// `L`: multi-scale levels (images only; flat data has one).
    pub levels: usize,
    /// `K`: steps per level.
    pub steps: usize,
    /// Hidden width of each coupling's network (channels or units).
    pub hidden: usize,
}

/// The sum of every entry of each example: `[B, ...] -> [B]`.
fn per_example_sum(t: &Tensor) -> Result<Tensor> {
    t.flatten_from(1)?.sum(1)
}

/// A per-channel vector `[C]` viewed as `[1, C, 1, 1]`.
fn channel_view(v: &Tensor) -> Result<Tensor> {
    v.reshape((1, (), 1, 1))
}

/// `u = (z - mean) exp(-logs)` and `log N(z; mean, exp(logs)^2)` summed per example; `mean` and
/// `logs` broadcast to `z`.
fn standardize(z: &Tensor, mean: &Tensor, logs: &Tensor) -> Result<(Tensor, Tensor)> {
    let u = z.broadcast_sub(mean)?.broadcast_mul(&logs.neg()?.exp()?)?;
    let per = ((u.sqr()? * -0.5)?.broadcast_sub(logs)? - HALF_LN_2PI)?;
    let lp = per_example_sum(&per)?;
    Ok((u, lp))
}

/// Writes host values into a variable's storage in place (no gradient is recorded).
fn assign(var: &Tensor, values: Vec<f64>) -> Result<()> {
    let src = host_tensor(values, var.dims(), var.dtype(), var.device())?;
    var.slice_set(&src, 0, 0)
}

fn host_values(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// `y = (x - b) e^{-s}` per channel, `log|det| = -H W sum s`.
#[derive(Debug)]
struct ActNorm {
    bias: Tensor,
    logs: Tensor,
}

impl ActNorm {
    fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        Ok(ActNorm {
            bias: vb.get_with_hints(c, "bias", Init::Const(0.0))?,
            logs: vb.get_with_hints(c, "logs", Init::Const(0.0))?,
        })
    }

    /// `(y, log|det|)` with the log-det a scalar (the same for every example).
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let hw = (x.dim(2)? * x.dim(3)?) as f64;
        let y = x
            .broadcast_sub(&channel_view(&self.bias)?)?
            .broadcast_mul(&channel_view(&self.logs.neg()?.exp()?)?)?;
        Ok((y, (self.logs.sum_all()? * -hw)?))
    }

    fn inverse(&self, y: &Tensor) -> Result<Tensor> {
        y.broadcast_mul(&channel_view(&self.logs.exp()?)?)?
            .broadcast_add(&channel_view(&self.bias)?)
    }

    /// Sets `b` to the per-channel mean and `s` to the log standard deviation of `x`, so this
    /// layer's output on `x` has zero mean and unit variance per channel.
    fn data_init(&self, x: &Tensor) -> Result<()> {
        let c = x.dim(1)?;
        let rows = x.to_dtype(DType::F64)?.transpose(0, 1)?.reshape((c, ()))?;
        let n = rows.dim(1)? as f64;
        let v = rows.to_vec2::<f64>()?;
        let mut mean = Vec::with_capacity(c);
        let mut logs = Vec::with_capacity(c);
        for row in &v {
            let m = row.iter().sum::<f64>() / n;
            let var = row.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / n;
            mean.push(m);
            logs.push(0.5 * (var + 1e-12).ln());
        }
        assign(&self.bias, mean)?;
        assign(&self.logs, logs)
    }
}

/// The invertible 1x1 convolution `W = P L (U + diag(sign e^{log S}))`, `P` and `sign` fixed,
/// `log|det| = H W sum log S`; initialised at the LU factors of a random rotation.
#[derive(Debug)]
struct InvConv {
    perm: Tensor,
    sign: Tensor,
    lower: Tensor,
    upper: Tensor,
    logs: Tensor,
    lower_mask: Tensor,
    upper_mask: Tensor,
    eye: Tensor,
}

impl InvConv {
    fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        let (dtype, dev) = (vb.dtype(), vb.device().clone());
        let lower = vb.get_with_hints((c, c), "lower", Init::Const(0.0))?;
        let upper = vb.get_with_hints((c, c), "upper", Init::Const(0.0))?;
        let logs = vb.get_with_hints(c, "logs", Init::Const(0.0))?;
        // A rotation from the eigenvectors of a random symmetric matrix, drawn from the layer's
        // name alone: P and sign are not variables, so they must come out the same whenever the
        // model is rebuilt (before a checkpoint's L, U and log S are loaded over the initial ones).
        let mut rng = Rng::derived(0x676c_6f77, &vb.prefix());
        let a = rng.normal_vec(c * c);
        let sym: Vec<f64> = (0..c * c).map(|k| a[k] + a[(k % c) * c + k / c]).collect();
        let (_, q) = linalg::sym_eigen(&sym, c);
        let (rows, l, u) = linalg::lu(&q, c)
            .ok_or_else(|| ndm_api::candle_core::Error::Msg("singular rotation".into()))?;
        let mut p = vec![0.0; c * c];
        for (i, &r) in rows.iter().enumerate() {
            p[r * c + i] = 1.0;
        }
        let diag: Vec<f64> = (0..c).map(|i| u[i * c + i]).collect();
        let strict = |m: &[f64], below: bool| -> Vec<f64> {
            (0..c * c)
                .map(|k| {
                    let (i, j) = (k / c, k % c);
                    if (below && j < i) || (!below && j > i) {
                        m[k]
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        assign(&lower, strict(&l, true))?;
        assign(&upper, strict(&u, false))?;
        assign(&logs, diag.iter().map(|d| d.abs().ln()).collect())?;
        let mask = |below: bool| -> Result<Tensor> {
            let ones = vec![1.0; c * c];
            host_tensor(strict(&ones, below), &[c, c], dtype, &dev)
        };
        Ok(InvConv {
            perm: host_tensor(p, &[c, c], dtype, &dev)?,
            sign: host_tensor(diag.iter().map(|d| d.signum()).collect(), &[c], dtype, &dev)?,
            lower_mask: mask(true)?,
            upper_mask: mask(false)?,
            eye: Tensor::eye(c, dtype, &dev)?,
            lower,
            upper,
            logs,
        })
    }

    fn weight(&self) -> Result<Tensor> {
        let l = ((&self.lower * &self.lower_mask)? + &self.eye)?;
        let d = (&self.sign * self.logs.exp()?)?;
        let u = ((&self.upper * &self.upper_mask)? + self.eye.broadcast_mul(&d.unsqueeze(0)?)?)?;
        self.perm.matmul(&l.matmul(&u)?)
    }

    fn apply(w: &Tensor, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, wd) = x.dims4()?;
        w.broadcast_matmul(&x.reshape((b, c, h * wd))?)?
            .reshape((b, c, h, wd))
    }

    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let hw = (x.dim(2)? * x.dim(3)?) as f64;
        Ok((
            Self::apply(&self.weight()?, x)?,
            (self.logs.sum_all()? * hw)?,
        ))
    }

    fn inverse(&self, y: &Tensor) -> Result<Tensor> {
        let w = self.weight()?;
        let c = w.dim(0)?;
        let inv = linalg::inverse(&host_values(&w)?, c).ok_or_else(|| {
            ndm_api::candle_core::Error::Msg("the 1x1 convolution became singular".into())
        })?;
        Self::apply(&host_tensor(inv, &[c, c], w.dtype(), w.device())?, y)
    }
}

/// The coupling's network: convolutions for images, an MLP for flat data; the last layer starts
/// at zero so every coupling starts as the map `x_b -> sigmoid(2) x_b`.
#[derive(Debug)]
enum CouplingNet {
    Conv([Conv2d; 3]),
    Mlp([Linear; 3]),
}

impl CouplingNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            CouplingNet::Conv([a, b, c]) => c.forward(&b.forward(&a.forward(x)?.relu()?)?.relu()?),
            CouplingNet::Mlp([a, b, c]) => {
                let (n, ch, h, w) = x.dims4()?;
                let y = c.forward(
                    &b.forward(&a.forward(&x.reshape((n, ch * h * w))?)?.relu()?)?
                        .relu()?,
                )?;
                y.reshape((n, (), h, w))
            }
        }
    }
}

fn zero_linear(vb: VarBuilder, cin: usize, cout: usize) -> Result<Linear> {
    let w = vb.get_with_hints((cout, cin), "weight", Init::Const(0.0))?;
    let b = vb.get_with_hints(cout, "bias", Init::Const(0.0))?;
    Ok(Linear::new(w, Some(b)))
}

/// Affine coupling: `(shift, raw) = NN(x_a)`, `scale = sigmoid(raw + 2)`,
/// `y_b = (x_b + shift) scale`, `log|det| = sum log scale`.
#[derive(Debug)]
struct Coupling {
    net: CouplingNet,
}

impl Coupling {
    fn new(
        vb: VarBuilder,
        c: usize,
        hidden: usize,
        image: bool,
        backend: KernelBackend,
    ) -> Result<Self> {
        let (ca, cb) = (c / 2, c - c / 2);
        let net = if image {
            CouplingNet::Conv([
                Conv2d::new(vb.pp("in"), ca, hidden, 3, 1, 1, backend)?,
                Conv2d::new(vb.pp("mid"), hidden, hidden, 1, 1, 0, backend)?,
                Conv2d::zeros(vb.pp("out"), hidden, 2 * cb, 3, 1, 1, backend)?,
            ])
        } else {
            CouplingNet::Mlp([
                ndm_api::candle_nn::linear(ca, hidden, vb.pp("in"))?,
                ndm_api::candle_nn::linear(hidden, hidden, vb.pp("mid"))?,
                zero_linear(vb.pp("out"), hidden, 2 * cb)?,
            ])
        };
        Ok(Coupling { net })
    }

    /// `(x_a, shift, scale)` of `x`.
    fn parts(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let c = x.dim(1)?;
        let (ca, cb) = (c / 2, c - c / 2);
        let xa = x.narrow(1, 0, ca)?;
        let xb = x.narrow(1, ca, cb)?;
        let h = self.net.forward(&xa)?;
        let shift = h.narrow(1, 0, cb)?;
        let scale = ndm_api::candle_nn::ops::sigmoid(&(h.narrow(1, cb, cb)? + 2.0)?)?;
        Ok((xa, xb, shift, scale))
    }

    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (xa, xb, shift, scale) = self.parts(x)?;
        let yb = (xb + shift)?.mul(&scale)?;
        Ok((
            Tensor::cat(&[&xa, &yb], 1)?,
            per_example_sum(&scale.log()?)?,
        ))
    }

    fn inverse(&self, y: &Tensor) -> Result<Tensor> {
        let (ya, yb, shift, scale) = self.parts(y)?;
        let xb = (yb.div(&scale)? - shift)?;
        Tensor::cat(&[&ya, &xb], 1)
    }
}

/// One step of flow: actnorm, 1x1 convolution, coupling.
#[derive(Debug)]
struct Step {
    norm: ActNorm,
    mix: InvConv,
    coupling: Coupling,
}

impl Step {
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (y, ld_norm) = self.norm.forward(x)?;
        let (y, ld_mix) = self.mix.forward(&y)?;
        let (y, ld_coupling) = self.coupling.forward(&y)?;
        Ok((y, ld_coupling.broadcast_add(&(ld_norm + ld_mix)?)?))
    }

    fn inverse(&self, y: &Tensor) -> Result<Tensor> {
        self.norm
            .inverse(&self.mix.inverse(&self.coupling.inverse(y)?)?)
    }
}

/// Factors out the second half of the channels to `N(mean, exp(logs)^2)` with `(mean, logs)` from
/// a zero-initialised convolution of the first half.
#[derive(Debug)]
struct Split {
    prior: Conv2d,
    /// Channels factored out.
    out: usize,
}

impl Split {
    fn stats(&self, z1: &Tensor) -> Result<(Tensor, Tensor)> {
        let h = self.prior.forward(z1)?;
        Ok((h.narrow(1, 0, self.out)?, h.narrow(1, self.out, self.out)?))
    }

    /// `(z1, u, log N(z2; mean, exp(logs)^2))` with `u` the standardized `z2`.
    fn forward(&self, h: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let keep = h.dim(1)? - self.out;
        let z1 = h.narrow(1, 0, keep)?;
        let (mean, logs) = self.stats(&z1)?;
        let (u, lp) = standardize(&h.narrow(1, keep, self.out)?, &mean, &logs)?;
        Ok((z1, u, lp))
    }

    fn inverse(&self, z1: &Tensor, eps: &Tensor) -> Result<Tensor> {
        let (mean, logs) = self.stats(z1)?;
        let z2 = (mean + logs.exp()?.mul(eps)?)?;
        Tensor::cat(&[z1, &z2], 1)
    }
}

#[derive(Debug)]
struct Level {
    steps: Vec<Step>,
    split: Option<Split>,
    /// The shape `[C, H, W]` of the noise a split factors out (sampling draws it).
    split_shape: Vec<usize>,
}

/// `[B, C, H, W] -> [B, 4C, H/2, W/2]`.
fn squeeze(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape(vec![b, c, h / 2, 2, w / 2, 2])?
        .permute(vec![0, 1, 3, 5, 2, 4])?
        .reshape((b, 4 * c, h / 2, w / 2))
}

/// The inverse of [`squeeze`].
fn unsqueeze(x: &Tensor) -> Result<Tensor> {
    let (b, c4, h, w) = x.dims4()?;
    let c = c4 / 4;
    x.reshape(vec![b, c, 2, 2, h, w])?
        .permute(vec![0, 1, 4, 2, 5, 3])?
        .reshape((b, c, 2 * h, 2 * w))
}

/// A Glow flow over one latent shape.
#[derive(Debug)]
pub struct Glow {
    shape: Vec<usize>,
    image: bool,
    levels: Vec<Level>,
    top_mean: Tensor,
    top_logs: Tensor,
    /// The top noise's shape `[C, H, W]`.
    top_shape: Vec<usize>,
}

impl Glow {
    /// A flow over `shape` (`[D]` with `D >= 2`, or `[C, H, W]` with `H` and `W` divisible by
    /// `2^levels`), its weights under `vb`.
    pub fn new(vb: VarBuilder, shape: &[usize], size: GlowSize) -> ndm_api::Result<Self> {
        if size.steps == 0 || size.hidden == 0 || size.levels == 0 {
            return Err(NdmError::invalid_param(format!(
                "levels, steps and hidden must be at least 1, got levels = {}, steps = {}, hidden = {}",
                size.levels, size.steps, size.hidden
            )));
        }
        let backend = KernelBackend::for_device(vb.device());
        let (image, mut c, mut h, mut w) = match *shape {
            [d] if d >= 2 => (false, d, 1, 1),
            [c, h, w] => {
                let k = 1usize << size.levels.min(30);
                if size.levels > 30 || h % k != 0 || w % k != 0 {
                    return Err(NdmError::invalid_param(format!(
                        "levels = {}: the image side {h} x {w} is not divisible by 2^levels = {k}; \
                         use fewer levels",
                        size.levels
                    )));
                }
                (true, c, h, w)
            }
            _ => {
                return Err(NdmError::invalid_param(format!(
                    "a Glow flow needs flat data of at least 2 dimensions or [C, H, W] images, got shape {shape:?}"
                )))
            }
        };
        let n_levels = if image { size.levels } else { 1 };
        let mut levels = Vec::with_capacity(n_levels);
        for l in 0..n_levels {
            let lvb = vb.pp(format!("level{l}"));
            if image {
                (c, h, w) = (4 * c, h / 2, w / 2);
            }
            let steps = (0..size.steps)
                .map(|k| {
                    let svb = lvb.pp(format!("step{k}"));
                    Ok(Step {
                        norm: ActNorm::new(svb.pp("actnorm"), c)?,
                        mix: InvConv::new(svb.pp("invconv"), c)?,
                        coupling: Coupling::new(
                            svb.pp("coupling"),
                            c,
                            size.hidden,
                            image,
                            backend,
                        )?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let (split, split_shape) = if image && l + 1 < n_levels {
                let (keep, out) = (c / 2, c - c / 2);
                let prior = Conv2d::zeros(lvb.pp("split"), keep, 2 * out, 3, 1, 1, backend)?;
                let split_shape = vec![out, h, w];
                c = keep;
                (Some(Split { prior, out }), split_shape)
            } else {
                (None, Vec::new())
            };
            levels.push(Level {
                steps,
                split,
                split_shape,
            });
        }
        Ok(Glow {
            shape: shape.to_vec(),
            image,
            levels,
            top_mean: vb.get_with_hints(c, "top.mean", Init::Const(0.0))?,
            top_logs: vb.get_with_hints(c, "top.logs", Init::Const(0.0))?,
            top_shape: vec![c, h, w],
        })
    }

    /// The latent shape (without batch).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn to_4d(&self, z: &Tensor) -> Result<Tensor> {
        if self.image {
            Ok(z.clone())
        } else {
            z.reshape((z.dim(0)?, self.shape[0], 1, 1))
        }
    }

    /// `log p(z)` per example (`[B]`): the base densities plus every log-determinant.
    pub fn log_prob(&self, z: &Tensor) -> Result<Tensor> {
        Ok(self.run(z, false)?.2)
    }

    /// Sets every actnorm from a batch (in order, each on its own input), without gradients.
    pub fn data_init(&self, z: &Tensor) -> Result<()> {
        self.run(&z.detach(), true).map(|_| ())
    }

    /// `n` draws: base noise through the inverse flow.
    pub fn sample(
        &self,
        n: usize,
        rng: &mut Rng,
        dtype: DType,
        device: &ndm_api::candle_core::Device,
    ) -> Result<Tensor> {
        let mut noise = |shape: &[usize]| -> Result<Tensor> {
            let mut full = vec![n];
            full.extend_from_slice(shape);
            rng.normal_tensor(&full, dtype, device)
        };
        let top = noise(&self.top_shape)?;
        let splits = self
            .levels
            .iter()
            .rev()
            .filter(|l| l.split.is_some())
            .map(|l| noise(&l.split_shape))
            .collect::<Result<Vec<_>>>()?;
        self.decode(&top, &splits)
    }

    /// The inverse of the density direction for given base noise: the top noise `u` and, per split
    /// from the last level to the first, its noise (tests check `f^-1(f(z)) = z` with it).
    pub fn decode(&self, top: &Tensor, splits: &[Tensor]) -> Result<Tensor> {
        let n = top.dim(0)?;
        let mut h = top
            .broadcast_mul(&channel_view(&self.top_logs.exp()?)?)?
            .broadcast_add(&channel_view(&self.top_mean)?)?;
        let mut splits = splits.iter();
        for level in self.levels.iter().rev() {
            if let Some(split) = &level.split {
                let eps = splits.next().ok_or_else(|| {
                    ndm_api::candle_core::Error::Msg("too few split noises".into())
                })?;
                h = split.inverse(&h, eps)?;
            }
            for step in level.steps.iter().rev() {
                h = step.inverse(&h)?;
            }
            if self.image {
                h = unsqueeze(&h)?;
            }
        }
        let mut shape = vec![n];
        shape.extend_from_slice(&self.shape);
        h.reshape(shape)
    }

    /// The flow as a map onto the latent's own shape: `(y, log|det dy/dz|)` per example, `y` the
    /// base noise of [`Glow::encode`] put back in place (each split's noise next to the channels
    /// it was split from, every squeeze undone), so `y` keeps the spatial layout of `z`.
    pub fn map(&self, z: &Tensor) -> Result<(Tensor, Tensor)> {
        let (top, splits, logp) = self.run(z, false)?;
        let d = (z.elem_count() / z.dim(0)?) as f64;
        let mut sq = per_example_sum(&top.sqr()?)?;
        let mut h = top;
        let mut splits = splits.into_iter();
        for level in self.levels.iter().rev() {
            if level.split.is_some() {
                let u = splits.next().ok_or_else(|| {
                    ndm_api::candle_core::Error::Msg("too few split noises".into())
                })?;
                sq = (sq + per_example_sum(&u.sqr()?)?)?;
                h = Tensor::cat(&[&h, &u], 1)?;
            }
            if self.image {
                h = unsqueeze(&h)?;
            }
        }
        // log p(z) = log N(y; 0, I) + log|det|.
        let log_det = ((logp + (sq * 0.5)?)? + d * HALF_LN_2PI)?;
        Ok((h.reshape(z.shape())?, log_det))
    }

    /// The inverse of [`Glow::map`].
    pub fn unmap(&self, y: &Tensor) -> Result<Tensor> {
        let mut h = self.to_4d(y)?;
        let mut splits = Vec::new();
        for level in &self.levels {
            if self.image {
                h = squeeze(&h)?;
            }
            if let Some(split) = &level.split {
                let keep = h.dim(1)? - split.out;
                splits.push(h.narrow(1, keep, split.out)?);
                h = h.narrow(1, 0, keep)?;
            }
        }
        splits.reverse();
        self.decode(&h, &splits)
    }

    /// The density direction's base noise: `(top, splits)` with the splits' noise from the last
    /// level to the first (the order [`Glow::decode`] takes), and `log p(z)`.
    pub fn encode(&self, z: &Tensor) -> Result<(Tensor, Vec<Tensor>, Tensor)> {
        self.run(z, false)
    }

    /// The density direction; with `init`, each actnorm first sets itself from its input.
    fn run(&self, z: &Tensor, init: bool) -> Result<(Tensor, Vec<Tensor>, Tensor)> {
        let mut h = self.to_4d(z)?;
        let mut logp = Tensor::zeros(z.dim(0)?, z.dtype(), z.device())?;
        let mut splits = Vec::new();
        for level in &self.levels {
            if self.image {
                h = squeeze(&h)?;
            }
            for step in &level.steps {
                if init {
                    step.norm.data_init(&h)?;
                }
                let (y, ld) = step.forward(&h)?;
                h = y;
                logp = (logp + ld)?;
            }
            if let Some(split) = &level.split {
                let (z1, u, lp) = split.forward(&h)?;
                splits.push(u);
                h = z1;
                logp = (logp + lp)?;
            }
        }
        let (m, s) = (channel_view(&self.top_mean)?, channel_view(&self.top_logs)?);
        let (top, lp) = standardize(&h, &m, &s)?;
        splits.reverse();
        Ok((top, splits, (logp + lp)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndm_api::candle_nn::VarMap;
    use ndm_api::testing::test_device;
    use ndm_api::vars::{seeded_var_builder, sorted_vars};

    /// A flow in f64 with every weight moved off its initial value, so that no layer is the
    /// identity (zero-initialised couplings and splits, unit actnorm).
    fn perturbed(shape: &[usize], size: GlowSize, seed: u64, by: f64) -> Glow {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, seed, DType::F64, test_device());
        let flow = Glow::new(vb, shape, size).unwrap();
        let mut rng = Rng::new(seed + 1);
        for (_, var) in sorted_vars(&varmap) {
            let noise = rng
                .normal_tensor(var.dims(), DType::F64, test_device())
                .unwrap();
            var.set(&(var.as_tensor() + (noise * by).unwrap()).unwrap())
                .unwrap();
        }
        flow
    }

    /// The base noise of one example as a flat vector.
    fn base_noise(flow: &Glow, z: &Tensor) -> Vec<f64> {
        let (top, splits, _) = flow.encode(z).unwrap();
        let mut out = host_values(&top).unwrap();
        for s in &splits {
            out.extend(host_values(s).unwrap());
        }
        out
    }

    fn log_abs_det(m: &[f64], n: usize) -> f64 {
        let (_, _, u) = linalg::lu(m, n).expect("singular Jacobian");
        (0..n).map(|i| u[i * n + i].abs().ln()).sum()
    }

    /// `f^-1(f(z)) = z` to 1e-5, and `log p(z) = log N(f(z); 0, I) + log|det J_f(z)|` with the
    /// Jacobian of the whole flow by central differences.
    fn check_flow(shape: &[usize], size: GlowSize) {
        let flow = perturbed(shape, size, 3, 0.3);
        let d: usize = shape.iter().product();
        let mut full = vec![2];
        full.extend_from_slice(shape);
        let z = Rng::new(9)
            .normal_tensor(&full, DType::F64, test_device())
            .unwrap();
        let (top, splits, logp) = flow.encode(&z).unwrap();
        let back = flow.decode(&top, &splits).unwrap();
        let err = (back - &z).unwrap().abs().unwrap().max_all().unwrap();
        let err = err.to_scalar::<f64>().unwrap();
        assert!(err < 1e-5, "f^-1(f(z)) differs from z by {err}");

        let z0 = z.narrow(0, 0, 1).unwrap();
        let x0 = host_values(&z0).unwrap();
        let u0 = base_noise(&flow, &z0);
        assert_eq!(u0.len(), d);
        let h = 1e-5;
        let mut jac = vec![0.0; d * d];
        let mut one = full.clone();
        one[0] = 1;
        for j in 0..d {
            let at = |delta: f64| {
                let mut x = x0.clone();
                x[j] += delta;
                base_noise(
                    &flow,
                    &Tensor::from_vec(x, one.clone(), test_device()).unwrap(),
                )
            };
            let (up, down) = (at(h), at(-h));
            for i in 0..d {
                jac[i * d + j] = (up[i] - down[i]) / (2.0 * h);
            }
        }
        // The same flow as a map onto z's own shape: it inverts, and its log-det is the Jacobian's.
        let (y, log_det) = flow.map(&z).unwrap();
        assert_eq!(y.dims(), z.dims());
        let err = (flow.unmap(&y).unwrap() - &z).unwrap().abs().unwrap();
        let err = err.max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(err < 1e-5, "unmap(map(z)) differs from z by {err}");
        let mapped = |x: Vec<f64>| {
            let t = Tensor::from_vec(x, one.clone(), test_device()).unwrap();
            host_values(&flow.map(&t).unwrap().0).unwrap()
        };
        let mut jac_map = vec![0.0; d * d];
        for j in 0..d {
            let (mut up, mut down) = (x0.clone(), x0.clone());
            up[j] += h;
            down[j] -= h;
            let (up, down) = (mapped(up), mapped(down));
            for i in 0..d {
                jac_map[i * d + j] = (up[i] - down[i]) / (2.0 * h);
            }
        }
        let got_map = log_det.to_vec1::<f64>().unwrap()[0];
        let brute_map = log_abs_det(&jac_map, d);
        assert!(
            (got_map - brute_map).abs() < 1e-6 * (1.0 + brute_map.abs()),
            "map log-det {got_map}, brute force {brute_map}"
        );

        let base: f64 = u0.iter().map(|u| -0.5 * u * u - HALF_LN_2PI).sum();
        let brute = base + log_abs_det(&jac, d);
        let got = logp.to_vec1::<f64>().unwrap()[0];
        assert!(
            (got - brute).abs() < 1e-6 * (1.0 + brute.abs()),
            "log p = {got}, brute force {brute}"
        );
    }

    #[test]
    fn flat_flow_inverts_and_its_log_det_is_the_jacobians() {
        check_flow(
            &[3],
            GlowSize {
                levels: 1,
                steps: 3,
                hidden: 8,
            },
        );
    }

    #[test]
    fn multiscale_flow_inverts_and_its_log_det_is_the_jacobians() {
        check_flow(
            &[1, 4, 4],
            GlowSize {
                levels: 2,
                steps: 2,
                hidden: 4,
            },
        );
    }

    #[test]
    fn actnorm_data_init_standardizes_each_channel() {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, 0, DType::F64, test_device());
        let norm = ActNorm::new(vb, 3).unwrap();
        let x = Rng::new(4)
            .normal_tensor(&[16, 3, 4, 4], DType::F64, test_device())
            .unwrap();
        let shift = Tensor::new(&[2.0f64, -1.0, 0.5], test_device()).unwrap();
        let scale = Tensor::new(&[3.0f64, 0.2, 1.0], test_device()).unwrap();
        let x = x
            .broadcast_mul(&channel_view(&scale).unwrap())
            .unwrap()
            .broadcast_add(&channel_view(&shift).unwrap())
            .unwrap();
        norm.data_init(&x).unwrap();
        let (y, _) = norm.forward(&x).unwrap();
        let rows = y
            .transpose(0, 1)
            .unwrap()
            .reshape((3, ()))
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        for row in rows {
            let n = row.len() as f64;
            let m = row.iter().sum::<f64>() / n;
            let v = row.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / n;
            assert!(
                m.abs() < 1e-9 && (v - 1.0).abs() < 1e-6,
                "mean {m}, var {v}"
            );
        }
    }

    #[test]
    fn a_two_dimensional_flow_density_integrates_to_one() {
        let flow = perturbed(
            &[2],
            GlowSize {
                levels: 1,
                steps: 4,
                hidden: 16,
            },
            5,
            0.1,
        );
        let (r, n) = (12.0, 600usize);
        let h = 2.0 * r / n as f64;
        let pts: Vec<f64> = (0..n * n)
            .flat_map(|k| {
                let (i, j) = (k / n, k % n);
                [-r + (i as f64 + 0.5) * h, -r + (j as f64 + 0.5) * h]
            })
            .collect();
        let z = Tensor::from_vec(pts, (n * n, 2), test_device()).unwrap();
        let p = flow.log_prob(&z).unwrap().exp().unwrap();
        let mass = p.sum_all().unwrap().to_scalar::<f64>().unwrap() * h * h;
        assert!(
            (mass - 1.0).abs() < 1e-2,
            "the density integrates to {mass}"
        );
    }

    #[test]
    fn image_sides_not_divisible_by_two_to_the_levels_are_refused() {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, 0, DType::F32, test_device());
        let size = GlowSize {
            levels: 3,
            steps: 1,
            hidden: 4,
        };
        let err = Glow::new(vb, &[1, 28, 28], size).unwrap_err().to_string();
        assert!(
            err.contains("levels = 3") && err.contains("28 x 28"),
            "{err}"
        );
    }
}
