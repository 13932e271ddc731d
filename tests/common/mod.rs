//! Helpers shared by the integration tests.
#![allow(dead_code)]

use ndm_api::candle_core::{DType, Device, Tensor};
use ndm_api::{ModelSpec, Pipeline, PluginRegistry, PluginSpec, RegistryFile};

/// The device the tests run on: `$NDM_TEST_DEVICE`, `cpu` when unset (`ndm_api::testing::device`).
/// A device that cannot be used fails the test that asks for it, in one line.
#[track_caller]
pub fn device() -> &'static Device {
    ndm_api::testing::test_device()
}

pub fn registry() -> PluginRegistry {
    ndm_plugins_all::builtin_registry()
}

/// The registry.toml at the project root.
pub fn registry_file() -> RegistryFile {
    RegistryFile::read(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("registry.toml"))
        .unwrap()
}

/// The DDPM preset's model with the exact Gaussian denoiser (and the NELBO objective, since the
/// oracle has nothing to regress).
pub fn ddpm_oracle() -> ModelSpec {
    let mut m = registry_file().preset("ddpm").unwrap().model.clone();
    m.backbone = PluginSpec::new("gaussian-oracle");
    m.objective = PluginSpec::new("ndm-elbo-discrete");
    m
}

/// The exact Gaussian denoiser in continuous time (continuous VP schedule, continuous NELBO).
pub fn oracle_continuous() -> Pipeline {
    let mut spec = ddpm_oracle();
    spec.steps = None;
    spec.objective = PluginSpec::new("ndm-elbo-continuous");
    spec.schedule.set("form", "\"continuous\"");
    build(&spec, &[2])
}

pub fn build(spec: &ModelSpec, shape: &[usize]) -> Pipeline {
    Pipeline::build(spec, shape, &registry(), device(), 0).unwrap()
}

pub fn tensor(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, device())
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

pub fn to_vec(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The built-in dataset `name` with its default params.
pub fn dataset(name: &str) -> Box<dyn ndm_api::Dataset> {
    let reg = registry();
    // Bound first: the context borrows `reg`, which must outlive the call's temporaries.
    let set = reg
        .build_dataset(&PluginSpec::new(name), &plain_ctx(&reg))
        .unwrap();
    set
}

/// A build context without weights (datasets, solvers).
pub fn plain_ctx(reg: &PluginRegistry) -> ndm_api::registry::BuildCtx<'_> {
    ndm_api::registry::BuildCtx::without_weights(device(), reg)
}

/// Generated `[1, 8, 8]` images for tests that need image data without files: each batch is
/// `draw(n, rng, device)`, and the dataset reports `quantization` (8-bit data: `Some(256)`).
#[derive(Debug)]
pub struct Images8 {
    pub draw: fn(usize, &mut ndm_api::Rng, &Device) -> ndm_api::candle_core::Result<Tensor>,
    pub quantization: Option<u32>,
}

impl ndm_api::Dataset for Images8 {
    fn data_shape(&self) -> Vec<usize> {
        vec![1, 8, 8]
    }
    fn sample(
        &self,
        n: usize,
        _split: ndm_api::Split,
        rng: &mut ndm_api::Rng,
        device: &Device,
    ) -> ndm_api::candle_core::Result<Tensor> {
        (self.draw)(n, rng, device)
    }
    fn quantization(&self) -> Option<u32> {
        self.quantization
    }
}
