//! Links every built-in plugin crate into the binary that depends on this one, and gives a program
//! the built-in plugins and presets in one call ([`setup`]).
//!
//! `inventory` registrations live in the plugin crates' statics; a crate that nothing references is
//! not linked and its plugins silently vanish. Each `use ... as _;` below is such a reference: keep
//! one per plugin crate. The test `every_plugin_crate_registers` reads this crate's manifest and
//! fails if a dependency contributes no plugin, so a forgotten line cannot go unnoticed.

pub use ndm_api;
use ndm_api::{RegistrySource, Setup};
use std::path::Path;

use ndm_data as _;
use ndm_flows as _;
use ndm_nets as _;
use ndm_objectives as _;
use ndm_params as _;
use ndm_priors as _;
use ndm_schedules as _;
use ndm_solvers as _;
use ndm_transforms as _;
use ndm_unet as _;

/// The presets shipped with ndm (the repository's `registry.toml`), used when no file is named.
pub const BUILTIN_PRESETS: &str = include_str!("../../../registry.toml");

/// The registry of every built-in plugin.
pub fn builtin_registry() -> ndm_api::PluginRegistry {
    ndm_api::PluginRegistry::builtin()
}

/// Every built-in plugin and the presets of the registry file `named` (else of `$NDM_REGISTRY`,
/// else `./registry.toml` for presets only, else the built-in presets), with the libraries of a
/// named file loaded.
pub fn setup(named: Option<&Path>) -> ndm_api::Result<Setup> {
    Setup::open(
        RegistrySource::locate(named),
        BUILTIN_PRESETS,
        builtin_registry(),
    )
}

#[cfg(test)]
mod tests {
    /// Every plugin crate this crate depends on registers at least one plugin (its `use ... as _`
    /// line is present), judged by the module path each `plugin_info!` records.
    #[test]
    fn every_plugin_crate_registers() {
        let manifest = include_str!("../Cargo.toml");
        let deps: Vec<String> = manifest
            .split("[dependencies]")
            .nth(1)
            .unwrap_or("")
            .lines()
            .filter_map(|l| l.split(['.', '=', ' ']).next())
            .filter(|n| n.starts_with("ndm-") && *n != "ndm-api")
            .map(|n| n.replace('-', "_"))
            .collect();
        assert!(deps.len() >= 8, "parsed {deps:?}");
        let reg = super::builtin_registry();
        for dep in deps {
            assert!(
                reg.entries()
                    .iter()
                    .any(|e| e.info.module.split("::").next() == Some(dep.as_str())),
                "no plugin of `{dep}` is registered: is its `use {dep} as _;` line missing?"
            );
        }
    }
}
