//! `runner classifier`: trains the feature network of FID / KID on a labelled image dataset and
//! writes it with its test accuracy and hash; [`FeatureRef`] is what sampling uses it through.

use crate::cli::ClassifierArgs;
use crate::env::Env;
use anyhow::{anyhow, ensure, Context, Result};
use ndm_api::checkpoint::write_text;
use ndm_api::features::{feature_metrics, FeatureNet, FeatureTraining};
use ndm_api::metrics::PointSet;
use ndm_api::{Dataset, Family, PluginSpec, Rng, Split};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The weights' file and the description's file in a feature network folder.
pub const NET_FILE: &str = "feature-net.safetensors";
const INFO_FILE: &str = "feature-net.json";

/// At most this many test images are the reference of the feature metrics.
const REFERENCE_IMAGES: usize = 10_000;

pub fn run(env: &Env, a: &ClassifierArgs) -> Result<Value> {
    let mut spec = PluginSpec::new(a.dataset.clone());
    for s in &a.set {
        let (field, value) = s
            .strip_prefix("dataset.")
            .and_then(|r| r.split_once('='))
            .ok_or_else(|| anyhow!("--set {s}: classifier takes dataset.FIELD=VALUE"))?;
        spec.set(field, value);
    }
    let spec = spec.resolve(Family::Dataset, env.plugins())?;
    let ctx = ndm_api::BuildCtx::without_weights(&env.device, env.plugins());
    let data = env.plugins().build_dataset(&spec, &ctx)?;
    ensure!(a.train_steps > 0, "--train-steps must be at least 1");
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("classifiers").join(&spec.kind));
    let t0 = Instant::now();
    let net = FeatureNet::new(&data.data_shape(), data.num_classes(), a.seed, &env.device)
        .with_context(|| format!("dataset {}", spec.kind))?;
    let cfg = FeatureTraining {
        steps: a.train_steps,
        seed: a.seed,
        ..FeatureTraining::default()
    };
    let loss = net.train(data.as_ref(), &cfg, &env.device)?;
    let (accuracy, n) = net.accuracy(data.as_ref(), REFERENCE_IMAGES, &env.device)?;
    let hash = net.hash()?;
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    net.save(&out.join(NET_FILE))?;
    let info = json!({
        "dataset": spec,
        "shape": net.shape,
        "classes": net.classes,
        "hidden": ndm_api::features::HIDDEN,
        "train_steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "seed": cfg.seed,
        "final_loss_mean_last_100": loss,
        "test_accuracy": accuracy,
        "test_n": n,
        "hash": hash,
        "seconds": t0.elapsed().as_secs_f64(),
    });
    write_text(&out.join(INFO_FILE), &serde_json::to_string_pretty(&info)?)?;
    println!(
        "feature network {hash} for {}: test accuracy {:.4} on {n} test images, trained {} steps in {:.1} s; written to {}",
        spec.kind,
        accuracy,
        cfg.steps,
        t0.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(info)
}

/// A feature network with the features of its reference (test) images, ready to score samples.
#[derive(Debug)]
pub struct FeatureRef {
    net: FeatureNet,
    reference: PointSet,
    hash: String,
}

/// Features of `x` in batches of 1000, as a point set.
fn features_of(net: &FeatureNet, x: &candle_core::Tensor) -> Result<PointSet> {
    let n = x.dim(0)?;
    let mut parts = Vec::new();
    let mut at = 0;
    while at < n {
        let b = (n - at).min(1000);
        parts.push(net.features(&x.narrow(0, at, b)?)?);
        at += b;
    }
    Ok(PointSet::from_tensor(&candle_core::Tensor::cat(
        &parts, 0,
    )?)?)
}

impl FeatureRef {
    /// Loads the network in `dir` and embeds up to 10,000 test images of `data` (a freshly
    /// built dataset, so that the draw is its whole test split in its first shuffled order).
    pub fn load(dir: &Path, data: &dyn Dataset, device: &candle_core::Device) -> Result<Self> {
        let net = FeatureNet::load(&dir.join(NET_FILE), device)
            .with_context(|| format!("feature network {}", dir.display()))?;
        ensure!(
            net.shape == data.data_shape(),
            "feature network {} takes images {:?}; this run's data is {:?}",
            dir.display(),
            net.shape,
            data.data_shape()
        );
        let n = data
            .split_len(Split::Test)
            .unwrap_or(REFERENCE_IMAGES)
            .min(REFERENCE_IMAGES);
        let mut rng = Rng::derived(0, "feature reference");
        let x = data.sample(n, Split::Test, &mut rng, device)?;
        let reference = features_of(&net, &x)?;
        let hash = net.hash()?;
        Ok(FeatureRef {
            net,
            reference,
            hash,
        })
    }

    /// [`FeatureRef::load`] against a fresh copy of a run's dataset (built again so that earlier
    /// draws from the run's own copy do not move its test epoch).
    pub fn for_run(dir: &Path, spec: &ndm_api::RunSpec, env: &crate::env::Env) -> Result<Self> {
        let fresh = spec.build_dataset(env.plugins(), &env.device)?;
        FeatureRef::load(dir, fresh.as_ref(), &env.device)
    }

    /// FID, KID and precision/recall of samples `x`, by name (see
    /// [`ndm_api::features::feature_metrics`]).
    pub fn score(&self, x: &candle_core::Tensor, seed: u64) -> Result<Vec<(String, f64)>> {
        let s = features_of(&self.net, x)?;
        let mut rng = Rng::derived(seed, "feature metrics");
        feature_metrics(&s, &self.reference, &mut rng).map_err(|e| anyhow!("feature metrics: {e}"))
    }

    /// The network's hash, carried by every number it scores.
    pub fn hash(&self) -> &str {
        &self.hash
    }
}
