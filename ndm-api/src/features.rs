//! A small image classifier whose penultimate layer is the feature space of FID, KID and k-NN
//! precision / recall for datasets that have no standard feature network (MNIST, Fashion-MNIST).
//!
//! The network is an MLP on the flattened image, `D -> 512 -> 128 -> classes`, with ReLU; the
//! features are the 128 activations after the second ReLU. It trains in seconds on the CPU. Its
//! weights are versioned by a hash ([`FeatureNet::hash`]) that every metric computed with it
//! carries: distances computed with different feature networks are not comparable, and none of
//! them is comparable with an FID on Inception features (Heusel et al., 2017).

use crate::dataset::{Dataset, Split};
use crate::metrics::{frechet_distance, kid, precision_recall, GaussianFit, PointSet};
use crate::rng::Rng;
use crate::vars::{seeded_var_builder, sorted_vars};
use crate::{NdmError, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Linear, Module, Optimizer, VarMap};
use std::collections::HashMap;
use std::path::Path;

/// Widths of the two hidden layers; the second is the feature dimension.
pub const HIDDEN: [usize; 2] = [512, 128];

/// Training settings of [`FeatureNet::train`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeatureTraining {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
}

impl Default for FeatureTraining {
    fn default() -> Self {
        FeatureTraining {
            steps: 3000,
            batch_size: 128,
            lr: 1e-3,
            seed: 0,
        }
    }
}

/// The classifier.
pub struct FeatureNet {
    varmap: VarMap,
    l1: Linear,
    l2: Linear,
    l3: Linear,
    /// Shape of one input image `[C, H, W]`.
    pub shape: Vec<usize>,
    pub classes: usize,
}

impl std::fmt::Debug for FeatureNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureNet")
            .field("shape", &self.shape)
            .field("classes", &self.classes)
            .finish()
    }
}

impl FeatureNet {
    /// A network with seeded initial weights for images of `shape` in `classes` classes.
    pub fn new(shape: &[usize], classes: usize, seed: u64, device: &Device) -> Result<Self> {
        if shape.len() != 3 || classes < 2 {
            return Err(NdmError::InvalidArgument(format!(
                "a feature network needs labelled images [C, H, W]; got shape {shape:?} with {classes} classes"
            )));
        }
        let d: usize = shape.iter().product();
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, seed, DType::F32, device);
        let l1 = candle_nn::linear(d, HIDDEN[0], vb.pp("l1"))?;
        let l2 = candle_nn::linear(HIDDEN[0], HIDDEN[1], vb.pp("l2"))?;
        let l3 = candle_nn::linear(HIDDEN[1], classes, vb.pp("l3"))?;
        Ok(FeatureNet {
            varmap,
            l1,
            l2,
            l3,
            shape: shape.to_vec(),
            classes,
        })
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        if x.rank() != 4 || x.dims()[1..] != self.shape[..] {
            return Err(NdmError::Incompatible(format!(
                "the feature network takes images {:?}; these are {:?}",
                self.shape,
                &x.dims()[1.min(x.rank())..]
            )));
        }
        Ok(())
    }

    /// The features `[n, 128]` of images `[n, C, H, W]` in `[-1, 1]`.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        let h = self.l1.forward(&x.flatten_from(1)?)?.relu()?;
        Ok(self.l2.forward(&h)?.relu()?)
    }

    /// Class logits `[n, classes]`.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.l3.forward(&self.features(x)?)?)
    }

    /// Trains on labelled batches of the training split (AdamW, cross-entropy). Returns the
    /// mean loss of the last 100 steps.
    pub fn train(&self, data: &dyn Dataset, cfg: &FeatureTraining, device: &Device) -> Result<f64> {
        let mut opt = candle_nn::AdamW::new(
            self.varmap.all_vars(),
            candle_nn::ParamsAdamW {
                lr: cfg.lr,
                weight_decay: 0.0,
                ..Default::default()
            },
        )?;
        let mut rng = Rng::derived(cfg.seed, "feature net batches");
        let mut last = Vec::new();
        for _ in 0..cfg.steps {
            let (x, y) = data.sample_labeled(cfg.batch_size, Split::Train, &mut rng, device)?;
            let y = y.ok_or_else(|| {
                NdmError::Incompatible("the feature network trains on labelled data".into())
            })?;
            let loss = candle_nn::loss::cross_entropy(&self.logits(&x)?, &y)?;
            opt.backward_step(&loss)?;
            let l = loss.to_scalar::<f32>()? as f64;
            if !l.is_finite() {
                return Err(NdmError::NonFinite(
                    "the feature network's loss is not finite".into(),
                ));
            }
            last.push(l);
            if last.len() > 100 {
                last.remove(0);
            }
        }
        Ok(last.iter().sum::<f64>() / last.len().max(1) as f64)
    }

    /// Accuracy on the test split: every test image once where the dataset says how many there
    /// are (at most `max`), else `max` draws. Returns (accuracy, images).
    pub fn accuracy(
        &self,
        data: &dyn Dataset,
        max: usize,
        device: &Device,
    ) -> Result<(f64, usize)> {
        let n = data.split_len(Split::Test).unwrap_or(max).min(max);
        let mut rng = Rng::derived(0, "feature net test");
        let (mut right, mut seen) = (0usize, 0usize);
        while seen < n {
            let b = (n - seen).min(1000);
            let (x, y) = data.sample_labeled(b, Split::Test, &mut rng, device)?;
            let y =
                y.ok_or_else(|| NdmError::Incompatible("accuracy needs labelled data".into()))?;
            let pred = self.logits(&x)?.argmax(D::Minus1)?;
            right += pred
                .eq(&y)?
                .to_dtype(DType::F32)?
                .sum_all()?
                .to_scalar::<f32>()? as usize;
            seen += b;
        }
        Ok((right as f64 / n as f64, n))
    }

    /// FNV-1a over the weights (by name, little-endian f32 bytes): names this network in every
    /// metric computed with it.
    pub fn hash(&self) -> Result<String> {
        let mut h = crate::checkpoint::Fnv1a::default();
        for (name, var) in sorted_vars(&self.varmap) {
            h.feed(name.as_bytes());
            for v in var.as_tensor().flatten_all()?.to_vec1::<f32>()? {
                h.feed(&v.to_le_bytes());
            }
        }
        Ok(format!("{:016x}", h.finish()))
    }

    /// Writes the weights (safetensors) with the shape and classes as `meta/*` entries.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut t: HashMap<String, Tensor> = sorted_vars(&self.varmap)
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect();
        let shape: Vec<i64> = self.shape.iter().map(|&s| s as i64).collect();
        t.insert(
            "meta/shape".into(),
            Tensor::new(shape.as_slice(), &Device::Cpu)?,
        );
        t.insert(
            "meta/classes".into(),
            Tensor::new(&[self.classes as i64], &Device::Cpu)?,
        );
        crate::checkpoint::write_tensors(path, &t)
    }

    /// Reads a network written by [`FeatureNet::save`].
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let mut t = crate::checkpoint::read_tensors(path, device)?;
        let bad = |m: &str| NdmError::file(path, m);
        let meta = |t: &HashMap<String, Tensor>, k: &str| -> Result<Vec<i64>> {
            Ok(t.get(k)
                .ok_or_else(|| bad(&format!("has no `{k}`: not a feature network")))?
                .to_dtype(DType::I64)?
                .to_vec1::<i64>()?)
        };
        let shape: Vec<usize> = meta(&t, "meta/shape")?
            .into_iter()
            .map(|s| s.max(0) as usize)
            .collect();
        let classes = meta(&t, "meta/classes")?
            .first()
            .copied()
            .unwrap_or(0)
            .max(0) as usize;
        let net = FeatureNet::new(&shape, classes, 0, device)?;
        for (name, var) in sorted_vars(&net.varmap) {
            let w = t
                .remove(&name)
                .ok_or_else(|| bad(&format!("has no tensor `{name}`")))?;
            if w.dims() != var.as_tensor().dims() {
                return Err(bad(&format!(
                    "tensor `{name}` has shape {:?}, expected {:?}",
                    w.dims(),
                    var.as_tensor().dims()
                )));
            }
            var.set(&w.to_dtype(DType::F32)?)?;
        }
        Ok(net)
    }
}

/// FID, KID and k-NN precision / recall of `samples` against `reference` in a feature space, by
/// name, with their sample sizes: `fid`, `kid` and `kid_stderr` (cubic kernel, 50 subsets of half
/// the smaller set, at most 1000 points), `feature_precision`, `feature_recall` (k = 3, on the first
/// [`crate::metrics::PAIRWISE_POINTS`] points), `feature_n` (samples), `feature_reference_n`.
pub fn feature_metrics(
    samples: &PointSet,
    reference: &PointSet,
    rng: &mut Rng,
) -> std::result::Result<Vec<(String, f64)>, String> {
    let fid = frechet_distance(&GaussianFit::of(samples)?, &GaussianFit::of(reference)?)?;
    // Subsets of half the smaller set (at most 1000), so that they differ from one another.
    let subset = (samples.len().min(reference.len()) / 2).clamp(2, 1000);
    let k = kid(samples, reference, subset, 50, rng)?;
    let n = crate::metrics::PAIRWISE_POINTS;
    let (precision, recall) = precision_recall(&reference.head(n), &samples.head(n), 3)?;
    Ok(vec![
        ("fid".into(), fid),
        ("kid".into(), k.mean),
        ("kid_stderr".into(), k.stderr),
        ("feature_precision".into(), precision),
        ("feature_recall".into(), recall),
        ("feature_n".into(), samples.len() as f64),
        ("feature_reference_n".into(), reference.len() as f64),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two classes of 4x4 images: bright top half or bright bottom half, with noise.
    #[derive(Debug)]
    struct Halves;

    impl Dataset for Halves {
        fn data_shape(&self) -> Vec<usize> {
            vec![1, 4, 4]
        }
        fn sample(
            &self,
            n: usize,
            split: Split,
            rng: &mut Rng,
            device: &Device,
        ) -> candle_core::Result<Tensor> {
            Ok(self.sample_labeled(n, split, rng, device)?.0)
        }
        fn num_classes(&self) -> usize {
            2
        }
        fn sample_labeled(
            &self,
            n: usize,
            _split: Split,
            rng: &mut Rng,
            device: &Device,
        ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
            let mut x = Vec::with_capacity(n * 16);
            let mut y = Vec::with_capacity(n);
            for _ in 0..n {
                let c = rng.below(2) as u32;
                y.push(c);
                for p in 0..16 {
                    let top = p < 8;
                    let base = if top == (c == 0) { 0.8 } else { -0.8 };
                    x.push(base + 0.3 * rng.normal_vec(1)[0] as f32);
                }
            }
            Ok((
                Tensor::from_vec(x, (n, 1, 4, 4), device)?,
                Some(Tensor::from_vec(y, n, device)?),
            ))
        }
    }

    #[test]
    fn trains_to_separate_two_classes_and_round_trips_through_a_file() {
        let dev = Device::Cpu;
        let net = FeatureNet::new(&[1, 4, 4], 2, 3, &dev).unwrap();
        let cfg = FeatureTraining {
            steps: 60,
            batch_size: 64,
            ..FeatureTraining::default()
        };
        let before = net.accuracy(&Halves, 500, &dev).unwrap();
        let loss = net.train(&Halves, &cfg, &dev).unwrap();
        let (acc, n) = net.accuracy(&Halves, 500, &dev).unwrap();
        assert_eq!(n, 500);
        assert!(
            acc > 0.98,
            "accuracy {acc} (before {before:?}), loss {loss}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.safetensors");
        net.save(&path).unwrap();
        let back = FeatureNet::load(&path, &dev).unwrap();
        assert_eq!(back.hash().unwrap(), net.hash().unwrap());
        let x = Halves
            .sample(7, Split::Test, &mut Rng::new(1), &dev)
            .unwrap();
        let (a, b) = (net.features(&x).unwrap(), back.features(&x).unwrap());
        assert_eq!(a.dims(), &[7, HIDDEN[1]]);
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
        // Another seed is another network, with another hash.
        let other = FeatureNet::new(&[1, 4, 4], 2, 4, &dev).unwrap();
        assert_ne!(other.hash().unwrap(), net.hash().unwrap());
        // Wrong images are refused.
        let wrong = Tensor::zeros((2, 1, 5, 5), DType::F32, &dev).unwrap();
        assert!(net.features(&wrong).is_err());
    }

    #[test]
    fn feature_metrics_tell_a_set_from_itself_and_from_another() {
        let dev = Device::Cpu;
        let net = FeatureNet::new(&[1, 4, 4], 2, 3, &dev).unwrap();
        net.train(
            &Halves,
            &FeatureTraining {
                steps: 40,
                batch_size: 64,
                ..Default::default()
            },
            &dev,
        )
        .unwrap();
        let mut rng = Rng::new(5);
        let feats = |x: &Tensor| PointSet::from_tensor(&net.features(x).unwrap()).unwrap();
        let (a, ya) = Halves
            .sample_labeled(400, Split::Test, &mut rng, &dev)
            .unwrap();
        let (b, _) = Halves
            .sample_labeled(400, Split::Test, &mut rng, &dev)
            .unwrap();
        // Only class 0: half the modes.
        let ya = ya.unwrap().to_vec1::<u32>().unwrap();
        let idx: Vec<u32> = (0..400u32).filter(|&i| ya[i as usize] == 0).collect();
        let one = a
            .index_select(&Tensor::new(idx.as_slice(), &dev).unwrap(), 0)
            .unwrap();
        let get = |m: &[(String, f64)], k: &str| m.iter().find(|(n, _)| n == k).unwrap().1;
        let same = feature_metrics(&feats(&a), &feats(&b), &mut rng).unwrap();
        let half = feature_metrics(&feats(&one), &feats(&b), &mut rng).unwrap();
        assert!(
            get(&half, "fid") > 10.0 * get(&same, "fid"),
            "{same:?} {half:?}"
        );
        assert!(get(&half, "kid") > get(&same, "kid") + 3.0 * get(&half, "kid_stderr"));
        // k-NN recall of two samples of one distribution is below 1 in 128 dimensions at 400
        // points; missing a class takes a large part more.
        assert!(get(&same, "feature_recall") > 0.7, "{same:?}");
        assert!(
            get(&half, "feature_recall") < get(&same, "feature_recall") - 0.2,
            "{same:?} {half:?}"
        );
        assert_eq!(get(&half, "feature_n"), idx.len() as f64);
    }
}
