//! A residual MLP with a sinusoidal time embedding.

use ndm_api::candle_core::{Result, Tensor};
use ndm_api::candle_nn::{linear, Linear, VarBuilder};
use ndm_api::embedding::{
    refuse_class, silu_with_tangent, sinusoidal_embedding, sinusoidal_embedding_with_dt,
    ClassEmbedding,
};
use ndm_api::kernels;
use ndm_api::registry::BuildCtx;
use ndm_api::{Backbone, NdmError, NetInput};
use serde::{Deserialize, Serialize};

/// `backbone.mlp` config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    /// Width of the hidden layers.
    pub hidden: usize,
    /// Residual blocks (two linear layers each).
    pub blocks: usize,
    /// Size of the sinusoidal time embedding (even).
    pub time_dim: usize,
    /// Highest embedding frequency in radians per unit time. 1000 follows DDPM; a network whose
    /// time derivative matters (inside a learned transform, differentiated by a central difference
    /// with step 5e-3) needs a smooth one, e.g. 10.
    pub time_scale: f64,
    /// Fourier features of the input: `sin` and `cos` of `2^k pi z` for `k < input_fourier` per
    /// coordinate, appended to `z` (0: raw input only). They counter an MLP's bias towards smooth
    /// functions, which blurs sharp edges such as the checkerboard's.
    pub input_fourier: usize,
}

impl Default for MlpConfig {
    fn default() -> Self {
        MlpConfig {
            hidden: 128,
            blocks: 3,
            time_dim: 32,
            time_scale: 1000.0,
            input_fourier: 0,
        }
    }
}

#[derive(Debug, Clone)]
struct Block {
    l1: Linear,
    l2: Linear,
    temb: Linear,
}

/// `h -> h + W2 silu(W1 silu(h) + T(t))` blocks between an input and an output projection.
#[derive(Debug, Clone)]
pub struct Mlp {
    cfg: MlpConfig,
    dims: usize,
    input: Linear,
    time: Linear,
    /// A conditional network's class embedding, added to the time embedding.
    class: Option<ClassEmbedding>,
    blocks: Vec<Block>,
    output: Linear,
}

impl Mlp {
    /// An MLP for data of `shape`, class-conditional when `classes` is above 0.
    pub fn new(
        cfg: MlpConfig,
        shape: &[usize],
        classes: usize,
        vb: VarBuilder,
    ) -> ndm_api::Result<Self> {
        if cfg.hidden == 0 || cfg.time_dim == 0 || !cfg.time_dim.is_multiple_of(2) {
            return Err(NdmError::invalid_param(
                "hidden must be >= 1 and time_dim even and >= 2",
            ));
        }
        let dims: usize = shape.iter().product();
        let h = cfg.hidden;
        let input = linear(dims * (1 + 2 * cfg.input_fourier), h, vb.pp("input"))?;
        let time = linear(cfg.time_dim, h, vb.pp("time"))?;
        let class = (classes > 0)
            .then(|| ClassEmbedding::new(classes, h, vb.pp("class")))
            .transpose()?;
        let blocks = (0..cfg.blocks)
            .map(|i| {
                let b = vb.pp(format!("block{i}"));
                Ok(Block {
                    l1: linear(h, h, b.pp("l1"))?,
                    l2: linear(h, h, b.pp("l2"))?,
                    temb: linear(h, h, b.pp("temb"))?,
                })
            })
            .collect::<ndm_api::candle_core::Result<Vec<_>>>()?;
        let output = linear(h, dims, vb.pp("output"))?;
        Ok(Mlp {
            cfg,
            dims,
            input,
            time,
            class,
            blocks,
            output,
        })
    }
}

impl Mlp {
    /// `z` followed by its Fourier features.
    fn features(&self, z: &Tensor) -> Result<Tensor> {
        if self.cfg.input_fourier == 0 {
            return Ok(z.clone());
        }
        let mut parts = vec![z.clone()];
        for k in 0..self.cfg.input_fourier {
            let arg = (z * (std::f64::consts::PI * 2f64.powi(k as i32)))?;
            parts.push(arg.sin()?);
            parts.push(arg.cos()?);
        }
        Tensor::cat(&parts, 1)
    }
}

impl Mlp {
    /// The output, and with `tangent` its derivative in `t` by forward mode: every layer carries
    /// the tangent of its input (`None` where it is zero: the input path does not depend on `t`).
    ///
    /// Each layer is one fused op (`ndm_api::kernels::linear`, SiLU applied to its input inside
    /// it, candle's ops off the CPU): a block is `h + l2(silu(l1(silu(h)) + temb(silu(T))))`, with
    /// the time projection entering `l1` as a per-example bias (one shared bias when the whole
    /// batch is at one time). The tangent of `l(silu(u))` for
    /// the tangent `du` of `u` is `l's weight applied to silu'(u) du`.
    fn forward_and_tangent(
        &self,
        input: &NetInput,
        tangent: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let shape = input.z.dims().to_vec();
        let z = input.z.reshape((shape[0], self.dims))?;
        // A sampler's batch shares one time: without classes the whole time path is then one
        // row, and its projections are the blocks' shared biases (a third of the FLOPs fewer).
        let shared_time = !tangent && self.class.is_none() && one_time(input.t)?;
        let t = if shared_time {
            input.t.narrow(0, 0, 1)?
        } else {
            input.t.clone()
        };
        let (emb, demb) = if tangent {
            let (e, d) = sinusoidal_embedding_with_dt(&t, self.cfg.time_dim, self.cfg.time_scale)?;
            (e, Some(d))
        } else {
            let e = sinusoidal_embedding(&t, self.cfg.time_dim, self.cfg.time_scale)?;
            (e, None)
        };
        let mut temb = dense(&self.time, &emb, false)?;
        let dtemb = demb.map(|d| tangent_of(&self.time, &d)).transpose()?;
        match &self.class {
            Some(c) => temb = (&temb + c.forward(input.class, shape[0], temb.dtype())?)?,
            None => refuse_class(input.class, "backbone.mlp")?,
        }
        let (temb, dtemb) = silu_with_tangent(&temb, dtemb.as_ref())?;
        let mut h = dense(&self.input, &self.features(&z)?, false)?;
        let mut dh: Option<Tensor> = None;
        for b in &self.blocks {
            // l1(silu(h)) + temb(T): the projection of the time is l1's per-example bias.
            let bias = match (b.temb.bias(), b.l1.bias()) {
                (Some(bt), Some(b1)) => Some((bt + b1)?),
                (Some(x), None) | (None, Some(x)) => Some(x.clone()),
                (None, None) => None,
            };
            let mut proj = kernels::linear(&temb, b.temb.weight(), bias.as_ref(), false)?;
            if shared_time {
                proj = proj.squeeze(0)?;
            }
            let inner = kernels::linear(&h, b.l1.weight(), Some(&proj), true)?;
            let dsh = dh
                .as_ref()
                .map(|d| kernels::silu_tangent(&h, d))
                .transpose()?;
            let dinner = match (&dtemb, &dsh) {
                (Some(dt), Some(ds)) => Some((tangent_of(&b.temb, dt)? + tangent_of(&b.l1, ds)?)?),
                (Some(dt), None) => Some(tangent_of(&b.temb, dt)?),
                _ => None,
            };
            let step = dense(&b.l2, &inner, true)?;
            if let Some(d) = dinner {
                let dstep = tangent_of(&b.l2, &kernels::silu_tangent(&inner, &d)?)?;
                dh = Some(match dh {
                    Some(prev) => (prev + dstep)?,
                    None => dstep,
                });
            }
            h = (h + step)?;
        }
        let out = dense(&self.output, &h, true)?.reshape(shape.as_slice())?;
        let dout = dh
            .map(|d| {
                let ds = kernels::silu_tangent(&h, &d)?;
                tangent_of(&self.output, &ds)?.reshape(shape.as_slice())
            })
            .transpose()?;
        Ok((out, dout))
    }
}

/// Whether every entry of the times `t` (`[B]`) is the same, read where that costs no device
/// round trip (on the CPU); elsewhere `false`.
fn one_time(t: &Tensor) -> Result<bool> {
    if !t.device().is_cpu() || t.dim(0)? < 2 {
        return Ok(false);
    }
    let v: Vec<f64> = t.to_dtype(ndm_api::candle_core::DType::F64)?.to_vec1()?;
    Ok(v.iter().all(|x| *x == v[0]))
}

/// `l(x)`, or `l(silu(x))` with `silu_input`, as one fused op.
fn dense(l: &Linear, x: &Tensor, silu_input: bool) -> Result<Tensor> {
    kernels::linear(x, l.weight(), l.bias(), silu_input)
}

/// The tangent of `l(u) = u W^T + b` for the tangent `du` of `u`: `du W^T`.
fn tangent_of(l: &Linear, du: &Tensor) -> Result<Tensor> {
    kernels::linear(du, l.weight(), None, false)
}

/// Bytes of one hidden activation per thread and pass when a large batch is cut into passes: a
/// thread's share of a pass, 512 KiB, stays in its core's L2 cache (512 KiB per core on the
/// project's machine), where a 10,000 x 128 activation (5 MiB) does not.
const PASS_BYTES_PER_THREAD: usize = 1 << 19;

impl Mlp {
    /// Rows per pass of a large batch: [`PASS_BYTES_PER_THREAD`] of f32 hidden activations per
    /// rayon thread (the kernels split a pass's rows over the threads), at least 256.
    fn pass_rows(&self) -> usize {
        (PASS_BYTES_PER_THREAD * kernels::threads() / (4 * self.cfg.hidden)).max(256)
    }
}

impl Backbone for Mlp {
    /// A large batch outside training on the CPU (a sampler's 10,000 points) runs in equal passes
    /// of at most `Mlp::pass_rows` rows, each through the whole network, so that each layer's
    /// activations stay in cache; the rows are independent, so the output is the same.
    fn forward(&self, input: &NetInput) -> Result<Tensor> {
        let n = input.z.dim(0)?;
        let rows = self.pass_rows();
        let passes = n.div_ceil(rows);
        if passes < 2 || !input.z.device().is_cpu() || kernels::backward_expected() {
            return Ok(self.forward_and_tangent(input, false)?.0);
        }
        let rows = n.div_ceil(passes);
        let mut outs = Vec::with_capacity(passes);
        for start in (0..n).step_by(rows) {
            let len = rows.min(n - start);
            let cut = |t: &Tensor| t.narrow(0, start, len);
            let (z, t, alpha, sigma, log_snr) = (
                cut(input.z)?,
                cut(input.t)?,
                cut(input.alpha)?,
                cut(input.sigma)?,
                cut(input.log_snr)?,
            );
            let class = input.class.map(cut).transpose()?;
            let part = NetInput {
                z: &z,
                t: &t,
                alpha: &alpha,
                sigma: &sigma,
                log_snr: &log_snr,
                class: class.as_ref(),
            };
            outs.push(self.forward_and_tangent(&part, false)?.0);
        }
        Tensor::cat(&outs, 0)
    }

    fn forward_with_time_tangent(&self, input: &NetInput) -> Option<Result<(Tensor, Tensor)>> {
        Some(self.forward_and_tangent(input, true).and_then(|(y, dy)| {
            // With no blocks the output does not see the time: its derivative is zero.
            let dy = match dy {
                Some(dy) => dy,
                None => y.zeros_like()?,
            };
            Ok((y, dy))
        }))
    }
}

ndm_api::register_plugin!(
    Backbone,
    "mlp",
    "residual MLP with sinusoidal time embedding (for 2-D and other flat data)",
    MlpConfig,
    |cfg: MlpConfig, ctx: &BuildCtx| Ok(Box::new(Mlp::new(
        cfg,
        ctx.shape,
        ctx.classes,
        ctx.vb.clone()
    )?))
);

#[cfg(test)]
mod tests {
    use super::*;
    use ndm_api::candle_core::{DType, Device};
    use ndm_api::candle_nn::VarMap;
    use ndm_api::Rng;

    fn max_abs(t: &Tensor) -> f64 {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// The forward-mode time derivative against a central difference in f64, for a plain, a
    /// Fourier-featured and a class-conditional MLP; the value it returns is the forward pass.
    #[test]
    fn time_tangent_matches_a_central_difference_in_f64() {
        let dev = Device::Cpu;
        for (fourier, classes) in [(0, 0), (2, 0), (0, 3)] {
            let vm = VarMap::new();
            let vb = ndm_api::vars::seeded_var_builder(&vm, 7, DType::F64, &dev);
            let cfg = MlpConfig {
                hidden: 16,
                blocks: 2,
                time_dim: 8,
                time_scale: 10.0,
                input_fourier: fourier,
            };
            let mlp = Mlp::new(cfg, &[3], classes, vb).unwrap();
            let z = Rng::new(1)
                .normal_tensor(&[4, 3], DType::F64, &dev)
                .unwrap();
            let t = Tensor::new(&[0.1f64, 0.35, 0.6, 0.95], &dev).unwrap();
            let ones = t.ones_like().unwrap();
            let class = Tensor::new(&[0u32, 2, 1, 3], &dev).unwrap();
            let class = (classes > 0).then_some(&class);
            let run = |t: &Tensor, tangent: bool| {
                let input = NetInput {
                    z: &z,
                    t,
                    alpha: &ones,
                    sigma: &ones,
                    log_snr: &ones,
                    class,
                };
                if tangent {
                    let (y, dy) = mlp
                        .forward_with_time_tangent(&input)
                        .expect("the MLP has a forward mode")
                        .unwrap();
                    (y, Some(dy))
                } else {
                    (mlp.forward(&input).unwrap(), None)
                }
            };
            let (y, dy) = run(&t, true);
            let dy = dy.unwrap();
            let (y0, _) = run(&t, false);
            assert_eq!(max_abs(&(&y - &y0).unwrap()), 0.0, "the same forward pass");
            let h = 1e-5;
            let (up, _) = run(&t.affine(1.0, h).unwrap(), false);
            let (down, _) = run(&t.affine(1.0, -h).unwrap(), false);
            let fd = ((up - down).unwrap() / (2.0 * h)).unwrap();
            let err = max_abs(&(&dy - &fd).unwrap());
            assert!(
                err < 1e-7 * (1.0 + max_abs(&fd)),
                "fourier {fourier}, classes {classes}: error {err}, scale {}",
                max_abs(&fd)
            );
            assert!(max_abs(&fd) > 1e-3, "the output depends on t");
        }
    }

    /// A batch at one time (the time path computed once, as shared biases) gives the outputs and
    /// weight gradients of the same examples run one by one, in f64.
    #[test]
    fn a_batch_at_one_time_matches_the_examples_one_by_one() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = ndm_api::vars::seeded_var_builder(&vm, 3, DType::F64, &dev);
        let cfg = MlpConfig {
            hidden: 16,
            blocks: 2,
            time_dim: 8,
            time_scale: 1000.0,
            input_fourier: 1,
        };
        let mlp = Mlp::new(cfg, &[2], 0, vb).unwrap();
        let mut rng = Rng::new(4);
        let z = rng.normal_tensor(&[5, 2], DType::F64, &dev).unwrap();
        let r = rng.normal_tensor(&[5, 2], DType::F64, &dev).unwrap();
        let t = Tensor::full(0.37f64, 5, &dev).unwrap();
        let input = |z: &'_ Tensor, t: &'_ Tensor| -> Tensor {
            let ones = t.ones_like().unwrap();
            mlp.forward(&NetInput {
                z,
                t,
                alpha: &ones,
                sigma: &ones,
                log_snr: &ones,
                class: None,
            })
            .unwrap()
        };
        assert!(one_time(&t).unwrap());
        let together = input(&z, &t);
        let rows: Vec<Tensor> = (0..5)
            .map(|i| input(&z.narrow(0, i, 1).unwrap(), &t.narrow(0, i, 1).unwrap()))
            .collect();
        let apart = Tensor::cat(&rows, 0).unwrap();
        assert!(max_abs(&(&together - &apart).unwrap()) < 1e-12);
        let ga = (together * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gb = (apart * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, var) in ndm_api::vars::sorted_vars(&vm) {
            let (a, b) = (
                ga.get(var.as_tensor()).unwrap(),
                gb.get(var.as_tensor()).unwrap(),
            );
            let err = max_abs(&(a - b).unwrap());
            assert!(
                err < 1e-10 * (1.0 + max_abs(b)),
                "{name}: gradient error {err}"
            );
        }
    }

    /// A large batch outside training runs in equal passes of at most `pass_rows` rows; its output is that of
    /// one pass over the whole batch (inside `expect_backward`, which never cuts), per-example
    /// times and classes included.
    #[test]
    fn a_large_batch_in_passes_matches_one_pass() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = ndm_api::vars::seeded_var_builder(&vm, 5, DType::F32, &dev);
        let cfg = MlpConfig {
            hidden: 2048,
            blocks: 1,
            time_dim: 8,
            time_scale: 1000.0,
            input_fourier: 0,
        };
        let mlp = Mlp::new(cfg, &[2], 3, vb).unwrap();
        let rows = mlp.pass_rows();
        assert_eq!(rows, 256);
        let n = 2 * rows + 37;
        let mut rng = Rng::new(6);
        let z = rng.normal_tensor(&[n, 2], DType::F32, &dev).unwrap();
        let t = rng
            .uniform_tensor(&[n], 0.0, 1.0, DType::F32, &dev)
            .unwrap();
        let ids: Vec<u32> = (0..n as u32).map(|i| i % 4).collect();
        let class = Tensor::from_vec(ids, n, &dev).unwrap();
        let ones = t.ones_like().unwrap();
        let input = NetInput {
            z: &z,
            t: &t,
            alpha: &ones,
            sigma: &ones,
            log_snr: &ones,
            class: Some(&class),
        };
        let passes = mlp.forward(&input).unwrap();
        let whole = kernels::expect_backward(|| mlp.forward(&input)).unwrap();
        assert_eq!(passes.dims(), whole.dims());
        let err = max_abs(&(&passes - &whole).unwrap().to_dtype(DType::F64).unwrap());
        assert!(
            err < 1e-5 * (1.0 + max_abs(&whole.to_dtype(DType::F64).unwrap())),
            "{err}"
        );
    }
}
