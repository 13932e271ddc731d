//! ndm-api: the traits every plugin implements, the composed [`Pipeline`], the NELBO, training,
//! sampling, evaluation, the plugin registry, the plugin-library SDK and the error type.
//!
//! A diffusion model in ndm is a composition of plugins (transform `F(x, t)`, noise schedule,
//! parameterization, backbone, prior, objective) plus a [`Solver`] that sees only the
//! [`ReverseProcess`]; DDPM, DDIM and Neural Diffusion Models are presets of one pipeline. The
//! math is described in `docs/math.md` and the architecture in `docs/architecture.md` of the
//! repository.
//!
//! # A complete program
//!
//! Build a pipeline from a preset, train a few steps, sample and evaluate. The built-in plugins and
//! presets come from the `ndm-plugins-all` crate; a plugin crate of your own adds its plugins with
//! [`Setup::with_static_plugins`].
//!
//! ```
//! use ndm_api::candle_core::Device;
//! use ndm_api::eval::evaluate_nelbo;
//! use ndm_api::sample::sample_with;
//! use ndm_api::train::{train_loop, Control, TrainState, Trainer};
//! use ndm_api::{PluginSpec, Rng, RunSpec};
//!
//! # fn main() -> ndm_api::Result<()> {
//! let setup = ndm_plugins_all::setup(None)?; // built-in plugins and presets
//! let device = Device::Cpu;
//! let data = PluginSpec::new("checkerboard");
//! let mut spec = RunSpec::from_preset(&setup.file, "ddpm", data, &setup.plugins, &device)?;
//! spec.set("train.steps=20")?;
//! spec.set("train.batch_size=64")?;
//! spec.set("backbone.hidden=32")?;
//! spec.set("model.steps=50")?; // the training grid of this discrete-time model
//! spec.sampler.steps = Some(10); // a sub-grid of it for sampling
//! let spec = spec.resolve(&setup.plugins, &device)?; // names checked, defaults filled in
//!
//! let pipe = spec.build_pipeline(&setup.plugins, &device)?;
//! let data = spec.build_dataset(&setup.plugins, &device)?;
//! let trainer = Trainer::new(&pipe, &spec.train)?;
//! let mut state = TrainState::new(&pipe, spec.train.seed)?;
//! let summary = train_loop(
//!     &trainer,
//!     &mut state,
//!     data.as_ref(),
//!     &mut |_report| Control::Continue,
//!     &mut |_state| Ok(()), // a program that wants checkpoints writes them here
//! )?;
//! assert_eq!(summary.step, 20);
//!
//! pipe.set_weights(&state.ema)?; // sample and evaluate with the EMA weights
//! let mut rng = Rng::new(1);
//! let (samples, grid) = sample_with(&pipe, &spec.sampler, &setup.plugins, 100, None, None, &mut rng)?;
//! assert_eq!(samples.x.dims(), &[100, 2]);
//! println!("{} solver steps, NFE {}", grid.steps(), samples.nfe);
//! let report = evaluate_nelbo(&pipe, data.as_ref(), 50, 50, &mut rng)?;
//! println!("{report}");
//! # Ok(())
//! # }
//! ```

pub mod backbone;
pub mod bench;
pub mod checkpoint;
pub mod dataset;
pub mod device;
pub mod elbo;
pub mod embedding;
pub mod error;
pub mod eval;
pub mod features;
pub mod guidance;
pub mod kernels;
pub mod likelihood;
pub mod linalg;
pub mod metrics;
pub mod objective;
pub mod ode;
pub mod overrides;
pub mod param;
pub mod pipeline;
pub mod prior;
pub mod registry;
pub mod registry_file;
pub mod reverse;
pub mod rng;
pub mod run;
pub mod sample;
pub mod schedule;
pub mod sdk;
pub mod solver;
pub mod spec;
pub mod stats;
pub mod testing;
pub mod train;
pub mod transform;
pub mod vars;

pub use backbone::{Backbone, NetInput};
pub use dataset::{Dataset, Split};
pub use error::{NdmError, Result};
pub use objective::{LossOutput, Objective};
pub use param::{Coeffs, Parameterization};
pub use pipeline::Pipeline;
pub use prior::Prior;
pub use registry::{BuildCtx, Family, PluginInfo, PluginRegistry};
pub use registry_file::{RegistryFile, RegistrySource, Setup};
pub use reverse::{Gaussian, ReverseProcess};
pub use rng::Rng;
pub use schedule::{NoiseSchedule, ScheduleBatch, SchedulePoint, Times};
pub use solver::{SolveOutput, Solver, Spacing, TimeGrid};
pub use spec::{Decoder, ModelSpec, PluginSpec, Preset, RunSpec, SamplerSpec, TrainConfig};
pub use stats::Estimate;
pub use transform::{Diagonal, Encoder, Transform};

// Re-exported for `register_plugin!` and plugin crates.
pub use candle_core;
pub use candle_nn;
pub use inventory;
pub use toml;

/// The version of this crate, recorded in run specs.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
