//! A run from a program's point of view: a [`RunSpec`] made from a preset and overrides, resolved
//! against the plugin registry, built into a [`Pipeline`] and a dataset, and loaded back from a
//! run directory. The runner is one user of these functions; examples and other programs are others.

use crate::checkpoint::RunDir;
use crate::registry::{BuildCtx, Family, PluginRegistry};
use crate::registry_file::RegistryFile;
use crate::spec::{PluginSpec, Preset, RunSpec};
use crate::{Dataset, Pipeline, Result};
use candle_core::Device;

impl RunSpec {
    /// The spec of preset `name` on `dataset`. The dataset is built to learn its shape: on image
    /// data (`[C, H, W]`) the preset's image variant applies ([`Preset::on_images`]). Plugin names
    /// are not checked yet: apply overrides, then [`RunSpec::resolve`].
    pub fn from_preset(
        file: &RegistryFile,
        name: &str,
        dataset: PluginSpec,
        plugins: &PluginRegistry,
        device: &Device,
    ) -> Result<RunSpec> {
        let preset = file.preset(name)?;
        let mut spec = RunSpec {
            preset: Some(name.to_string()),
            ndm_version: crate::VERSION.into(),
            data_shape: vec![],
            dataset: dataset.resolve(Family::Dataset, plugins)?,
            model: preset.model.clone(),
            sampler: preset.sampler.clone(),
            train: preset.train.clone(),
        };
        spec.data_shape = spec.build_dataset(plugins, device)?.data_shape();
        if spec.data_shape.len() == 3 {
            let p = preset.on_images()?;
            (spec.model, spec.sampler, spec.train) = (p.model, p.sampler, p.train);
        }
        Ok(spec)
    }
}

impl Preset {
    /// The preset as it runs on image data (`[C, H, W]`): its
    /// [`ImageVariant`](crate::spec::ImageVariant)'s parts, decoder, training fields and sampler
    /// applied (itself when it has none).
    pub fn on_images(&self) -> Result<Preset> {
        let mut p = self.clone();
        let Some(v) = p.images.take() else {
            return Ok(p);
        };
        let m = &mut p.model;
        let parts = [
            (&mut m.transform, v.transform),
            (&mut m.schedule, v.schedule),
            (&mut m.param, v.param),
            (&mut m.backbone, v.backbone),
            (&mut m.prior, v.prior),
            (&mut m.objective, v.objective),
        ];
        for (slot, part) in parts {
            if let Some(part) = part {
                *slot = part;
            }
        }
        if let Some(d) = v.decoder {
            m.decoder = d;
        }
        for (field, value) in v.train {
            p.train.set(&field, &value.to_string()).map_err(|e| {
                crate::NdmError::InvalidArgument(format!("`train.{field}={value}`: {e}"))
            })?;
        }
        if let Some(s) = v.sampler {
            p.sampler = s;
        }
        Ok(p)
    }
}

impl RunSpec {
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
