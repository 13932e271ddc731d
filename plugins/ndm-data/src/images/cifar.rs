//! CIFAR-10 from the binary version's files (`data_batch_1.bin` ... `data_batch_5.bin`,
//! `test_batch.bin`, plain or `.gz`).
//!
//! A file is a sequence of 3073-byte records: one label byte, then 1024 red, 1024 green and 1024
//! blue bytes of a 32x32 image in row-major order, which is already the `[3, 32, 32]` layout.
//! The official files hold 10,000 records each; any positive number of whole records is accepted.

use super::files::{bad_file, cache_decompressed, read_found, Found, ImageFilesConfig, Source};
use super::{ImageDataset, ImageSplit};
use ndm_api::registry::BuildCtx;

const RECORD: usize = 1 + 3 * 32 * 32;

/// CIFAR-10's class names, by label.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

pub(crate) const CIFAR10: Source = Source {
    title: "CIFAR-10",
    folder: "cifar10",
    required: &["data_batch_1.bin", "test_batch.bin"],
    optional: &[
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
    ],
    subfolders: &["cifar-10-batches-bin"],
    system_dirs: &[],
    how: "get https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz (the binary version) and \
          extract it (tar xzf; the files are in cifar-10-batches-bin/)",
};

/// Appends the records of one file to `split`.
fn read_records(f: &Found, split: &mut ImageSplit) -> ndm_api::Result<()> {
    let bytes = read_found(f)?;
    if bytes.is_empty() {
        return Err(bad_file(f, "empty"));
    }
    if bytes.len() % RECORD != 0 {
        return Err(bad_file(
            f,
            format!(
                "truncated or corrupt: {} bytes is not a whole number of {RECORD}-byte records",
                bytes.len()
            ),
        ));
    }
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if rec[0] >= 10 {
            return Err(bad_file(
                f,
                format!(
                    "record {i} has label {}, not in 0..=9: not a CIFAR-10 binary file",
                    rec[0]
                ),
            ));
        }
    }
    for rec in bytes.chunks_exact(RECORD) {
        split.labels.push(rec[0] as u32);
        split.pixels.extend_from_slice(&rec[1..]);
    }
    cache_decompressed(f, &bytes);
    Ok(())
}

fn load(files: &[Found], flip: bool) -> ndm_api::Result<ImageDataset> {
    let empty = || ImageSplit {
        pixels: Vec::new(),
        labels: Vec::new(),
    };
    let (mut train, mut test) = (empty(), empty());
    // Training batches in their numbered order, then the test batch.
    for f in files.iter().filter(|f| f.name.starts_with("data_batch_")) {
        read_records(f, &mut train)?;
    }
    for f in files.iter().filter(|f| f.name == "test_batch.bin") {
        read_records(f, &mut test)?;
    }
    let classes = CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect();
    ImageDataset::new(CIFAR10.title, [3, 32, 32], train, Some(test), classes, flip)
}

/// CIFAR-10 binary files from one folder (or its `cifar-10-batches-bin/`): `data_batch_1.bin`
/// and `test_batch.bin` required, `data_batch_2.bin` ... `data_batch_5.bin` used when present;
/// each plain or `.gz`.
pub fn load_cifar10_dir(dir: &std::path::Path, flip: bool) -> ndm_api::Result<ImageDataset> {
    load(&CIFAR10.locate(&dir.to_string_lossy())?, flip)
}

fn from_config(cfg: ImageFilesConfig) -> ndm_api::Result<ImageDataset> {
    if cfg.download {
        return Err(CIFAR10.no_download());
    }
    load(&CIFAR10.locate(&cfg.dir)?, cfg.flip)
}

ndm_api::register_plugin!(
    Dataset,
    "cifar10",
    "CIFAR-10 [3,32,32] in [-1,1] from the binary files (dir, $NDM_DATA/cifar10 or ./data/cifar10); flip = true for random horizontal flips",
    ImageFilesConfig,
    |c: ImageFilesConfig, _ctx: &BuildCtx| Ok(Box::new(from_config(c)?))
);
