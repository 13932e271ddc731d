//! Image datasets on small generated files: IDX (plain and .gz), CIFAR-10 binary records, folders
//! of PNG/JPEG images; the one-line refusals; epochs without replacement; reproducibility.

// Pixel loops read best with indices.
#![allow(clippy::needless_range_loop)]

use flate2::write::GzEncoder;
use flate2::Compression;
use ndm_api::candle_core::{Device, Tensor};
use ndm_api::registry::BuildCtx;
use ndm_api::{Dataset, PluginRegistry, PluginSpec, Rng, Split};
use ndm_data::images::{
    load_cifar10_dir, load_image_folder, load_mnist_dir, pixel_value, ImageFolderConfig,
};
use ndm_data::{ImageDataset, ImageSplit};
use std::io::Write;
use std::path::Path;

const MNIST_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Pixel `k` of generated image `i`: covers 0 and 255 and many values between.
fn px(i: usize, k: usize) -> u8 {
    if k == 0 {
        0
    } else if k == 1 {
        255
    } else {
        ((k * 7 + i * 13) % 256) as u8
    }
}

fn idx_images(n: usize, rows: usize, cols: usize) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for d in [n, rows, cols] {
        b.extend((d as u32).to_be_bytes());
    }
    for i in 0..n {
        b.extend((0..rows * cols).map(|k| px(i, k)));
    }
    b
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 1];
    b.extend((labels.len() as u32).to_be_bytes());
    b.extend(labels);
    b
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

const TRAIN_LABELS: [u8; 3] = [3, 0, 9];
const TEST_LABELS: [u8; 2] = [7, 1];

/// A small MNIST folder: 3 training and 2 test images of 28x28.
fn write_mnist(dir: &Path, compressed: bool) {
    let files = [
        idx_images(3, 28, 28),
        idx_labels(&TRAIN_LABELS),
        idx_images(2, 28, 28),
        idx_labels(&TEST_LABELS),
    ];
    for (name, bytes) in MNIST_NAMES.iter().zip(files) {
        if compressed {
            std::fs::write(dir.join(format!("{name}.gz")), gz(&bytes)).unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn assert_one_line(msg: &str) {
    assert!(!msg.contains('\n'), "not one line: {msg}");
}

fn registry() -> PluginRegistry {
    PluginRegistry::builtin()
}

// The binding makes the temporary context drop before the registry.
#[allow(clippy::let_and_return)]
fn build(kind: &str, params: &[(&str, &str)]) -> ndm_api::Result<Box<dyn Dataset>> {
    let reg = registry();
    let mut spec = PluginSpec::new(kind);
    for (k, v) in params {
        spec.set(k, v);
    }
    let ctx = BuildCtx::without_weights(&Device::Cpu, &reg);
    let built = reg.build_dataset(&spec, &ctx);
    built
}

fn build_err(kind: &str, params: &[(&str, &str)]) -> String {
    let e = build(kind, params)
        .expect_err("should be refused")
        .to_string();
    assert_one_line(&e);
    e
}

fn check_mnist(d: &ImageDataset) {
    assert_eq!(d.shape(), [1, 28, 28]);
    assert_eq!(d.data_shape(), vec![1, 28, 28]);
    assert_eq!((d.len(Split::Train), d.len(Split::Test)), (3, 2));
    assert_eq!(d.labels(Split::Train), &[3, 0, 9]);
    assert_eq!(d.labels(Split::Test), &[7, 1]);
    assert_eq!(d.num_classes(), 10);
    // The exact mapping (p + 0.5) / 128 - 1, image by image, in file order.
    let x = d
        .gather(Split::Train, &[0, 1, 2], None, &Device::Cpu)
        .unwrap();
    assert_eq!(x.dims(), &[3, 1, 28, 28]);
    let v = values(&x);
    for i in 0..3 {
        for k in 0..784 {
            assert_eq!(v[i * 784 + k], (px(i, k) as f32 + 0.5) / 128.0 - 1.0);
        }
    }
    assert_eq!(v[0], -255.0 / 256.0);
    assert_eq!(v[1], 255.0 / 256.0);
    assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)));
    let t = d.gather(Split::Test, &[1], None, &Device::Cpu).unwrap();
    assert_eq!(values(&t)[100], pixel_value(px(1, 100)));
}

#[test]
fn mnist_plain_idx_files_load_with_exact_values_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    write_mnist(dir.path(), false);
    check_mnist(&load_mnist_dir(dir.path(), false).unwrap());
    // Through the registry with `dir`; a batch has the data shape and values in [-1, 1].
    let d = build("mnist", &[("dir", &format!("{:?}", dir.path()))]).unwrap();
    assert_eq!(d.data_shape(), vec![1, 28, 28]);
    let x = d
        .sample(5, Split::Train, &mut Rng::new(1), &Device::Cpu)
        .unwrap();
    assert_eq!(x.dims(), &[5, 1, 28, 28]);
    assert!(values(&x).iter().all(|x| (-1.0..=1.0).contains(x)));
    assert!(d.entropy().is_none());
    assert!(d.log_density(&x).unwrap().is_none());
}

#[test]
fn mnist_gz_files_are_checked_and_decompressed_once_into_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    write_mnist(dir.path(), true);
    check_mnist(&load_mnist_dir(dir.path(), false).unwrap());
    for name in MNIST_NAMES {
        assert!(dir.path().join(name).is_file(), "{name} not decompressed");
    }
    assert_eq!(
        std::fs::read(dir.path().join(MNIST_NAMES[0])).unwrap(),
        idx_images(3, 28, 28)
    );
    // No temporary files left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The second load reads the plain files (the .gz could even be gone).
    for name in MNIST_NAMES {
        std::fs::remove_file(dir.path().join(format!("{name}.gz"))).unwrap();
    }
    check_mnist(&load_mnist_dir(dir.path(), false).unwrap());
}

#[test]
fn a_read_only_folder_is_read_but_never_written() {
    let dir = tempfile::tempdir().unwrap();
    write_mnist(dir.path(), true);
    let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(dir.path(), perms.clone()).unwrap();
    let loaded = load_mnist_dir(dir.path(), false);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(dir.path(), perms).unwrap();
    check_mnist(&loaded.unwrap());
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.iter().all(|n| n.ends_with(".gz")), "{names:?}");
}

#[test]
fn fashion_mnist_uses_its_class_names() {
    let dir = tempfile::tempdir().unwrap();
    write_mnist(dir.path(), true);
    let d = build("fashion-mnist", &[("dir", &format!("{:?}", dir.path()))]).unwrap();
    assert_eq!(d.data_shape(), vec![1, 28, 28]);
    assert_eq!(ndm_data::images::FASHION_MNIST_CLASSES[9], "Ankle boot");
}

#[test]
fn missing_files_name_every_expected_file_every_place_and_where_to_get_them() {
    let dir = tempfile::tempdir().unwrap();
    let shown = format!("{}", dir.path().display());
    let e = build_err("mnist", &[("dir", &format!("{shown:?}"))]);
    assert!(e.starts_with("dataset.mnist: "), "{e}");
    for name in MNIST_NAMES {
        assert!(e.contains(name), "{e}");
    }
    assert!(e.contains(&shown) && e.contains("https://"), "{e}");

    // A partial folder names what is missing.
    std::fs::write(dir.path().join(MNIST_NAMES[0]), idx_images(1, 28, 28)).unwrap();
    let e = build_err("mnist", &[("dir", &format!("{shown:?}"))]);
    assert!(e.contains("missing train-labels-idx1-ubyte"), "{e}");

    // Without `dir`: $NDM_DATA/<name>, ./data/<name> and, for Fashion-MNIST, Debian's folder.
    // (The only test that reads $NDM_DATA; the others pass `dir`.)
    let root = tempfile::tempdir().unwrap();
    std::env::set_var("NDM_DATA", root.path());
    let e = build_err("fashion-mnist", &[]);
    std::env::remove_var("NDM_DATA");
    for place in [
        "$NDM_DATA/fashion-mnist",
        "./data/fashion-mnist",
        "/usr/share/datasets/fashion-mnist",
        "apt install dataset-fashion-mnist",
    ] {
        assert!(e.contains(place), "{place} not in: {e}");
    }
    let e = build_err("cifar10", &[("dir", &format!("{shown:?}"))]);
    for name in [
        "data_batch_1.bin",
        "test_batch.bin",
        "cifar-10-binary.tar.gz",
    ] {
        assert!(e.contains(name), "{e}");
    }
}

#[test]
fn download_is_refused_in_one_line_that_says_where_to_put_the_files() {
    for kind in ["mnist", "fashion-mnist", "cifar10"] {
        let e = build_err(kind, &[("download", "true")]);
        assert!(e.contains("not available in this build"), "{e}");
        assert!(e.contains("./data/"), "{e}");
    }
    let e = build_err("mnist", &[("dowload", "true")]);
    assert!(e.contains("dowload"), "{e}");
}

#[test]
fn truncated_and_wrong_magic_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    write_mnist(dir.path(), false);
    let arg = format!("{:?}", dir.path());
    // One byte short.
    let mut b = idx_images(3, 28, 28);
    b.pop();
    std::fs::write(dir.path().join(MNIST_NAMES[0]), &b).unwrap();
    let e = build_err("mnist", &[("dir", &arg)]);
    assert!(e.contains("train-images-idx3-ubyte: truncated"), "{e}");
    // A header cut short.
    std::fs::write(dir.path().join(MNIST_NAMES[0]), &b[..10]).unwrap();
    let e = build_err("mnist", &[("dir", &arg)]);
    assert!(e.contains("train-images-idx3-ubyte: truncated"), "{e}");
    // Extra bytes.
    let mut b = idx_images(3, 28, 28);
    b.push(0);
    std::fs::write(dir.path().join(MNIST_NAMES[0]), &b).unwrap();
    let e = build_err("mnist", &[("dir", &arg)]);
    assert!(
        e.contains("train-images-idx3-ubyte") && e.contains("extra"),
        "{e}"
    );
    // Images where labels should be.
    std::fs::write(dir.path().join(MNIST_NAMES[0]), idx_images(3, 28, 28)).unwrap();
    std::fs::write(dir.path().join(MNIST_NAMES[3]), idx_images(2, 28, 28)).unwrap();
    let e = build_err("mnist", &[("dir", &arg)]);
    assert!(
        e.contains("t10k-labels-idx1-ubyte: wrong magic number 0x00000803"),
        "{e}"
    );
    // A gzip file under the plain name.
    std::fs::write(dir.path().join(MNIST_NAMES[3]), gz(&idx_labels(&[1, 2]))).unwrap();
    let e = build_err("mnist", &[("dir", &arg)]);
    assert!(
        e.contains("t10k-labels-idx1-ubyte") && e.contains(".gz"),
        "{e}"
    );
    // Label counts that do not match, labels out of range, wrong image size.
    std::fs::write(dir.path().join(MNIST_NAMES[3]), idx_labels(&[1])).unwrap();
    let e = build_err("mnist", &[("dir", &arg)]);
    assert!(
        e.contains("t10k-labels-idx1-ubyte: 1 labels for the 2 images"),
        "{e}"
    );
    std::fs::write(dir.path().join(MNIST_NAMES[3]), idx_labels(&[1, 12])).unwrap();
    let e = build_err("mnist", &[("dir", &arg)]);
    assert!(e.contains("t10k-labels-idx1-ubyte: label 12"), "{e}");
    std::fs::write(dir.path().join(MNIST_NAMES[3]), idx_labels(&[1, 2])).unwrap();
    std::fs::write(dir.path().join(MNIST_NAMES[2]), idx_images(2, 32, 32)).unwrap();
    let e = build_err("mnist", &[("dir", &arg)]);
    assert!(
        e.contains("t10k-images-idx3-ubyte: images are 32x32"),
        "{e}"
    );

    // A truncated .gz names the .gz; its plain file is not written.
    let dir = tempfile::tempdir().unwrap();
    write_mnist(dir.path(), true);
    let g = dir.path().join("train-labels-idx1-ubyte.gz");
    let b = std::fs::read(&g).unwrap();
    std::fs::write(&g, &b[..b.len() - 6]).unwrap();
    let e = build_err("mnist", &[("dir", &format!("{:?}", dir.path()))]);
    assert!(e.contains("train-labels-idx1-ubyte.gz: "), "{e}");
    assert!(!dir.path().join("train-labels-idx1-ubyte").exists());
    // A .gz whose content is short names the .gz too.
    let mut b = idx_images(2, 28, 28);
    b.truncate(100);
    std::fs::write(dir.path().join("t10k-images-idx3-ubyte.gz"), gz(&b)).unwrap();
    std::fs::write(&g, gz(&idx_labels(&TRAIN_LABELS))).unwrap();
    let e = build_err("mnist", &[("dir", &format!("{:?}", dir.path()))]);
    assert!(e.contains("t10k-images-idx3-ubyte.gz: truncated"), "{e}");
    assert!(e.contains("after decompression"), "{e}");
}

/// A CIFAR-10 record: label, then red = 10 + i, green = 100 + i, blue = 200 + i, except pixel
/// (row 1, col 2) which is (1, 2, 3).
fn cifar_record(label: u8, i: u8) -> Vec<u8> {
    let mut r = vec![label];
    for (c, base) in [(0u8, 10u8), (1, 100), (2, 200)] {
        let mut plane = vec![base + i; 1024];
        plane[32 + 2] = c + 1;
        r.extend(plane);
    }
    r
}

#[test]
fn cifar_records_load_channel_major_with_labels() {
    let root = tempfile::tempdir().unwrap();
    // Where the official archive extracts to.
    let dir = root.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&dir).unwrap();
    let b1 = [cifar_record(3, 0), cifar_record(9, 1)].concat();
    std::fs::write(dir.join("data_batch_1.bin"), &b1).unwrap();
    std::fs::write(dir.join("data_batch_2.bin.gz"), gz(&cifar_record(0, 2))).unwrap();
    std::fs::write(dir.join("test_batch.bin"), cifar_record(5, 3)).unwrap();
    let d = load_cifar10_dir(root.path(), false).unwrap();
    assert_eq!(d.shape(), [3, 32, 32]);
    assert_eq!(d.labels(Split::Train), &[3, 9, 0]);
    assert_eq!(d.labels(Split::Test), &[5]);
    assert_eq!(d.class_names()[3], "cat");
    assert!(dir.join("data_batch_2.bin").is_file());
    let x = d.gather(Split::Train, &[1], None, &Device::Cpu).unwrap();
    assert_eq!(x.dims(), &[1, 3, 32, 32]);
    let x = x.squeeze(0).unwrap();
    for (c, base) in [(0usize, 10u8), (1, 100), (2, 200)] {
        let plane = x.get(c).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(plane[0][0], pixel_value(base + 1));
        assert_eq!(plane[31][31], pixel_value(base + 1));
        assert_eq!(plane[1][2], pixel_value(c as u8 + 1));
    }
    // Through the registry; flips mirror rows.
    let d = build(
        "cifar10",
        &[("dir", &format!("{:?}", root.path())), ("flip", "true")],
    )
    .unwrap();
    assert_eq!(d.data_shape(), vec![3, 32, 32]);
    let mut seen = [false, false];
    let mut rng = Rng::new(5);
    for _ in 0..20 {
        let x = d.sample(3, Split::Train, &mut rng, &Device::Cpu).unwrap();
        for i in 0..3 {
            let red = x.get(i).unwrap().get(0).unwrap().to_vec2::<f32>().unwrap();
            let marked = |col: usize| red[1][col] == pixel_value(1);
            assert!(marked(2) ^ marked(29));
            seen[marked(29) as usize] = true;
        }
        // The test split is never flipped.
        let t = d.sample(1, Split::Test, &mut rng, &Device::Cpu).unwrap();
        let red = t.get(0).unwrap().get(0).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(red[1][2], pixel_value(1));
    }
    assert!(seen[0] && seen[1], "flips: {seen:?}");

    // A record cut short names the file.
    std::fs::write(dir.join("test_batch.bin"), &b1[..b1.len() - 1]).unwrap();
    let e = build_err("cifar10", &[("dir", &format!("{:?}", root.path()))]);
    assert!(e.contains("test_batch.bin: truncated"), "{e}");
    // Not CIFAR at all.
    std::fs::write(dir.join("test_batch.bin"), vec![77u8; 3073]).unwrap();
    let e = build_err("cifar10", &[("dir", &format!("{:?}", root.path()))]);
    assert!(e.contains("test_batch.bin: record 0 has label 77"), "{e}");
}

fn save_png_grey(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)]))
        .save(path)
        .unwrap();
}

fn save_rgb(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)))
        .save(path)
        .unwrap();
}

fn folder_cfg(dir: &Path, size: usize, channels: usize) -> ImageFolderConfig {
    ImageFolderConfig {
        dir: dir.to_string_lossy().into_owned(),
        size,
        channels,
        ..Default::default()
    }
}

#[test]
fn image_folder_resizes_crops_and_keeps_exact_values_at_its_size() {
    let dir = tempfile::tempdir().unwrap();
    // a: 10x10 RGB, exact at size 10; channel order R, G, B.
    save_rgb(&dir.path().join("a.png"), 10, 10, |x, y| {
        [(x * 20) as u8, (y * 20) as u8, 77]
    });
    // b: 40 wide, 20 high, grey: black left half, white right half. Shorter side 20 -> 10, so
    // 20x10, then the middle 10 columns: the original columns 10..30.
    save_png_grey(&dir.path().join("b.png"), 40, 20, |x, _| {
        if x < 20 {
            0
        } else {
            255
        }
    });
    // c: 6 wide, 30 high (upscaled to 10x50, cropped to rows 20..30), constant.
    save_png_grey(&dir.path().join("c.png"), 6, 30, |_, _| 200);
    // d: a JPEG, constant colour (lossy, so compared loosely).
    save_rgb(&dir.path().join("d.jpg"), 16, 12, |_, _| [250, 128, 5]);
    std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();

    let d = load_image_folder(&folder_cfg(dir.path(), 10, 3)).unwrap();
    assert_eq!(d.shape(), [3, 10, 10]);
    assert_eq!(d.len(Split::Train), 4);
    // One folder is one class, which carries no information: unlabelled data for a model.
    assert_eq!(d.class_names().len(), 1);
    assert_eq!(d.num_classes(), 0);
    assert_eq!(d.labels(Split::Train), &[0, 0, 0, 0]);
    let (_, labels) = d
        .sample_labeled(2, Split::Train, &mut Rng::new(0), &Device::Cpu)
        .unwrap();
    assert!(labels.is_none());
    let x = d
        .gather(Split::Train, &[0, 1, 2, 3], None, &Device::Cpu)
        .unwrap();
    assert_eq!(x.dims(), &[4, 3, 10, 10]);
    let a = x.get(0).unwrap().to_vec3::<f32>().unwrap();
    for y in 0..10 {
        for xx in 0..10 {
            assert_eq!(a[0][y][xx], pixel_value((xx * 20) as u8));
            assert_eq!(a[1][y][xx], pixel_value((y * 20) as u8));
            assert_eq!(a[2][y][xx], pixel_value(77));
        }
    }
    let b = x.get(1).unwrap().to_vec3::<f32>().unwrap();
    for c in 0..3 {
        for y in 0..10 {
            for xx in 0..3 {
                assert_eq!(b[c][y][xx], pixel_value(0), "b[{c}][{y}][{xx}]");
                assert_eq!(b[c][y][9 - xx], pixel_value(255), "b[{c}][{y}][{}]", 9 - xx);
            }
        }
    }
    let c = values(&x.get(2).unwrap());
    assert!(c.iter().all(|&v| v == pixel_value(200)));
    let dj = x.get(3).unwrap().to_vec3::<f32>().unwrap();
    for (ch, want) in [(0, 250u8), (1, 128), (2, 5)] {
        assert!((dj[ch][5][5] - pixel_value(want)).abs() < 0.05, "jpeg {ch}");
    }
    assert!(values(&x).iter().all(|v| (-1.0..=1.0).contains(v)));

    // Grey: the RGB image's luma; shapes [1, size, size].
    let g = load_image_folder(&folder_cfg(dir.path(), 8, 1)).unwrap();
    assert_eq!(g.data_shape(), vec![1, 8, 8]);
    let x = g.gather(Split::Train, &[2], None, &Device::Cpu).unwrap();
    assert!(values(&x).iter().all(|&v| v == pixel_value(200)));

    // Through the registry.
    let d = build(
        "image-folder",
        &[
            ("dir", &format!("{:?}", dir.path())),
            ("size", "12"),
            ("channels", "1"),
        ],
    )
    .unwrap();
    assert_eq!(d.data_shape(), vec![1, 12, 12]);
    let x = d
        .sample(6, Split::Test, &mut Rng::new(3), &Device::Cpu)
        .unwrap();
    assert_eq!(x.dims(), &[6, 1, 12, 12]);
}

#[test]
fn image_folder_subfolders_are_classes_in_sorted_order() {
    let dir = tempfile::tempdir().unwrap();
    for (class, shade) in [("zebra", 10u8), ("ant", 90), ("moth", 170)] {
        let sub = dir.path().join(class);
        std::fs::create_dir(&sub).unwrap();
        for k in 0..3 {
            save_png_grey(&sub.join(format!("{k}.png")), 5, 5, |_, _| shade + k);
        }
    }
    let mut cfg = folder_cfg(dir.path(), 5, 1);
    let d = load_image_folder(&cfg).unwrap();
    assert_eq!(d.class_names(), &["ant", "moth", "zebra"]);
    assert_eq!(d.num_classes(), 3);
    assert_eq!(d.class_name(2).as_deref(), Some("zebra"));
    // The labelled batch is the batch `sample` draws from the same generator and epoch position,
    // with each image's label.
    let at = d.iteration_state();
    let (xl, l) = d
        .sample_labeled(5, Split::Train, &mut Rng::new(9), &Device::Cpu)
        .unwrap();
    d.restore_iteration_state(&at).unwrap();
    let xs = d
        .sample(5, Split::Train, &mut Rng::new(9), &Device::Cpu)
        .unwrap();
    assert_eq!(values(&xl), values(&xs));
    let l: Vec<u32> = l.unwrap().to_vec1().unwrap();
    for (k, &label) in l.iter().enumerate() {
        let shade = [90.0, 170.0, 10.0][label as usize];
        let p = (values(&xl)[k * 25] + 1.0) * 128.0 - 0.5;
        assert!((p - shade).abs() < 2.5 + 0.01, "{p} {label}");
    }
    assert_eq!(d.labels(Split::Train), &[0, 0, 0, 1, 1, 1, 2, 2, 2]);
    let x = d.gather(Split::Train, &[4], None, &Device::Cpu).unwrap();
    assert_eq!(values(&x)[0], pixel_value(171));
    // sample_with_labels pairs each image with its label.
    let (x, l) = d
        .sample_with_labels(9, Split::Train, &mut Rng::new(2), &Device::Cpu)
        .unwrap();
    let v = values(&x);
    for (k, &label) in l.iter().enumerate() {
        let shade = [90.0, 170.0, 10.0][label as usize];
        let p = (v[k * 25] + 1.0) * 128.0 - 0.5;
        assert!((p - shade).abs() < 2.5 + 0.01, "{p} {label}");
    }
    // A held-out part: a fixed choice, disjoint from the training images.
    cfg.test_fraction = 0.34;
    let d = load_image_folder(&cfg).unwrap();
    assert_eq!((d.len(Split::Train), d.len(Split::Test)), (6, 3));
    assert!(d.has_test_split());
    let again = load_image_folder(&cfg).unwrap();
    assert_eq!(d.labels(Split::Test), again.labels(Split::Test));
    for i in 0..3 {
        let t = d.image_bytes(Split::Test, i);
        assert!((0..6).all(|j| d.image_bytes(Split::Train, j) != t));
    }
}

#[test]
fn image_folder_refusals_are_one_line_and_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let arg = format!("{:?}", dir.path());
    let shown = dir.path().display().to_string();
    let e = build_err("image-folder", &[("dir", &arg)]);
    assert!(e.contains(&shown) && e.contains("no PNG or JPEG"), "{e}");
    let e = build_err("image-folder", &[]);
    assert!(e.contains("dir is required"), "{e}");
    let e = build_err("image-folder", &[("dir", "\"/no/such/folder\"")]);
    assert!(
        e.contains("/no/such/folder") && e.contains("no such folder"),
        "{e}"
    );
    std::fs::write(
        dir.path().join("broken.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    let e = build_err("image-folder", &[("dir", &arg)]);
    assert!(
        e.contains("broken.png") && e.contains("not a readable"),
        "{e}"
    );
    std::fs::remove_file(dir.path().join("broken.png")).unwrap();
    save_png_grey(&dir.path().join("ok.png"), 4, 4, |_, _| 1);
    let e = build_err("image-folder", &[("dir", &arg), ("channels", "2")]);
    assert!(e.contains("channels = 2"), "{e}");
    let e = build_err("image-folder", &[("dir", &arg), ("size", "0")]);
    assert!(e.contains("size = 0"), "{e}");
    let e = build_err("image-folder", &[("dir", &arg), ("test_fraction", "0.9")]);
    assert!(e.contains("test_fraction"), "{e}");
    // An empty class folder, and images both at the top and in classes.
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    std::fs::create_dir(dir.path().join("full")).unwrap();
    save_png_grey(&dir.path().join("full/x.png"), 4, 4, |_, _| 1);
    let e = build_err("image-folder", &[("dir", &arg)]);
    assert!(e.contains("ok.png") && e.contains("sub-folders"), "{e}");
    std::fs::remove_file(dir.path().join("ok.png")).unwrap();
    let e = build_err("image-folder", &[("dir", &arg)]);
    assert!(e.contains("empty") && e.contains("no PNG or JPEG"), "{e}");
}

/// `n` one-pixel "images" whose label is their index, so a batch's labels say which were drawn.
fn numbered(n: usize, flip: bool) -> ImageDataset {
    let split = || ImageSplit {
        pixels: (0..n).map(|i| i as u8).collect(),
        labels: (0..n as u32).collect(),
    };
    let classes = (0..n).map(|i| i.to_string()).collect();
    ImageDataset::new("numbered", [1, 1, 1], split(), Some(split()), classes, flip).unwrap()
}

fn draw(d: &ImageDataset, batches: &[usize], split: Split, rng: &mut Rng) -> Vec<u32> {
    let mut out = Vec::new();
    for &b in batches {
        let (x, l) = d.sample_with_labels(b, split, rng, &Device::Cpu).unwrap();
        assert_eq!(x.dims(), &[b, 1, 1, 1]);
        out.extend(l);
    }
    out
}

#[test]
fn epochs_visit_every_example_once_and_continue_across_calls() {
    let d = numbered(7, false);
    let mut rng = Rng::new(11);
    // Batches of 3 over two epochs and a bit: 3 + 3 + 3 + 3 + 3 = 15 = 7 + 7 + 1.
    let got = draw(&d, &[3, 3, 3, 3, 3], Split::Train, &mut rng);
    for epoch in [&got[0..7], &got[7..14]] {
        let mut e = epoch.to_vec();
        e.sort();
        assert_eq!(e, (0..7).collect::<Vec<u32>>());
    }
    assert_ne!(&got[0..7], &got[7..14], "each epoch has its own order");
    // A batch larger than the dataset spans epochs.
    let big = numbered(4, false);
    let got = draw(&big, &[10], Split::Train, &mut Rng::new(1));
    for k in 0..4u32 {
        let count = got[..8].iter().filter(|&&l| l == k).count();
        assert_eq!(count, 2);
    }
    // The test split has its own epoch: n <= len draws are distinct.
    let got = draw(&d, &[2, 2, 3], Split::Test, &mut rng);
    let mut t = got.clone();
    t.sort();
    assert_eq!(t, (0..7).collect::<Vec<u32>>());
}

#[test]
fn the_order_comes_only_from_the_rng() {
    let run = |seed: u64, flip: bool| {
        let d = numbered(50, flip);
        let mut rng = Rng::new(seed);
        let labels = draw(&d, &[16, 16, 16, 16, 16], Split::Train, &mut rng);
        let x = d.sample(8, Split::Train, &mut rng, &Device::Cpu).unwrap();
        (labels, values(&x), rng.state())
    };
    assert_eq!(run(4, false), run(4, false));
    assert_eq!(run(4, true), run(4, true));
    assert_ne!(run(4, false).0, run(5, false).0);
    // A fresh dataset given the same stream repeats it; reset_epochs starts over.
    let d = numbered(9, false);
    let first = draw(&d, &[4], Split::Train, &mut Rng::new(8));
    d.reset_epochs();
    assert_eq!(draw(&d, &[4], Split::Train, &mut Rng::new(8)), first);
}

#[test]
fn sample_metrics_compare_pixel_statistics_with_the_data() {
    let dir = tempfile::tempdir().unwrap();
    write_mnist(dir.path(), false);
    let d = load_mnist_dir(dir.path(), false).unwrap();
    let x = d
        .gather(Split::Train, &[0, 1, 2], None, &Device::Cpu)
        .unwrap();
    let m = d.sample_metrics(&x).unwrap();
    let get = |k: &str| m.iter().find(|(n, _)| n == k).unwrap().1;
    assert!(get("pixel_mean_error") < 1e-5);
    assert!(get("pixel_std_error") < 1e-5);
    assert_eq!(get("out_of_range_fraction"), 0.0);
    let off = (x * 2.0).unwrap();
    let m = d.sample_metrics(&off).unwrap();
    assert!(m[2].1 > 0.1);
}

/// A dataset restored from another's iteration state (what a checkpoint stores) draws the same
/// batches from there on; a state that does not fit is refused.
#[test]
fn iteration_state_restores_the_epoch_position() {
    let a = numbered(9, true);
    let mut rng = Rng::new(3);
    draw(&a, &[4, 4, 4], Split::Train, &mut rng);
    draw(&a, &[2], Split::Test, &mut rng);
    let state = a.iteration_state();
    assert_eq!(state.len(), 6);
    let b = numbered(9, true);
    b.restore_iteration_state(&state).unwrap();
    let (mut ra, mut rb) = (rng.clone(), rng.clone());
    let next_a = (
        draw(&a, &[5, 4], Split::Train, &mut ra),
        draw(&a, &[3], Split::Test, &mut ra),
    );
    let next_b = (
        draw(&b, &[5, 4], Split::Train, &mut rb),
        draw(&b, &[3], Split::Test, &mut rb),
    );
    assert_eq!(next_a, next_b);
    assert_eq!(a.iteration_state(), b.iteration_state());
    // A fresh dataset without the state draws differently (the epoch starts over).
    let c = numbered(9, true);
    let next_c = draw(&c, &[5, 4], Split::Train, &mut rng.clone());
    assert_ne!(next_a.0, next_c);
    assert!(c.restore_iteration_state(&[1, 2]).is_err());
    assert!(c.restore_iteration_state(&[1, 7, 99, 0, 0, 0]).is_err());
}
