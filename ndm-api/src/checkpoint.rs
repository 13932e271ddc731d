//! Run directories: `spec.toml`, `weights.safetensors` (EMA weights, what sampling uses),
//! `train-state.safetensors` (raw weights, AdamW moments, EMA, step and RNG: everything `--resume`
//! needs, in one file so it can never be torn), and `metrics.json`. Every file is written to a
//! temporary name and renamed over the old one.

use crate::pipeline::Pipeline;
use crate::rng::Rng;
use crate::spec::RunSpec;
use crate::train::TrainState;
use crate::{NdmError, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const SPEC_FILE: &str = "spec.toml";
pub const WEIGHTS_FILE: &str = "weights.safetensors";
pub const STATE_FILE: &str = "train-state.safetensors";
pub const METRICS_FILE: &str = "metrics.json";

/// Writes `path` atomically and durably: the bytes go to a temporary sibling, which is flushed to
/// disk, then renamed over `path`, and the directory is flushed so the rename survives a crash.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let res = write(&tmp)
        .and_then(|_| sync_file(&tmp))
        .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| NdmError::file(path, e)))
        .and_then(|_| sync_dir(path));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| NdmError::file(path, format!("cannot flush to disk: {e}")))
}

/// Flushes the directory holding `path` (its entry for `path`). Only Unix can open a directory
/// for this; elsewhere the rename is as durable as the platform makes it.
fn sync_dir(path: &Path) -> Result<()> {
    if cfg!(unix) {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| NdmError::file(dir, format!("cannot flush to disk: {e}")))?;
    }
    Ok(())
}

/// Writes text atomically.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    write_atomic(path, |tmp| {
        std::fs::write(tmp, text).map_err(|e| NdmError::file(tmp, e))
    })
}

/// Saves named tensors as safetensors atomically.
pub fn write_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    write_atomic(path, |tmp| {
        candle_core::safetensors::save(tensors, tmp)
            .map_err(|e| NdmError::file(tmp, crate::error::one_line(&e)))
    })
}

/// Reads a safetensors file, with a one-line error for a missing, truncated or foreign file.
pub fn read_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(NdmError::file(path, "missing"));
    }
    candle_core::safetensors::load(path, device).map_err(|e| {
        NdmError::file(
            path,
            format!(
                "cannot be read as safetensors (truncated or corrupt?): {}",
                crate::error::one_line(&e)
            ),
        )
    })
}

/// FNV-1a, 64 bits, fed in pieces: a hash of saved things (a spec's text, a network's weights)
/// that is the same on every build and platform, for naming and versioning them.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    pub fn finish(&self) -> u64 {
        self.0
    }
    /// The hash of one byte string.
    pub fn of(bytes: &[u8]) -> u64 {
        let mut h = Fnv1a::default();
        h.feed(bytes);
        h.finish()
    }
}

/// A run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RunDir { path: path.into() }
    }
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
    /// Creates the directory.
    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.path).map_err(|e| NdmError::file(&self.path, e))
    }
    pub fn write_spec(&self, spec: &RunSpec) -> Result<()> {
        let text = toml::to_string_pretty(spec)
            .map_err(|e| NdmError::Spec(format!("cannot write spec: {e}")))?;
        write_text(&self.file(SPEC_FILE), &text)
    }
    pub fn read_spec(&self) -> Result<RunSpec> {
        let path = self.file(SPEC_FILE);
        if !self.path.is_dir() {
            return Err(NdmError::file(&self.path, "no such run directory"));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| NdmError::file(&path, e))?;
        toml::from_str(&text).map_err(|e| NdmError::file(&path, crate::error::one_line(&e)))
    }
    /// Writes the training state, then the EMA weights.
    pub fn write_checkpoint(&self, pipe: &Pipeline, state: &TrainState) -> Result<()> {
        let mut t = HashMap::new();
        for (name, var) in pipe.vars() {
            t.insert(format!("param/{name}"), var.as_tensor().detach().copy()?);
        }
        for (prefix, map) in [
            ("adam_m", &state.m),
            ("adam_v", &state.v),
            ("ema", &state.ema),
        ] {
            for (name, v) in map {
                t.insert(format!("{prefix}/{name}"), v.clone());
            }
        }
        t.insert(
            "meta/step".into(),
            Tensor::new(&[state.step as i64], &Device::Cpu)?,
        );
        let rng: Vec<i64> = state.rng.state().iter().map(|&u| u as i64).collect();
        t.insert(
            "meta/rng".into(),
            Tensor::new(rng.as_slice(), &Device::Cpu)?,
        );
        if !state.data.is_empty() {
            let d: Vec<i64> = state.data.iter().map(|&u| u as i64).collect();
            t.insert("meta/data".into(), Tensor::new(d.as_slice(), &Device::Cpu)?);
        }
        write_tensors(&self.file(STATE_FILE), &t)?;
        write_tensors(&self.file(WEIGHTS_FILE), &state.ema)
    }
    /// Loads the EMA weights into the pipeline.
    pub fn load_weights(&self, pipe: &Pipeline) -> Result<()> {
        let w = read_tensors(&self.file(WEIGHTS_FILE), &pipe.device)?;
        pipe.set_weights(&w)
            .map_err(|e| NdmError::file(self.file(WEIGHTS_FILE), e))
    }
    /// Loads the training state and the raw weights into the pipeline.
    pub fn load_state(&self, pipe: &Pipeline) -> Result<TrainState> {
        let path = self.file(STATE_FILE);
        let mut t = read_tensors(&path, &pipe.device)?;
        let bad = |m: String| NdmError::file(&path, m);
        let mut take = |prefix: &str| -> Result<HashMap<String, Tensor>> {
            let mut out = HashMap::new();
            for (name, _) in pipe.vars() {
                let key = format!("{prefix}/{name}");
                let v = t
                    .remove(&key)
                    .ok_or_else(|| bad(format!("has no tensor `{key}`")))?;
                out.insert(name, v);
            }
            Ok(out)
        };
        let params = take("param")?;
        let (m, v, ema) = (take("adam_m")?, take("adam_v")?, take("ema")?);
        pipe.set_weights(&params).map_err(|e| bad(e.to_string()))?;
        let step = t
            .get("meta/step")
            .ok_or_else(|| bad("has no `meta/step`".into()))?
            .to_dtype(DType::I64)?
            .to_vec1::<i64>()?;
        let rng = t
            .get("meta/rng")
            .ok_or_else(|| bad("has no `meta/rng`".into()))?
            .to_vec1::<i64>()?;
        if step.len() != 1 || rng.len() != 4 {
            return Err(bad("has malformed meta tensors".into()));
        }
        let rng = Rng::from_state([rng[0] as u64, rng[1] as u64, rng[2] as u64, rng[3] as u64]);
        let data = match t.get("meta/data") {
            Some(d) => d.to_vec1::<i64>()?.into_iter().map(|v| v as u64).collect(),
            None => Vec::new(),
        };
        Ok(TrainState {
            step: step[0] as usize,
            m,
            v,
            ema,
            rng,
            data,
        })
    }
}
