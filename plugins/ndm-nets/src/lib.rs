//! Backbones: `backbone.mlp` (2-D data) and `backbone.gaussian-oracle` (the exact denoiser of a
//! Gaussian data set, the reference for testing objectives and solvers).

mod mlp;
mod oracle;

pub use mlp::{Mlp, MlpConfig};
pub use oracle::{GaussianOracle, OracleConfig};
