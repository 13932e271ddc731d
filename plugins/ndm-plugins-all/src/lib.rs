//! Links every built-in plugin crate into the binary that depends on this one.
//!
//! `inventory` registrations live in the plugin crates' statics; a crate that nothing references is
//! not linked and its plugins silently vanish. Each `use ... as _;` below is such a reference: keep
//! one per plugin crate.

pub use ndm_api;
use ndm_data as _;
use ndm_nets as _;
use ndm_objectives as _;
use ndm_params as _;
use ndm_priors as _;
use ndm_schedules as _;
use ndm_solvers as _;
use ndm_transforms as _;

/// The registry of every built-in plugin.
pub fn builtin_registry() -> ndm_api::PluginRegistry {
    ndm_api::PluginRegistry::builtin()
}
