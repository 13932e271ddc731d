//! The embeddings the backbones share (the MLP of `ndm-nets`, the U-Net of `ndm-unet`): the
//! sinusoidal time embedding and the learned class embedding of conditional models.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

/// A learned embedding of `K` classes plus one "no class" row (index `K`), which label dropout
/// trains and classifier-free guidance uses as the unconditional model. The lookup is a one-hot
/// matrix product, whose gradient candle computes on every device.
#[derive(Debug, Clone)]
pub struct ClassEmbedding {
    table: Tensor,
    classes: usize,
}

impl ClassEmbedding {
    /// `classes` classes (at least 1) embedded in `dim` dimensions, the table under
    /// `vb.pp(name)` drawn from `N(0, 1)`.
    pub fn new(classes: usize, dim: usize, vb: VarBuilder) -> Result<Self> {
        if classes == 0 {
            candle_core::bail!("ClassEmbedding: needs at least one class");
        }
        let table = vb.get_with_hints(
            (classes + 1, dim),
            "class_embedding",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        Ok(ClassEmbedding { table, classes })
    }

    /// The number of classes (without the "no class" row).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// `[B, dim]`: the rows of `class` (`u32` `[B]`, values in `0..=K`), or the "no class" row
    /// for every example when `class` is `None`.
    pub fn forward(&self, class: Option<&Tensor>, batch: usize, dtype: DType) -> Result<Tensor> {
        let k = self.classes;
        let ids: Vec<u32> = match class {
            Some(c) => {
                let ids = c.to_dtype(DType::U32)?.to_vec1::<u32>()?;
                if ids.len() != batch {
                    candle_core::bail!("{} classes for a batch of {batch} examples", ids.len());
                }
                if let Some(bad) = ids.iter().find(|&&v| v as usize > k) {
                    candle_core::bail!("class {bad} is outside 0..{k} (and {k} for no class)");
                }
                ids
            }
            None => vec![k as u32; batch],
        };
        let mut onehot = vec![0f32; batch * (k + 1)];
        for (i, &c) in ids.iter().enumerate() {
            onehot[i * (k + 1) + c as usize] = 1.0;
        }
        let onehot = Tensor::from_vec(onehot, (batch, k + 1), &Device::Cpu)?
            .to_dtype(self.table.dtype())?
            .to_device(self.table.device())?;
        onehot.matmul(&self.table)?.to_dtype(dtype)
    }
}

/// Refuses classes given to a network built without them: a silent ignore would train or sample
/// an unconditional model while the user asked for a class.
pub fn refuse_class(class: Option<&Tensor>, network: &str) -> Result<()> {
    if class.is_some() {
        candle_core::bail!("{network} was built without classes but was given a class");
    }
    Ok(())
}

/// Sinusoidal embedding of times `t` (shape `[B]`, in `[0, 1]`) multiplied by `scale`: `[B, dim]`
/// holding `sin(scale f_k t)` in the first half and `cos(scale f_k t)` in the second, with
/// `f_k = 10000^(-k / (dim / 2))` for `k < dim / 2`, so frequencies run from `scale` down to about
/// `scale / 10^4`. `scale` 1000 follows DDPM, whose times are the integers 0..1000.
///
/// The frequencies are computed in f64 and rounded once to `t`'s dtype. Errors when `dim` is odd
/// or zero.
pub fn sinusoidal_embedding(t: &Tensor, dim: usize, scale: f64) -> Result<Tensor> {
    let (_, args) = embedding_args(t, dim, scale)?;
    Tensor::cat(&[args.sin()?, args.cos()?], 1)
}

/// [`sinusoidal_embedding`] and its derivative in `t` (`[B, dim]` each): `scale f_k cos(scale f_k
/// t)` in the first half and `-scale f_k sin(scale f_k t)` in the second. The forward-mode time
/// derivative of a network starts here.
pub fn sinusoidal_embedding_with_dt(
    t: &Tensor,
    dim: usize,
    scale: f64,
) -> Result<(Tensor, Tensor)> {
    let (freqs, args) = embedding_args(t, dim, scale)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let d = Tensor::cat(
        &[
            cos.broadcast_mul(&freqs)?,
            sin.broadcast_mul(&freqs)?.neg()?,
        ],
        1,
    )?;
    Ok((Tensor::cat(&[sin, cos], 1)?, d))
}

/// The frequencies `[1, dim / 2]` and the arguments `t scale f_k` (`[B, dim / 2]`).
fn embedding_args(t: &Tensor, dim: usize, scale: f64) -> Result<(Tensor, Tensor)> {
    if dim == 0 || !dim.is_multiple_of(2) {
        candle_core::bail!("sinusoidal_embedding: dim must be even and positive, got {dim}");
    }
    let freqs = frequencies(dim / 2, scale, t.dtype(), t.device())?;
    let args = t.unsqueeze(1)?.broadcast_mul(&freqs)?;
    Ok((freqs, args))
}

/// `scale f_k`, `f_k = 10000^(-k / half)`, as a `[1, half]` tensor of `dtype` on `device`: computed
/// in f64 on the host (not every device holds f64) once per size, scale, dtype and device, and
/// kept, so that a network on a GPU does not copy it from the host at every call.
fn frequencies(half: usize, scale: f64, dtype: DType, device: &Device) -> Result<Tensor> {
    type Key = (usize, u64, DType, Device);
    static KEPT: std::sync::Mutex<Vec<(Key, Tensor)>> = std::sync::Mutex::new(Vec::new());
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    let found = kept.iter().find(|((h, s, d, dev), _)| {
        *h == half && *s == scale.to_bits() && *d == dtype && dev.same_device(device)
    });
    if let Some((_, f)) = found {
        return Ok(f.clone());
    }
    let freqs: Vec<f64> = (0..half)
        .map(|k| (-(10000f64.ln()) * k as f64 / half as f64).exp() * scale)
        .collect();
    let f = Tensor::from_vec(freqs, (1, half), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)?;
    kept.push(((half, scale.to_bits(), dtype, device.clone()), f.clone()));
    Ok(f)
}

/// `silu(u)` with its tangent for the tangent `du` of `u` (forward mode): `silu'(u) du`, where
/// `silu'(u) = s (1 + u (1 - s))`, `s = sigmoid(u)`; fused CPU kernels with their own backward
/// ([`crate::kernels::silu`], [`crate::kernels::silu_tangent`]), candle's ops elsewhere.
pub fn silu_with_tangent(u: &Tensor, du: Option<&Tensor>) -> Result<(Tensor, Option<Tensor>)> {
    let y = crate::kernels::silu(u)?;
    let dy = du.map(|d| crate::kernels::silu_tangent(u, d)).transpose()?;
    Ok((y, dy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_rows_the_no_class_row_and_bad_classes() {
        let vm = candle_nn::VarMap::new();
        let vb = crate::vars::seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu);
        let e = ClassEmbedding::new(3, 5, vb).unwrap();
        let table: Vec<Vec<f32>> = e.table.to_vec2().unwrap();
        let c = Tensor::new(&[2u32, 0, 3], &Device::Cpu).unwrap();
        let got: Vec<Vec<f32>> = e
            .forward(Some(&c), 3, DType::F32)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(
            got,
            vec![table[2].clone(), table[0].clone(), table[3].clone()]
        );
        let none: Vec<Vec<f32>> = e.forward(None, 2, DType::F32).unwrap().to_vec2().unwrap();
        assert_eq!(none, vec![table[3].clone(), table[3].clone()]);
        let bad = Tensor::new(&[4u32], &Device::Cpu).unwrap();
        assert!(e.forward(Some(&bad), 1, DType::F32).is_err());
        assert!(e.forward(Some(&c), 2, DType::F32).is_err());
    }

    #[test]
    fn values_frequencies_and_odd_sizes() {
        let t = Tensor::new(&[0.0f32, 0.25, 1.0], &Device::Cpu).unwrap();
        let e = sinusoidal_embedding(&t, 4, 1000.0).unwrap();
        assert_eq!(e.dims(), &[3, 4]);
        let v: Vec<Vec<f32>> = e.to_vec2().unwrap();
        // t = 0: sin 0 = 0, cos 0 = 1.
        assert_eq!(v[0], vec![0.0, 0.0, 1.0, 1.0]);
        // Frequencies scale * [1, 10000^(-1/2)] = [1000, 10].
        let (a, b) = (250f32, 2.5f32);
        let want = [a.sin(), b.sin(), a.cos(), b.cos()];
        for (x, y) in v[1].iter().zip(want) {
            assert!((x - y).abs() < 1e-4, "{:?} vs {want:?}", v[1]);
        }
        let f64_t = t.to_dtype(DType::F64).unwrap();
        assert_eq!(
            sinusoidal_embedding(&f64_t, 8, 10.0).unwrap().dtype(),
            DType::F64
        );
        assert!(sinusoidal_embedding(&t, 5, 1000.0).is_err());
        assert!(sinusoidal_embedding(&t, 0, 1000.0).is_err());
    }

    /// In f32 the result is bit for bit the one of frequencies rounded to f32 on the host (how the
    /// MLP computed its embedding before the U-Net shared this function).
    #[test]
    fn f32_matches_host_rounded_frequencies_exactly() {
        let ts: Vec<f32> = (0..=64).map(|i| i as f32 / 64.0).collect();
        let t = Tensor::new(ts.as_slice(), &Device::Cpu).unwrap();
        for (dim, scale) in [(32, 1000.0), (16, 10.0), (2, 1.0), (128, 1000.0)] {
            let half = dim / 2;
            let freqs: Vec<f32> = (0..half)
                .map(|k| ((-(10000f64.ln()) * k as f64 / half as f64).exp() * scale) as f32)
                .collect();
            let freqs = Tensor::from_vec(freqs, (1, half), &Device::Cpu).unwrap();
            let args = t.unsqueeze(1).unwrap().broadcast_mul(&freqs).unwrap();
            let want = Tensor::cat(&[args.sin().unwrap(), args.cos().unwrap()], 1).unwrap();
            let got = sinusoidal_embedding(&t, dim, scale).unwrap();
            assert_eq!(
                got.to_vec2::<f32>().unwrap(),
                want.to_vec2::<f32>().unwrap(),
                "dim {dim}, scale {scale}"
            );
        }
    }
}
