//! Image datasets: MNIST, Fashion-MNIST and CIFAR-10 from their official files, and a folder of
//! PNG/JPEG images.
//!
//! Every one of them is an [`ImageDataset`]: the pixels are held as bytes (`[C, H, W]` per image,
//! channel-major) and mapped into `[-1, 1]` by `(p + 0.5) / 128 - 1` when a batch is drawn: the
//! centre of the pixel's cell when `[-1, 1]` is cut into 256 equal cells, which is what
//! dequantization and bits per dimension assume (`Dataset::quantization`, `docs/math.md`).
//!
//! Iteration: each split is drawn in shuffled epochs without replacement. The permutation of an
//! epoch is drawn from the [`Rng`] passed to [`Dataset::sample`] when the previous epoch is used
//! up, and the position in the epoch is kept in the dataset (behind a mutex), so a batch continues
//! where the last one stopped. The data order therefore depends only on the seed of the stream
//! that draws the batches and on the sizes of the batches drawn. The `Test` split is drawn the
//! same way from the test files (its own permutation and position, drawn from the rng the
//! evaluation passes), so an evaluation of `n <= len` examples sees `n` distinct test images.
//! Horizontal flips (`flip = true`) apply to the `Train` split only, one coin per image from the
//! same rng.
//!
//! An epoch's permutation is generated from a seed drawn from that rng, so where the iteration
//! stands is three numbers per split (seed, position, whether an epoch has started): the dataset's
//! `iteration_state`, which a training checkpoint stores, so a resumed run draws exactly the
//! batches of an uninterrupted one.

mod cifar;
mod files;
mod folder;
mod idx;

pub use cifar::{load_cifar10_dir, CIFAR10_CLASSES};
pub use files::ImageFilesConfig;
pub use folder::{load_image_folder, ImageFolderConfig};
pub use idx::{
    load_fashion_mnist_dir, load_mnist_dir, parse_idx_images, parse_idx_labels,
    FASHION_MNIST_CLASSES,
};

use ndm_api::candle_core::{DType, Device, Result, Tensor};
use ndm_api::{Dataset, Rng, Split};
use std::sync::Mutex;

/// The model's value of a pixel byte: the centre `(p + 0.5) / 128 - 1` of the `p`-th of 256 equal
/// cells of `[-1, 1]` (0 maps to -255/256, 255 to 255/256).
pub fn pixel_value(p: u8) -> f32 {
    (p as f32 + 0.5) / 128.0 - 1.0
}

/// The pixel byte of a model value (the cell it falls in, clamped to `0..=255`).
pub fn pixel_byte(v: f32) -> u8 {
    ((v + 1.0) * 128.0).floor().clamp(0.0, 255.0) as u8
}

/// The images and labels of one split: `labels.len()` images of `C * H * W` bytes each, stored
/// one after another, channel-major (`[C, H, W]`).
#[derive(Clone, PartialEq, Eq)]
pub struct ImageSplit {
    pub pixels: Vec<u8>,
    pub labels: Vec<u32>,
}

impl std::fmt::Debug for ImageSplit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ImageSplit({} images)", self.labels.len())
    }
}

/// Where an epoch stands: the seed of its permutation of the split's indices and the next
/// position in it (`order` is derived from `seed`).
#[derive(Debug, Default, Clone)]
struct Epoch {
    seed: Option<u64>,
    order: Vec<u32>,
    next: usize,
}

impl Epoch {
    /// Starts the epoch whose permutation (Fisher-Yates) is generated from `seed`.
    fn start(&mut self, seed: u64, len: usize) {
        let mut g = Rng::new(seed);
        self.order = (0..len as u32).collect();
        for i in (1..len).rev() {
            let j = g.below(i + 1);
            self.order.swap(i, j);
        }
        self.seed = Some(seed);
        self.next = 0;
    }

    /// `[started, seed, position]`.
    fn state(&self) -> [u64; 3] {
        match self.seed {
            Some(s) => [1, s, self.next as u64],
            None => [0, 0, 0],
        }
    }

    fn restore(&mut self, state: &[u64], len: usize) -> std::result::Result<(), String> {
        match *state {
            [0, _, _] => {
                *self = Epoch::default();
                Ok(())
            }
            [1, seed, next] if next as usize <= len => {
                self.start(seed, len);
                self.next = next as usize;
                Ok(())
            }
            _ => Err(format!(
                "iteration state {state:?} does not fit a split of {len} images"
            )),
        }
    }

    /// The next `n` indices of `0..len`, drawing a new permutation from `rng` whenever the current
    /// one is used up (so a batch larger than what is left spans two epochs).
    fn take(&mut self, n: usize, len: usize, rng: &mut Rng) -> Vec<usize> {
        let mut out = Vec::with_capacity(n);
        if len == 0 {
            return out;
        }
        while out.len() < n {
            if self.next >= self.order.len() || self.order.len() != len {
                self.start(rng.next_u64(), len);
            }
            let k = (n - out.len()).min(len - self.next);
            out.extend(
                self.order[self.next..self.next + k]
                    .iter()
                    .map(|&i| i as usize),
            );
            self.next += k;
        }
        out
    }
}

/// An image dataset held in memory as bytes. See the module docs for how batches are drawn.
pub struct ImageDataset {
    name: String,
    shape: [usize; 3],
    train: ImageSplit,
    /// `None`: the `Test` split draws from the training images (an image folder without a
    /// held-out part).
    test: Option<ImageSplit>,
    classes: Vec<String>,
    flip: bool,
    /// Mean and standard deviation of the training pixels in model units (`[-1, 1]`).
    data_mean: f64,
    data_std: f64,
    /// Epoch positions of the train and test splits.
    epochs: Mutex<[Epoch; 2]>,
}

impl std::fmt::Debug for ImageDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageDataset")
            .field("name", &self.name)
            .field("shape", &self.shape)
            .field("train", &self.train)
            .field("test", &self.test)
            .field("classes", &self.classes.len())
            .field("flip", &self.flip)
            .finish()
    }
}

impl ImageDataset {
    /// A dataset of `[C, H, W]` images. `test = None` makes the `Test` split draw from the training
    /// images. Refuses (with one line) pixel buffers that do not match the shape and labels, empty
    /// splits and labels outside `0..classes.len()`.
    pub fn new(
        name: impl Into<String>,
        shape: [usize; 3],
        train: ImageSplit,
        test: Option<ImageSplit>,
        classes: Vec<String>,
        flip: bool,
    ) -> ndm_api::Result<Self> {
        let name = name.into();
        let per = shape.iter().product::<usize>();
        for (which, s) in [("train", Some(&train)), ("test", test.as_ref())] {
            let Some(s) = s else { continue };
            if s.labels.is_empty() || per == 0 {
                return Err(ndm_api::NdmError::Spec(format!(
                    "{name}: the {which} split has no images"
                )));
            }
            if s.pixels.len() != s.labels.len() * per {
                return Err(ndm_api::NdmError::Spec(format!(
                    "{name}: the {which} split has {} bytes of pixels for {} images of {:?}",
                    s.pixels.len(),
                    s.labels.len(),
                    shape
                )));
            }
            if let Some(bad) = s.labels.iter().find(|&&l| l as usize >= classes.len()) {
                return Err(ndm_api::NdmError::Spec(format!(
                    "{name}: label {bad} in the {which} split is not below the {} classes",
                    classes.len()
                )));
            }
        }
        let mut hist = [0u64; 256];
        for &p in &train.pixels {
            hist[p as usize] += 1;
        }
        let count = train.pixels.len() as f64;
        let mean = (0..256)
            .map(|p| hist[p] as f64 * pixel_value(p as u8) as f64)
            .sum::<f64>()
            / count;
        let var = (0..256)
            .map(|p| hist[p] as f64 * (pixel_value(p as u8) as f64 - mean).powi(2))
            .sum::<f64>()
            / count;
        Ok(ImageDataset {
            name,
            shape,
            train,
            test,
            classes,
            flip,
            data_mean: mean,
            data_std: var.sqrt(),
            epochs: Mutex::new([Epoch::default(), Epoch::default()]),
        })
    }

    /// The dataset's name, as used in messages ("MNIST", "image folder DIR").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `[C, H, W]` of one image.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    fn split(&self, split: Split) -> &ImageSplit {
        match split {
            Split::Train => &self.train,
            Split::Test => self.test.as_ref().unwrap_or(&self.train),
        }
    }

    /// Number of images in a split.
    pub fn len(&self, split: Split) -> usize {
        self.split(split).labels.len()
    }

    /// Whether a split is empty (never, for a constructed dataset).
    pub fn is_empty(&self, split: Split) -> bool {
        self.len(split) == 0
    }

    /// The label of every image of a split, in file order (indices into [`Self::class_names`]).
    pub fn labels(&self, split: Split) -> &[u32] {
        &self.split(split).labels
    }

    /// Class names, indexed by label.
    pub fn class_names(&self) -> &[String] {
        &self.classes
    }

    /// Whether the `Test` split has images of its own (false for an image folder without a
    /// held-out part).
    pub fn has_test_split(&self) -> bool {
        self.test.is_some()
    }

    /// The bytes of image `i` of a split (`[C, H, W]`).
    pub fn image_bytes(&self, split: Split, i: usize) -> &[u8] {
        let per = self.shape.iter().product::<usize>();
        &self.split(split).pixels[i * per..(i + 1) * per]
    }

    /// Mean and standard deviation of the training pixels in model units.
    pub fn pixel_stats(&self) -> (f64, f64) {
        (self.data_mean, self.data_std)
    }

    /// The next `n` indices of a split's current epoch (see the module docs); draws from `rng`
    /// only when an epoch starts.
    pub fn next_indices(&self, n: usize, split: Split, rng: &mut Rng) -> Vec<usize> {
        let len = self.len(split);
        let mut epochs = self.epochs.lock().unwrap_or_else(|e| e.into_inner());
        let e = match split {
            Split::Train => &mut epochs[0],
            Split::Test => &mut epochs[1],
        };
        e.take(n, len, rng)
    }

    /// Forgets where the epochs stand: the next batch of each split starts a new epoch.
    pub fn reset_epochs(&self) {
        let mut epochs = self.epochs.lock().unwrap_or_else(|e| e.into_inner());
        *epochs = [Epoch::default(), Epoch::default()];
    }

    /// The images at `indices` as an f32 tensor `[n, C, H, W]` in `[-1, 1]`; `flips[k]` mirrors
    /// image `k` left to right.
    pub fn gather(
        &self,
        split: Split,
        indices: &[usize],
        flips: Option<&[bool]>,
        device: &Device,
    ) -> Result<Tensor> {
        let [c, h, w] = self.shape;
        let mut v = Vec::with_capacity(indices.len() * c * h * w);
        for (k, &i) in indices.iter().enumerate() {
            let img = self.image_bytes(split, i);
            if flips.is_some_and(|f| f[k]) {
                for row in img.chunks_exact(w) {
                    v.extend(row.iter().rev().map(|&p| pixel_value(p)));
                }
            } else {
                v.extend(img.iter().map(|&p| pixel_value(p)));
            }
        }
        Tensor::from_vec(v, (indices.len(), c, h, w), &Device::Cpu)?.to_device(device)
    }

    /// A batch as [`Dataset::sample`] draws it, with the label of each image.
    pub fn sample_with_labels(
        &self,
        n: usize,
        split: Split,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<(Tensor, Vec<u32>)> {
        let idx = self.next_indices(n, split, rng);
        let flips: Option<Vec<bool>> = (self.flip && split == Split::Train)
            .then(|| idx.iter().map(|_| rng.uniform() < 0.5).collect());
        let x = self.gather(split, &idx, flips.as_deref(), device)?;
        let labels = self.split(split).labels.as_slice();
        Ok((x, idx.iter().map(|&i| labels[i]).collect()))
    }
}

impl Dataset for ImageDataset {
    fn data_shape(&self) -> Vec<usize> {
        self.shape.to_vec()
    }

    /// 8-bit pixels: values are the centres of 256 equal cells of `[-1, 1]`.
    fn quantization(&self) -> Option<u32> {
        Some(256)
    }

    /// `[started, seed, position]` of the train split's epoch, then of the test split's.
    fn iteration_state(&self) -> Vec<u64> {
        let epochs = self.epochs.lock().unwrap_or_else(|e| e.into_inner());
        epochs.iter().flat_map(|e| e.state()).collect()
    }

    fn restore_iteration_state(&self, state: &[u64]) -> Result<()> {
        if state.len() != 6 {
            ndm_api::candle_core::bail!(
                "{}: an iteration state has 6 numbers, got {}",
                self.name,
                state.len()
            );
        }
        let mut epochs = self.epochs.lock().unwrap_or_else(|e| e.into_inner());
        for (k, split) in [Split::Train, Split::Test].into_iter().enumerate() {
            epochs[k]
                .restore(&state[3 * k..3 * k + 3], self.len(split))
                .map_err(|m| ndm_api::candle_core::Error::Msg(format!("{}: {m}", self.name)))?;
        }
        Ok(())
    }

    fn sample(&self, n: usize, split: Split, rng: &mut Rng, device: &Device) -> Result<Tensor> {
        Ok(self.sample_with_labels(n, split, rng, device)?.0)
    }

    /// The dataset's classes (MNIST's digits, CIFAR-10's ten, a folder's sub-folders); 0 for a
    /// folder without sub-folders, whose one class carries no information.
    fn split_len(&self, split: Split) -> Option<usize> {
        Some(self.len(split))
    }

    fn num_classes(&self) -> usize {
        if self.classes.len() >= 2 {
            self.classes.len()
        } else {
            0
        }
    }

    fn class_name(&self, k: usize) -> Option<String> {
        (self.num_classes() > 0)
            .then(|| self.classes.get(k).cloned())
            .flatten()
    }

    fn sample_labeled(
        &self,
        n: usize,
        split: Split,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (x, labels) = self.sample_with_labels(n, split, rng, device)?;
        if self.num_classes() == 0 {
            return Ok((x, None));
        }
        let n = labels.len();
        Ok((x, Some(Tensor::from_vec(labels, n, device)?)))
    }

    /// `pixel_mean_error` and `pixel_std_error`: how far the samples' pixel mean and standard
    /// deviation are from the training images' (in `[-1, 1]` units); `out_of_range_fraction`:
    /// the fraction of sample values outside `[-1, 1]`. Cheap sanity checks, not a quality score.
    fn sample_metrics(&self, samples: &Tensor) -> Result<Vec<(String, f64)>> {
        let v = samples
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        if v.is_empty() {
            return Ok(Vec::new());
        }
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let out = v
            .iter()
            .filter(|x| x.is_nan() || x.abs() > 1.0 + 1e-6)
            .count() as f64
            / n;
        Ok(vec![
            ("pixel_mean_error".into(), (mean - self.data_mean).abs()),
            ("pixel_std_error".into(), (std - self.data_std).abs()),
            ("out_of_range_fraction".into(), out),
        ])
    }
}
