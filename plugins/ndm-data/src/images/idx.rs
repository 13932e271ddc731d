//! MNIST and Fashion-MNIST from their IDX files (plain or `.gz`).
//!
//! IDX: a big-endian header, magic `0x00000803` for images (`u8` data, 3 dimensions: count, rows,
//! columns) and `0x00000801` for labels (`u8`, 1 dimension: count), followed by the bytes.

use super::files::{bad_file, cache_decompressed, read_found, Found, ImageFilesConfig, Source};
use super::{ImageDataset, ImageSplit};
use ndm_api::registry::BuildCtx;
use ndm_api::NdmError;

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
const SIDE: usize = 28;

const FILES: &[&str] = &[
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Fashion-MNIST's class names, by label.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

pub(crate) const MNIST: Source = Source {
    title: "MNIST",
    folder: "mnist",
    required: FILES,
    optional: &[],
    subfolders: &[],
    system_dirs: &[],
    how: "get them from https://ossci-datasets.s3.amazonaws.com/mnist/ (the files of \
          http://yann.lecun.com/exdb/mnist/)",
};

pub(crate) const FASHION_MNIST: Source = Source {
    title: "Fashion-MNIST",
    folder: "fashion-mnist",
    required: FILES,
    optional: &[],
    subfolders: &[],
    system_dirs: &["/usr/share/datasets/fashion-mnist"],
    how: "get them with `apt install dataset-fashion-mnist` (Debian) or from \
          https://github.com/zalandoresearch/fashion-mnist",
};

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn check_magic(bytes: &[u8], expected: u32, what: &str) -> Result<(), String> {
    let magic = be_u32(bytes, 0);
    if magic == expected {
        return Ok(());
    }
    let hint = if bytes[..2] == [0x1f, 0x8b] {
        "; it is gzip-compressed: name it .gz"
    } else if magic == IMAGES_MAGIC || magic == LABELS_MAGIC {
        "; images and labels swapped?"
    } else {
        ""
    };
    Err(format!(
        "wrong magic number 0x{magic:08x}, expected 0x{expected:08x} ({what}){hint}"
    ))
}

/// Checks an IDX image file and returns `(count, rows, cols)` and the pixel bytes. Refuses a wrong
/// magic number and a size other than the one its header implies, with a one-line reason.
pub fn parse_idx_images(bytes: &[u8]) -> Result<(usize, usize, usize, &[u8]), String> {
    if bytes.len() < 16 {
        return Err(format!(
            "truncated: {} bytes, an IDX image header needs 16",
            bytes.len()
        ));
    }
    check_magic(bytes, IMAGES_MAGIC, "an IDX file of u8 images")?;
    let (n, rows, cols) = (
        be_u32(bytes, 4) as u64,
        be_u32(bytes, 8) as u64,
        be_u32(bytes, 12) as u64,
    );
    let want = 16 + n * rows * cols;
    let have = bytes.len() as u64;
    if have < want {
        return Err(format!(
            "truncated: {have} bytes, the header implies {want} ({n} images of {rows}x{cols})"
        ));
    }
    if have > want {
        return Err(format!(
            "{have} bytes, the header implies {want} ({n} images of {rows}x{cols}): extra data"
        ));
    }
    Ok((n as usize, rows as usize, cols as usize, &bytes[16..]))
}

/// Checks an IDX label file and returns its labels. Refuses a wrong magic number and a size other
/// than the one its header implies, with a one-line reason.
pub fn parse_idx_labels(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.len() < 8 {
        return Err(format!(
            "truncated: {} bytes, an IDX label header needs 8",
            bytes.len()
        ));
    }
    check_magic(bytes, LABELS_MAGIC, "an IDX file of u8 labels")?;
    let n = be_u32(bytes, 4) as u64;
    let (have, want) = (bytes.len() as u64, 8 + n);
    if have < want {
        return Err(format!(
            "truncated: {have} bytes, the header implies {want} ({n} labels)"
        ));
    }
    if have > want {
        return Err(format!(
            "{have} bytes, the header implies {want} ({n} labels): extra data"
        ));
    }
    Ok(&bytes[8..])
}

/// One split from its image and label files.
fn read_split(images: &Found, labels: &Found) -> ndm_api::Result<ImageSplit> {
    let ib = read_found(images)?;
    let (n, rows, cols, _) = parse_idx_images(&ib).map_err(|m| bad_file(images, m))?;
    if (rows, cols) != (SIDE, SIDE) {
        return Err(bad_file(
            images,
            format!("images are {rows}x{cols}, expected {SIDE}x{SIDE}"),
        ));
    }
    if n == 0 {
        return Err(bad_file(images, "holds no images"));
    }
    let lb = read_found(labels)?;
    let lv = parse_idx_labels(&lb).map_err(|m| bad_file(labels, m))?;
    if lv.len() != n {
        return Err(bad_file(
            labels,
            format!(
                "{} labels for the {n} images of {}",
                lv.len(),
                images.path.display()
            ),
        ));
    }
    if let Some(i) = lv.iter().position(|&l| l >= 10) {
        return Err(bad_file(
            labels,
            format!("label {} of image {i} is not in 0..=9", lv[i]),
        ));
    }
    let label_vec = lv.iter().map(|&l| l as u32).collect();
    cache_decompressed(images, &ib);
    cache_decompressed(labels, &lb);
    let mut pixels = ib;
    pixels.drain(..16);
    Ok(ImageSplit {
        pixels,
        labels: label_vec,
    })
}

fn load(
    src: &Source,
    files: &[Found],
    classes: Vec<String>,
    flip: bool,
) -> ndm_api::Result<ImageDataset> {
    let get = |name: &str| {
        files
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| NdmError::Spec(format!("{}: {name} not found", src.title)))
    };
    let train = read_split(get(FILES[0])?, get(FILES[1])?)?;
    let test = read_split(get(FILES[2])?, get(FILES[3])?)?;
    ImageDataset::new(src.title, [1, SIDE, SIDE], train, Some(test), classes, flip)
}

fn digit_classes() -> Vec<String> {
    (0..10).map(|d| d.to_string()).collect()
}

/// MNIST-format files (`train-images-idx3-ubyte` etc., plain or `.gz`) from one folder, with
/// labels 0..9 named by digit.
pub fn load_mnist_dir(dir: &std::path::Path, flip: bool) -> ndm_api::Result<ImageDataset> {
    let files = MNIST.locate(&dir.to_string_lossy())?;
    load(&MNIST, &files, digit_classes(), flip)
}

/// Fashion-MNIST files (same names and format as MNIST) from one folder, with its class names.
pub fn load_fashion_mnist_dir(dir: &std::path::Path, flip: bool) -> ndm_api::Result<ImageDataset> {
    let files = FASHION_MNIST.locate(&dir.to_string_lossy())?;
    load(&FASHION_MNIST, &files, fashion_classes(), flip)
}

fn fashion_classes() -> Vec<String> {
    FASHION_MNIST_CLASSES
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn from_config(
    src: &Source,
    cfg: ImageFilesConfig,
    classes: Vec<String>,
) -> ndm_api::Result<ImageDataset> {
    if cfg.download {
        return Err(src.no_download());
    }
    let files = src.locate(&cfg.dir)?;
    load(src, &files, classes, cfg.flip)
}

ndm_api::register_plugin!(
    Dataset,
    "mnist",
    "MNIST digits [1,28,28] in [-1,1] from the IDX files (dir, $NDM_DATA/mnist or ./data/mnist)",
    ImageFilesConfig,
    |c: ImageFilesConfig, _ctx: &BuildCtx| Ok(Box::new(from_config(&MNIST, c, digit_classes())?))
);

ndm_api::register_plugin!(
    Dataset,
    "fashion-mnist",
    "Fashion-MNIST [1,28,28] in [-1,1] from the IDX files (dir, $NDM_DATA/fashion-mnist, ./data/fashion-mnist or Debian's dataset-fashion-mnist)",
    ImageFilesConfig,
    |c: ImageFilesConfig, _ctx: &BuildCtx| Ok(Box::new(from_config(
        &FASHION_MNIST,
        c,
        fashion_classes()
    )?))
);
