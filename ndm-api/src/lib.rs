//! ndm-api: the traits every plugin implements, the composed [`Pipeline`], the NELBO, training,
//! sampling, evaluation, the plugin registry and the error type. The math is described in
//! `docs/math.md` and the architecture in `docs/architecture.md` of the repository.

pub mod backbone;
pub mod checkpoint;
pub mod dataset;
pub mod elbo;
pub mod embedding;
pub mod error;
pub mod eval;
pub mod likelihood;
pub mod linalg;
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
pub use schedule::{NoiseSchedule, ScheduleBatch, SchedulePoint};
pub use solver::{SolveOutput, Solver, Spacing, TimeGrid};
pub use spec::{ModelSpec, PluginSpec, Preset, RunSpec, SamplerSpec, TrainConfig};
pub use stats::Estimate;
pub use transform::Transform;

// Re-exported for `register_plugin!` and plugin crates.
pub use candle_core;
pub use candle_nn;
pub use inventory;
pub use toml;

/// The version of this crate, recorded in run specs.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
