//! `dataset.image-folder`: a folder of PNG/JPEG images, resized so the shorter side is `size`
//! (bilinear, `image`'s triangle filter, which averages over the footprint when shrinking), then
//! centre-cropped to `size` x `size`; grey (`channels = 1`) or RGB (`channels = 3`, alpha dropped).
//!
//! Layout: either images directly in the folder (one class), or one sub-folder per class with
//! the images inside (label = index of the sub-folder in sorted order); not both. Files are read
//! in sorted order; files other than `.png`, `.jpg`, `.jpeg` and hidden entries are ignored.

use super::{ImageDataset, ImageSplit};
use image::imageops::FilterType;
use image::{ImageBuffer, Pixel};
use ndm_api::registry::BuildCtx;
use ndm_api::{NdmError, Rng};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Params of `dataset.image-folder`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageFolderConfig {
    /// The folder (required).
    pub dir: String,
    /// Side of the square images, in pixels.
    pub size: usize,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// Random horizontal flips of training images.
    pub flip: bool,
    /// Fraction of the images held out as the `Test` split (a fixed choice, the same for every
    /// run); 0: the `Test` split draws from the training images.
    pub test_fraction: f64,
}

impl Default for ImageFolderConfig {
    fn default() -> Self {
        ImageFolderConfig {
            dir: String::new(),
            size: 32,
            channels: 3,
            flip: false,
            test_fraction: 0.0,
        }
    }
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

fn hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// The visible entries of a folder, sorted: (sub-folders, image files).
fn entries(dir: &Path) -> ndm_api::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let rd = std::fs::read_dir(dir).map_err(|e| NdmError::file(dir, e))?;
    let mut paths = Vec::new();
    for e in rd {
        paths.push(e.map_err(|e| NdmError::file(dir, e))?.path());
    }
    paths.sort();
    let (mut dirs, mut images) = (Vec::new(), Vec::new());
    for p in paths.into_iter().filter(|p| !hidden(p)) {
        if p.is_dir() {
            dirs.push(p);
        } else if is_image(&p) {
            images.push(p);
        }
    }
    Ok((dirs, images))
}

/// Resize so the shorter side is `size`, centre-crop to `size` x `size`, and lay the pixels out
/// channel-major.
fn square<P: Pixel<Subpixel = u8> + 'static>(img: ImageBuffer<P, Vec<u8>>, size: u32) -> Vec<u8> {
    let (w, h) = img.dimensions();
    let (nw, nh) = if w <= h {
        let nh = ((h as f64 * size as f64 / w as f64).round() as u32).max(size);
        (size, nh)
    } else {
        let nw = ((w as f64 * size as f64 / h as f64).round() as u32).max(size);
        (nw, size)
    };
    let resized = if (nw, nh) == (w, h) {
        img
    } else {
        image::imageops::resize(&img, nw, nh, FilterType::Triangle)
    };
    let (x0, y0) = ((nw - size) / 2, (nh - size) / 2);
    let cropped = image::imageops::crop_imm(&resized, x0, y0, size, size).to_image();
    let c = P::CHANNEL_COUNT as usize;
    let raw = cropped.as_raw();
    let n = (size * size) as usize;
    let mut out = vec![0u8; n * c];
    for (i, px) in raw.chunks_exact(c).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            out[ch * n + i] = v;
        }
    }
    out
}

fn read_image(path: &Path, size: u32, channels: usize) -> ndm_api::Result<Vec<u8>> {
    let unreadable = |e: &dyn std::fmt::Display| {
        NdmError::file(path, format!("not a readable PNG or JPEG image ({e})"))
    };
    let img = image::ImageReader::open(path)
        .map_err(|e| NdmError::file(path, e))?
        .with_guessed_format()
        .map_err(|e| unreadable(&e))?
        .decode()
        .map_err(|e| unreadable(&e))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(NdmError::file(path, "the image is empty (0 pixels)"));
    }
    Ok(match channels {
        1 => square(img.to_luma8(), size),
        _ => square(img.to_rgb8(), size),
    })
}

/// Reads a folder of images as described in the module docs.
pub fn load_image_folder(cfg: &ImageFolderConfig) -> ndm_api::Result<ImageDataset> {
    if cfg.dir.is_empty() {
        return Err(NdmError::invalid_param(
            "dir is required: the folder of PNG/JPEG images (--set dataset.dir=PATH)",
        ));
    }
    if cfg.channels != 1 && cfg.channels != 3 {
        return Err(NdmError::invalid_param(format!(
            "channels = {} is not 1 (grey) or 3 (RGB)",
            cfg.channels
        )));
    }
    if cfg.size == 0 || cfg.size > 4096 {
        return Err(NdmError::invalid_param(format!(
            "size = {} is not in 1..=4096",
            cfg.size
        )));
    }
    if !(0.0..1.0).contains(&cfg.test_fraction) {
        return Err(NdmError::invalid_param(format!(
            "test_fraction = {} is not in [0, 1)",
            cfg.test_fraction
        )));
    }
    let dir = Path::new(&cfg.dir);
    if !dir.is_dir() {
        let what = if dir.exists() {
            "not a folder"
        } else {
            "no such folder"
        };
        return Err(NdmError::file(
            dir,
            format!("{what} (dataset.image-folder dir)"),
        ));
    }
    let (subdirs, top) = entries(dir)?;
    let mut classes = Vec::new();
    let mut files: Vec<(PathBuf, u32)> = Vec::new();
    let class_dirs: Vec<(PathBuf, Vec<PathBuf>)> = subdirs
        .into_iter()
        .map(|d| entries(&d).map(|(_, imgs)| (d, imgs)))
        .collect::<ndm_api::Result<_>>()?;
    let with_images: Vec<&(PathBuf, Vec<PathBuf>)> = class_dirs
        .iter()
        .filter(|(_, imgs)| !imgs.is_empty())
        .collect();
    if !with_images.is_empty() && !top.is_empty() {
        return Err(NdmError::file(
            dir,
            format!(
                "has images both in the folder ({}) and in sub-folders ({}); put every image in a \
                 class sub-folder, or none",
                top[0].display(),
                with_images[0].0.display()
            ),
        ));
    }
    if with_images.is_empty() {
        classes.push(String::from("all"));
        files.extend(top.into_iter().map(|p| (p, 0)));
    } else {
        // Every visible sub-folder is a class; an empty one would be a class without examples.
        for (d, imgs) in &class_dirs {
            if imgs.is_empty() {
                return Err(NdmError::file(
                    d,
                    "class sub-folder has no PNG or JPEG images",
                ));
            }
            let label = classes.len() as u32;
            classes.push(
                d.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
            files.extend(imgs.iter().map(|p| (p.clone(), label)));
        }
    }
    if files.is_empty() {
        return Err(NdmError::file(
            dir,
            "has no PNG or JPEG images (.png, .jpg, .jpeg), directly or in class sub-folders",
        ));
    }
    let n_test = if cfg.test_fraction > 0.0 {
        let k = ((cfg.test_fraction * files.len() as f64).round() as usize).max(1);
        if k >= files.len() {
            return Err(NdmError::invalid_param(format!(
                "test_fraction = {} leaves no training images out of {}",
                cfg.test_fraction,
                files.len()
            )));
        }
        k
    } else {
        0
    };
    // The held-out images: a fixed permutation, independent of the run's seed.
    let mut order: Vec<usize> = (0..files.len()).collect();
    let mut rng = Rng::derived(0, "image-folder-test");
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut is_test = vec![false; files.len()];
    for &i in &order[..n_test] {
        is_test[i] = true;
    }
    let empty = || ImageSplit {
        pixels: Vec::new(),
        labels: Vec::new(),
    };
    let (mut train, mut test) = (empty(), empty());
    for (i, (path, label)) in files.iter().enumerate() {
        let px = read_image(path, cfg.size as u32, cfg.channels)?;
        let s = if is_test[i] { &mut test } else { &mut train };
        s.pixels.extend(px);
        s.labels.push(*label);
    }
    ImageDataset::new(
        format!("image folder {}", dir.display()),
        [cfg.channels, cfg.size, cfg.size],
        train,
        (n_test > 0).then_some(test),
        classes,
        cfg.flip,
    )
}

ndm_api::register_plugin!(
    Dataset,
    "image-folder",
    "PNG/JPEG images of a folder (dir; sub-folders as classes), shorter side resized to size and centre-cropped, channels 1 or 3, in [-1,1]",
    ImageFolderConfig,
    |c: ImageFolderConfig, _ctx: &BuildCtx| Ok(Box::new(load_image_folder(&c)?))
);
