//! One module per command.

pub mod classifier;
pub mod eval;
pub mod list;
pub mod matrix;
pub mod pictures;
pub mod sample;
pub mod train;
