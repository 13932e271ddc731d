//! A run from a program's point of view: a [`RunSpec`] made from a preset and overrides, resolved
//! against the plugin registry, built into a [`Pipeline`] and a dataset, and loaded back from a
//! run directory. The runner is one user of these functions; examples and other programs are others.

use crate::checkpoint::RunDir;
use crate::registry::{BuildCtx, Family, PluginRegistry};
use crate::registry_file::RegistryFile;
use crate::spec::{ImageVariant, PluginSpec, RunSpec};
use crate::{Dataset, Pipeline, Result};
use candle_core::Device;

impl RunSpec {
    /// The spec of preset `name` on `dataset`. The dataset is built to learn its shape: on image
    /// data (`[C, H, W]`) the preset's [`ImageVariant`] applies ([`RunSpec::apply_image_variant`]). Plugin
    /// names are not checked yet: apply overrides, then [`RunSpec::resolve`].
    pub fn from_preset(
        file: &RegistryFile,
        name: &str,
        dataset: PluginSpec,
        plugins: &PluginRegistry,
        device: &Device,
    ) -> Result<RunSpec> {
        let preset = file.preset(name)?.clone();
        let mut spec = RunSpec {
            preset: Some(name.to_string()),
            ndm_version: crate::VERSION.into(),
            data_shape: vec![],
            dataset: dataset.resolve(Family::Dataset, plugins)?,
            model: preset.model,
            sampler: preset.sampler,
            train: preset.train,
        };
        spec.data_shape = spec.build_dataset(plugins, device)?.data_shape();
        if let (3, Some(v)) = (spec.data_shape.len(), preset.images) {
            spec.apply_image_variant(v)?;
        }
        Ok(spec)
    }

    /// Applies a preset's image variant: the parts it replaces, its decoder, its training
    /// fields and its sampler ([`RunSpec::from_preset`] does this on image data).
    pub fn apply_image_variant(&mut self, v: ImageVariant) -> Result<()> {
        let parts = [
            (Family::Transform, v.transform),
            (Family::Schedule, v.schedule),
            (Family::Param, v.param),
            (Family::Backbone, v.backbone),
            (Family::Prior, v.prior),
            (Family::Objective, v.objective),
        ];
        for (family, part) in parts {
            if let Some(p) = part {
                *self.part_mut(family) = p;
            }
        }
        if let Some(d) = v.decoder {
            self.model.decoder = d;
        }
        for (field, value) in v.train {
            self.set(&format!("train.{field}={value}"))?;
        }
        if let Some(s) = v.sampler {
            self.sampler = s;
        }
        Ok(())
    }

    /// Checks every part against the registry, fills in every default, the data shape and (for a
    /// conditional model) the dataset's number of classes, and validates the training config:
    /// what `spec.toml` records.
    pub fn resolve(&self, plugins: &PluginRegistry, device: &Device) -> Result<RunSpec> {
        let mut out = self.clone();
        out.dataset = self.dataset.resolve(Family::Dataset, plugins)?;
        let data = out.build_dataset(plugins, device)?;
        if out.model.conditional {
            let k = data.num_classes();
            if k == 0 {
                return Err(crate::NdmError::Incompatible(format!(
                    "model.conditional needs labels; dataset {} has none",
                    out.dataset.kind
                )));
            }
            if out.model.classes != 0 && out.model.classes != k {
                return Err(crate::NdmError::Incompatible(format!(
                    "model.classes = {} but dataset {} has {k} classes",
                    out.model.classes, out.dataset.kind
                )));
            }
            out.model.classes = k;
        }
        out.model = out.model.resolve(plugins)?;
        out.sampler.solver = self.sampler.solver.resolve(Family::Solver, plugins)?;
        out.train.validate()?;
        // Built once here so a bad solver value is refused before training, not after it.
        plugins.build_solver(
            &out.sampler.solver,
            &BuildCtx::without_weights(device, plugins),
        )?;
        out.data_shape = data.data_shape();
        Ok(out)
    }

    /// The run's dataset.
    pub fn build_dataset(
        &self,
        plugins: &PluginRegistry,
        device: &Device,
    ) -> Result<Box<dyn Dataset>> {
        plugins.build_dataset(&self.dataset, &BuildCtx::without_weights(device, plugins))
    }

    /// The run's pipeline, with freshly initialised weights (seeded by `train.seed`).
    pub fn build_pipeline(&self, plugins: &PluginRegistry, device: &Device) -> Result<Pipeline> {
        Pipeline::build(
            &self.model,
            &self.data_shape,
            plugins,
            device,
            self.train.seed,
        )
    }
}

/// A trained run, ready to sample and evaluate.
#[derive(Debug)]
pub struct LoadedRun {
    pub spec: RunSpec,
    /// The pipeline with the run's EMA weights.
    pub pipe: Pipeline,
    pub data: Box<dyn Dataset>,
}

impl RunDir {
    /// Loads a trained run: its spec, its pipeline with the EMA weights, and its dataset.
    pub fn load(&self, plugins: &PluginRegistry, device: &Device) -> Result<LoadedRun> {
        let spec = self.read_spec()?;
        let pipe = spec.build_pipeline(plugins, device)?;
        self.load_weights(&pipe)?;
        let data = spec.build_dataset(plugins, device)?;
        Ok(LoadedRun { spec, pipe, data })
    }
}
