//! What every command needs: the plugins and presets, the device, the output mode.

use crate::cli::Global;
use anyhow::Result;
use candle_core::Device;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ndm_api::{RegistrySource, Setup};
use std::io::IsTerminal;

#[derive(Debug)]
pub struct Env {
    pub setup: Setup,
    pub device: Device,
    pub quiet: bool,
}

impl Env {
    /// Opens the registry file the user named (or the default one), loads its libraries where
    /// that is allowed and says so on stderr, and opens the device.
    pub fn new(g: &Global, static_plugins: &[ndm_api::PluginInfo]) -> Result<Self> {
        let source = RegistrySource::locate(g.registry.as_deref());
        let setup = Setup::open(
            source,
            ndm_plugins_all::BUILTIN_PRESETS,
            ndm_plugins_all::builtin_registry(),
        )?
        .with_static_plugins(static_plugins)?;
        for lib in &setup.loaded {
            eprintln!(
                "loaded plugin library {}: {}",
                lib.path.display(),
                lib.plugins.join(", ")
            );
        }
        if !setup.skipped.is_empty() {
            eprintln!(
                "note: ./registry.toml names {} plugin librar{} that did not load: libraries load only from a registry file named with --registry or ${}",
                setup.skipped.len(),
                if setup.skipped.len() == 1 { "y" } else { "ies" },
                ndm_api::registry_file::REGISTRY_ENV
            );
        }
        Ok(Env {
            setup,
            device: ndm_api::device::open(&g.device)?,
            quiet: g.quiet || !std::io::stderr().is_terminal(),
        })
    }

    pub fn plugins(&self) -> &ndm_api::PluginRegistry {
        &self.setup.plugins
    }

    /// A progress bar, hidden when quiet.
    pub fn progress(&self, len: u64, what: &str) -> ProgressBar {
        let pb = ProgressBar::new(len);
        if self.quiet {
            pb.set_draw_target(ProgressDrawTarget::hidden());
        }
        let style = ProgressStyle::with_template(&format!(
            "{what} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}}<{{eta_precise}}, {{per_sec}}] {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        pb.set_style(style);
        pb
    }
}
