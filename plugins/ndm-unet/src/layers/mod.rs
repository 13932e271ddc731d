//! Layers over the dispatching ops, built from a `candle_nn::VarBuilder`.

mod conv;
mod group_norm;

pub use conv::Conv2d;
pub use group_norm::GroupNorm;
