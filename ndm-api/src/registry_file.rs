//! The registry file (`registry.toml`): named presets and the plugin libraries to load, and the
//! rule for which file is used and whether its libraries may run.
//!
//! Loading a library runs its code, so it is the user's decision, never the current directory's:
//! libraries load only from a registry file named explicitly, with `--registry FILE` or the
//! [`REGISTRY_ENV`] environment variable. A `registry.toml` that merely sits in the working
//! directory still provides presets, but its `[[library]]` entries are not loaded.

use crate::registry::{Origin, PluginRegistry};
use crate::spec::Preset;
use crate::{NdmError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The environment variable naming a registry file whose libraries may load (like `--registry`).
pub const REGISTRY_ENV: &str = "NDM_REGISTRY";

/// A shared library of plugins named in `registry.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibrarySpec {
    /// Path of the library; relative paths resolve against the registry file's folder.
    pub path: PathBuf,
    /// If given, the name the library's manifest must declare.
    #[serde(default)]
    pub name: Option<String>,
}

/// The registry file: presets by name and plugin libraries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    #[serde(default)]
    pub presets: BTreeMap<String, Preset>,
    #[serde(default, rename = "library")]
    pub libraries: Vec<LibrarySpec>,
    /// Where the file was read from (`None` for the copy compiled into the binary).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl RegistryFile {
    /// Parses registry text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        toml::from_str(text)
            .map_err(|e| NdmError::Spec(format!("{origin}: {}", crate::error::one_line(&e))))
    }

    /// Reads and parses a registry file; relative library paths are made absolute against its folder.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| NdmError::file(path, e))?;
        let mut reg = Self::parse(&text, &path.display().to_string())?;
        // Absolute, so a bare file name is never looked up on the system's library path.
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        for lib in &mut reg.libraries {
            if lib.path.is_relative() {
                lib.path = dir.join(&lib.path);
            }
        }
        reg.source = Some(path.to_path_buf());
        Ok(reg)
    }

    /// A preset by name; an unknown name lists the known ones.
    pub fn preset(&self, name: &str) -> Result<&Preset> {
        self.presets.get(name).ok_or_else(|| {
            NdmError::Spec(format!(
                "unknown preset `{name}`; known: {}",
                self.presets.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

/// Where the registry file in use came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrySource {
    /// Named with `--registry` (or by a program): its libraries load.
    Named(PathBuf),
    /// Named by [`REGISTRY_ENV`]: its libraries load.
    Env(PathBuf),
    /// `registry.toml` found in the working directory: presets only, libraries do not load.
    WorkingDir(PathBuf),
    /// The copy compiled into the program.
    BuiltIn,
}

impl RegistrySource {
    /// Picks the registry file: `named`, else [`REGISTRY_ENV`], else `./registry.toml`, else built in.
    pub fn locate(named: Option<&Path>) -> RegistrySource {
        if let Some(p) = named {
            return RegistrySource::Named(p.to_path_buf());
        }
        if let Some(p) = std::env::var_os(REGISTRY_ENV).filter(|p| !p.is_empty()) {
            return RegistrySource::Env(PathBuf::from(p));
        }
        let here = Path::new("registry.toml");
        if here.is_file() {
            return RegistrySource::WorkingDir(here.to_path_buf());
        }
        RegistrySource::BuiltIn
    }

    /// Whether the user named this file, so that its libraries may load.
    pub fn may_load_libraries(&self) -> bool {
        matches!(self, RegistrySource::Named(_) | RegistrySource::Env(_))
    }

    /// Reads the file (or parses `builtin`, the compiled-in text).
    pub fn read(&self, builtin: &str) -> Result<RegistryFile> {
        match self {
            RegistrySource::Named(p) | RegistrySource::Env(p) | RegistrySource::WorkingDir(p) => {
                RegistryFile::read(p)
            }
            RegistrySource::BuiltIn => RegistryFile::parse(builtin, "built-in registry"),
        }
    }
}

/// A library that was loaded, and the plugins it added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedLibrary {
    pub path: PathBuf,
    pub plugins: Vec<String>,
}

/// The plugins and presets a program works with.
#[derive(Debug, Clone)]
pub struct Setup {
    pub plugins: PluginRegistry,
    pub file: RegistryFile,
    pub source: RegistrySource,
    pub loaded: Vec<LoadedLibrary>,
    /// Libraries named by a file that may not load them (found in the working directory).
    pub skipped: Vec<PathBuf>,
}

impl Setup {
    /// Reads the registry file of `source` and loads its libraries into `plugins` when the
    /// source allows it; otherwise they are listed in `skipped`.
    pub fn open(
        source: RegistrySource,
        builtin: &str,
        mut plugins: PluginRegistry,
    ) -> Result<Setup> {
        let file = source.read(builtin)?;
        let mut loaded = Vec::new();
        let mut skipped = Vec::new();
        for lib in &file.libraries {
            if source.may_load_libraries() {
                let added = crate::sdk::load_library(&mut plugins, &lib.path, lib.name.as_deref())?;
                loaded.push(LoadedLibrary {
                    path: lib.path.clone(),
                    plugins: added,
                });
            } else {
                skipped.push(lib.path.clone());
            }
        }
        Ok(Setup {
            plugins,
            file,
            source,
            loaded,
            skipped,
        })
    }

    /// Plugins that a program links statically and registers by value (no linker anchor needed):
    /// each is added unless the same plugin (family, name and summary) is already registered
    /// through `inventory`; another plugin under the same name is a duplicate error.
    pub fn with_static_plugins(mut self, infos: &[crate::PluginInfo]) -> Result<Setup> {
        for info in infos {
            let known = self.plugins.entries().iter().any(|e| {
                e.info.family() == info.family()
                    && e.info.name == info.name
                    && e.info.summary == info.summary
            });
            if !known {
                self.plugins.add(*info, Origin::BuiltIn)?;
            }
        }
        Ok(self)
    }
}
