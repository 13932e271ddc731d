//! The one error type of the library crates. Math inside plugins stays on `candle_core::Result`;
//! everything a user can get wrong (names, fields, files, numbers) becomes an [`NdmError`] whose
//! `Display` is a single line that says what is wrong and what would be right.

use std::path::PathBuf;

/// Errors of the ndm library crates. Each variant renders as one line.
#[derive(Debug, thiserror::Error)]
pub enum NdmError {
    /// A plugin name that no registered plugin of that family has.
    #[error("unknown {family} plugin `{name}`; known: {known}")]
    UnknownPlugin {
        family: String,
        name: String,
        known: String,
    },
    /// A plugin's params table did not fit its config (unknown field, wrong type, bad value).
    #[error("{plugin}: {message}")]
    Config { plugin: String, message: String },
    /// A spec (preset, run spec, registry file) that cannot be used.
    #[error("{0}")]
    Spec(String),
    /// Parts that exist but do not work together (e.g. eps-mse with a learnable transform).
    #[error("incompatible parts: {0}")]
    Incompatible(String),
    /// An argument out of its domain (`--steps 0`, a negative batch size, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A file that could not be read or written.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// A loss or tensor that stopped being finite.
    #[error("{0}")]
    NonFinite(String),
    /// A device name that is unknown, a device this build cannot use, or one that cannot be opened.
    #[error("{0}")]
    Device(String),
    /// A dynamic plugin library that cannot be loaded or does not match this host.
    #[error("plugin library {}: {message}", path.display())]
    Library { path: PathBuf, message: String },
    /// An error raised while building a plugin, with the plugin's `family.name`.
    /// (The inner error is part of this one's message, not its `source()`: an error chain printer
    /// would show it twice.)
    #[error("{plugin}: {error}")]
    Plugin {
        plugin: String,
        error: Box<NdmError>,
    },
    /// An error raised by candle while computing.
    #[error("tensor error: {}", one_line(.0))]
    Candle(#[from] candle_core::Error),
}

/// The result type of the library crates.
pub type Result<T> = std::result::Result<T, NdmError>;

impl NdmError {
    /// A file error with its path.
    pub fn file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        NdmError::File {
            path: path.into(),
            message: message.to_string(),
        }
    }
    /// A bad parameter value, said by the plugin that refuses it. Errors of a plugin's build are
    /// prefixed with its `family.name` by the registry, so the message need not repeat it.
    pub fn invalid_param(message: impl std::fmt::Display) -> Self {
        NdmError::Spec(one_line(&message.to_string()))
    }
    /// Attributes an error to a plugin (`family.name`), unless it already names that plugin.
    pub fn in_plugin(self, plugin: &str) -> Self {
        let named = match &self {
            NdmError::Config { plugin: p, .. } | NdmError::Plugin { plugin: p, .. } => p == plugin,
            other => other.to_string().starts_with(plugin),
        };
        if named {
            self
        } else {
            NdmError::Plugin {
                plugin: plugin.to_string(),
                error: Box::new(self),
            }
        }
    }
    /// A config error attributed to a plugin (`family.name`).
    pub fn config(plugin: impl Into<String>, message: impl std::fmt::Display) -> Self {
        NdmError::Config {
            plugin: plugin.into(),
            message: one_line(&message.to_string()),
        }
    }
}

/// Folds a multi-line message (candle backtraces, toml's caret diagrams) into its first meaningful line.
pub fn one_line(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    let mut lines = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && !l.starts_with('^'));
    let first = lines.next().unwrap_or("").to_string();
    // toml puts "TOML parse error at line 3, column 1" first and the reason last.
    if first.starts_with("TOML parse error") {
        if let Some(reason) = s.lines().map(str::trim).rfind(|l| !l.is_empty()) {
            return format!("{} ({first})", reason.trim_start_matches("= "));
        }
    }
    first
}
