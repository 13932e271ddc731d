//! Loads an image dataset from a folder and prints what it holds: a check of real files.
//!
//!     cargo run --release -p ndm-data --example image_data -- mnist ../shared/data/mnist
//!
//! Kinds: mnist, fashion-mnist, cifar10, image-folder (then size and channels may follow).

use ndm_api::candle_core::Device;
use ndm_api::{Dataset, Rng, Split};
use ndm_data::images::{
    load_cifar10_dir, load_fashion_mnist_dir, load_image_folder, load_mnist_dir, ImageFolderConfig,
};
use std::path::Path;
use std::time::Instant;

fn main() {
    if let Err(e) = run() {
        eprintln!("Error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, dir, rest @ ..] = args.as_slice() else {
        return Err("usage: image_data KIND DIR [SIZE CHANNELS]".into());
    };
    let dir = Path::new(dir);
    let start = Instant::now();
    let d = match kind.as_str() {
        "mnist" => load_mnist_dir(dir, false)?,
        "fashion-mnist" => load_fashion_mnist_dir(dir, false)?,
        "cifar10" => load_cifar10_dir(dir, false)?,
        "image-folder" => {
            let mut cfg = ImageFolderConfig {
                dir: dir.to_string_lossy().into_owned(),
                ..Default::default()
            };
            if let [size, channels, ..] = rest {
                cfg.size = size.parse()?;
                cfg.channels = channels.parse()?;
            }
            load_image_folder(&cfg)?
        }
        other => return Err(format!("unknown kind {other}").into()),
    };
    println!(
        "{}: loaded in {:.2} s",
        d.name(),
        start.elapsed().as_secs_f64()
    );
    println!(
        "data shape {:?}; {} train, {} test images; {} classes",
        d.data_shape(),
        d.len(Split::Train),
        d.len(Split::Test),
        d.class_names().len()
    );
    for split in [Split::Train, Split::Test] {
        let mut counts = vec![0usize; d.class_names().len()];
        for &l in d.labels(split) {
            counts[l as usize] += 1;
        }
        println!("{split:?} images per class: {counts:?}");
    }
    let (mean, std) = d.pixel_stats();
    println!("training pixels in model units: mean {mean:.4}, std {std:.4}");
    let x = d.sample(256, Split::Train, &mut Rng::new(0), &Device::Cpu)?;
    let v = x.flatten_all()?.to_vec1::<f32>()?;
    let (lo, hi) = v
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    println!(
        "a batch of 256: shape {:?}, dtype {:?}, values in [{lo}, {hi}]",
        x.dims(),
        x.dtype()
    );
    Ok(())
}
