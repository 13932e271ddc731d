//! Plugin registration: every built-in `inventory::submit!`s one [`PluginInfo`]; the runtime
//! [`PluginRegistry`] starts from those and is the only place specs are resolved against, so plugins
//! from shared libraries (which inventory cannot see across a dylib boundary) join the same table.

use crate::{NdmError, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::{de::DeserializeOwned, Serialize};
use std::path::PathBuf;

/// The roles a plugin can fill. Names are namespaced by family: `schedule.cosine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Transform,
    Schedule,
    Param,
    Prior,
    Objective,
    Backbone,
    Solver,
    Dataset,
}

impl Family {
    /// Every family, in listing order.
    pub const ALL: [Family; 8] = [
        Family::Transform,
        Family::Schedule,
        Family::Param,
        Family::Prior,
        Family::Objective,
        Family::Backbone,
        Family::Solver,
        Family::Dataset,
    ];
    /// The family's name in specs and on the command line.
    pub fn key(self) -> &'static str {
        match self {
            Family::Transform => "transform",
            Family::Schedule => "schedule",
            Family::Param => "param",
            Family::Prior => "prior",
            Family::Objective => "objective",
            Family::Backbone => "backbone",
            Family::Solver => "solver",
            Family::Dataset => "dataset",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.key())
    }
}

/// What a plugin's build function gets: where its tensors live, the shape it works on, a
/// `VarBuilder` already under its role's prefix (`backbone.`, `transform.`, ...) for trainable
/// weights (drawn from the run's seeded generator), and the registry to build nested plugins
/// (a learned transform builds its backbone by name).
pub struct BuildCtx<'a> {
    pub device: &'a Device,
    pub dtype: DType,
    /// The shape (without batch) the plugin works on: data shape for transforms and datasets'
    /// consumers, latent shape for backbones and priors.
    pub shape: &'a [usize],
    pub vb: VarBuilder<'a>,
    pub registry: &'a PluginRegistry,
    /// The number of classes of a conditional model (its networks embed a class, plus a "no class"
    /// entry); 0 for an unconditional model.
    pub classes: usize,
}

impl<'a> BuildCtx<'a> {
    /// The same context for a part under `prefix` (its weights under `prefix.`), working on `shape`.
    pub fn pp(&self, prefix: &str, shape: &'a [usize]) -> BuildCtx<'a> {
        BuildCtx {
            device: self.device,
            dtype: self.dtype,
            shape,
            vb: self.vb.pp(prefix),
            registry: self.registry,
            classes: self.classes,
        }
    }

    /// A context for plugins without weights (solvers, datasets): no shape, a `VarBuilder` that
    /// only hands out zeros.
    pub fn without_weights(device: &'a Device, registry: &'a PluginRegistry) -> Self {
        BuildCtx {
            device,
            dtype: DType::F32,
            shape: &[],
            vb: VarBuilder::zeros(DType::F32, device),
            registry,
            classes: 0,
        }
    }
}

impl std::fmt::Debug for BuildCtx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildCtx")
            .field("device", self.device)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .finish()
    }
}

/// The boxed object each family builds (used by [`crate::register_plugin!`]).
pub mod built {
    pub type Transform = Box<dyn crate::Transform>;
    pub type Schedule = Box<dyn crate::NoiseSchedule>;
    pub type Param = Box<dyn crate::Parameterization>;
    pub type Prior = Box<dyn crate::Prior>;
    pub type Objective = Box<dyn crate::Objective>;
    pub type Backbone = Box<dyn crate::Backbone>;
    pub type Solver = Box<dyn crate::Solver>;
    pub type Dataset = Box<dyn crate::Dataset>;
}

/// A params table.
pub type Params = toml::Table;

/// The config of a plugin that has no parameters: it accepts only an empty table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// A plugin's build function, by family.
#[derive(Clone, Copy)]
pub enum Builder {
    Transform(fn(&Params, &BuildCtx) -> Result<built::Transform>),
    Schedule(fn(&Params, &BuildCtx) -> Result<built::Schedule>),
    Param(fn(&Params, &BuildCtx) -> Result<built::Param>),
    Prior(fn(&Params, &BuildCtx) -> Result<built::Prior>),
    Objective(fn(&Params, &BuildCtx) -> Result<built::Objective>),
    Backbone(fn(&Params, &BuildCtx) -> Result<built::Backbone>),
    Solver(fn(&Params, &BuildCtx) -> Result<built::Solver>),
    Dataset(fn(&Params, &BuildCtx) -> Result<built::Dataset>),
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Builder({})", self.family())
    }
}

impl Builder {
    /// The family this builder fills.
    pub fn family(&self) -> Family {
        match self {
            Builder::Transform(_) => Family::Transform,
            Builder::Schedule(_) => Family::Schedule,
            Builder::Param(_) => Family::Param,
            Builder::Prior(_) => Family::Prior,
            Builder::Objective(_) => Family::Objective,
            Builder::Backbone(_) => Family::Backbone,
            Builder::Solver(_) => Family::Solver,
            Builder::Dataset(_) => Family::Dataset,
        }
    }
}

/// One plugin: its name within its family, a one-line summary, its default params and how to
/// resolve (validate and fill in defaults) and build it.
#[derive(Clone, Copy)]
pub struct PluginInfo {
    pub name: &'static str,
    pub summary: &'static str,
    /// The module that declared it (`module_path!()`; its first segment is the crate).
    pub module: &'static str,
    /// The config's `Default`, as a table (the paper's values).
    pub defaults: fn() -> Result<Params>,
    /// Parses a params table into the config (rejecting unknown fields) and returns it with every
    /// default filled in: what a checkpoint records.
    pub resolve: fn(&Params) -> Result<Params>,
    pub builder: Builder,
}

impl PluginInfo {
    pub fn family(&self) -> Family {
        self.builder.family()
    }
    /// `family.name`.
    pub fn full_name(&self) -> String {
        format!("{}.{}", self.family().key(), self.name)
    }
}

impl std::fmt::Debug for PluginInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginInfo")
            .field("name", &self.full_name())
            .field("summary", &self.summary)
            .field("module", &self.module)
            .finish()
    }
}

inventory::collect!(PluginInfo);

/// Parses a params table into a plugin config, with errors that name the plugin.
pub fn parse_config<C: DeserializeOwned>(plugin: &str, params: &Params) -> Result<C> {
    C::deserialize(toml::Value::Table(params.clone())).map_err(|e| NdmError::config(plugin, e))
}

/// A config as a params table.
pub fn config_table<C: Serialize>(plugin: &str, cfg: &C) -> Result<Params> {
    toml::Table::try_from(cfg).map_err(|e| NdmError::config(plugin, e))
}

/// `C::default()` as a table (for [`PluginInfo::defaults`]); a config that TOML cannot represent
/// is an error naming the type.
pub fn defaults_of<C: Serialize + Default>() -> Result<Params> {
    config_table(std::any::type_name::<C>(), &C::default())
}

/// Where a registered plugin came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    BuiltIn,
    Library(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::BuiltIn => f.write_str("built-in"),
            Origin::Library(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A registered plugin and its origin.
#[derive(Debug, Clone)]
pub struct Entry {
    pub info: PluginInfo,
    pub origin: Origin,
}

/// The runtime table of plugins that specs are resolved against.
#[derive(Debug, Clone, Default)]
pub struct PluginRegistry {
    entries: Vec<Entry>,
}

impl PluginRegistry {
    /// Every plugin linked into this binary. A plugin crate that is not referenced from the binary
    /// is not linked and its registrations are absent: link `ndm-plugins-all`.
    pub fn builtin() -> Self {
        let mut entries: Vec<Entry> = inventory::iter::<PluginInfo>
            .into_iter()
            .map(|info| Entry {
                info: *info,
                origin: Origin::BuiltIn,
            })
            .collect();
        entries.sort_by(|a, b| (a.info.family(), a.info.name).cmp(&(b.info.family(), b.info.name)));
        PluginRegistry { entries }
    }

    /// Adds a plugin; a name already taken within its family is an error naming both origins.
    pub fn add(&mut self, info: PluginInfo, origin: Origin) -> Result<()> {
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| e.info.family() == info.family() && e.info.name == info.name)
        {
            return Err(NdmError::Spec(format!(
                "plugin {} from {origin} duplicates the one from {}",
                info.full_name(),
                e.origin
            )));
        }
        self.entries.push(Entry { info, origin });
        Ok(())
    }

    /// All entries, by family then name.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The names of a family's plugins.
    pub fn names(&self, family: Family) -> Vec<&'static str> {
        self.entries
            .iter()
            .filter(|e| e.info.family() == family)
            .map(|e| e.info.name)
            .collect()
    }

    /// A plugin by family and name (a `family.` prefix on the name is accepted); an unknown name is
    /// an error that lists the known ones.
    pub fn get(&self, family: Family, name: &str) -> Result<&PluginInfo> {
        let short = name
            .strip_prefix(family.key())
            .and_then(|r| r.strip_prefix('.'))
            .unwrap_or(name);
        self.entries
            .iter()
            .find(|e| e.info.family() == family && e.info.name == short)
            .map(|e| &e.info)
            .ok_or_else(|| NdmError::UnknownPlugin {
                family: family.key().into(),
                name: name.into(),
                known: self.names(family).join(", "),
            })
    }
}

/// A [`PluginInfo`] for a config type and a build function (a constant expression):
///
/// ```ignore
/// pub const COSINE: PluginInfo = ndm_api::plugin_info!(Schedule, "cosine",
///     "Nichol & Dhariwal's cosine schedule", CosineConfig,
///     |cfg: CosineConfig, _ctx: &BuildCtx| Ok(Box::new(Cosine::new(cfg)?)));
/// ```
/// The config type must be `Serialize + DeserializeOwned + Default` with
/// `#[serde(deny_unknown_fields, default)]`; the closure may not capture anything.
#[macro_export]
macro_rules! plugin_info {
    ($family:ident, $name:literal, $summary:literal, $cfg:ty, $build:expr) => {
        $crate::registry::PluginInfo {
            name: $name,
            summary: $summary,
            module: module_path!(),
            defaults: $crate::registry::defaults_of::<$cfg>,
            resolve: {
                fn resolve(
                    p: &$crate::registry::Params,
                ) -> $crate::Result<$crate::registry::Params> {
                    let full = concat!(stringify!($family), ".", $name).to_lowercase();
                    let cfg: $cfg = $crate::registry::parse_config(&full, p)?;
                    $crate::registry::config_table(&full, &cfg)
                }
                resolve
            },
            builder: $crate::registry::Builder::$family({
                fn build(
                    p: &$crate::registry::Params,
                    ctx: &$crate::registry::BuildCtx,
                ) -> $crate::Result<$crate::registry::built::$family> {
                    let full = concat!(stringify!($family), ".", $name).to_lowercase();
                    let cfg: $cfg = $crate::registry::parse_config(&full, p)?;
                    let f: fn(
                        $cfg,
                        &$crate::registry::BuildCtx,
                    ) -> $crate::Result<$crate::registry::built::$family> = $build;
                    f(cfg, ctx)
                }
                build
            }),
        }
    };
}

/// Registers a plugin linked into the binary (with `inventory`); same arguments as [`plugin_info!`].
#[macro_export]
macro_rules! register_plugin {
    ($family:ident, $name:literal, $summary:literal, $cfg:ty, $build:expr) => {
        $crate::inventory::submit! {
            $crate::plugin_info!($family, $name, $summary, $cfg, $build)
        }
    };
}
