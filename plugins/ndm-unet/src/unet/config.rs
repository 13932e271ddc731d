//! Hyper-parameters of the U-Net: the `backbone.unet` config.

use serde::{Deserialize, Serialize};

/// Shape of a [`super::UNet`] apart from its input and output channels, which are the data's.
///
/// Level `i` has `base_channels * channel_mults[i]` channels and one residual block; every level
/// but the last halves the resolution, so H and W must be divisible by `2^(levels - 1)`. `groups`
/// must divide every level's channel count (the up path's concatenations are sums of those). The
/// defaults fit 28x28 images: 32/64 channels over 2 levels, 0.41 M parameters for 1 channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UNetConfig {
    /// Channels of the first level; also the size of the sinusoidal time embedding, so even.
    pub base_channels: usize,
    /// Channel multiplier of each level (at least one level, none zero).
    pub channel_mults: Vec<usize>,
    /// GroupNorm groups; must divide every level's channel count.
    pub groups: usize,
    /// Width of the time embedding (the MLP after the sinusoids) that every residual block gets.
    pub time_embed_dim: usize,
    /// Highest frequency of the sinusoidal time embedding in radians per unit time: the sinusoids
    /// are of `time_scale * t` for `t` in [0, 1]. 1000 follows DDPM, whose times are integers.
    pub time_scale: f64,
}

impl Default for UNetConfig {
    fn default() -> Self {
        Self {
            base_channels: 32,
            channel_mults: vec![1, 2],
            groups: 8,
            time_embed_dim: 128,
            time_scale: 1000.0,
        }
    }
}

impl UNetConfig {
    /// Channel count of each level.
    pub fn channels(&self) -> Vec<usize> {
        self.channel_mults
            .iter()
            .map(|m| m * self.base_channels)
            .collect()
    }

    /// The number of levels.
    pub fn levels(&self) -> usize {
        self.channel_mults.len()
    }

    /// Checks the config on its own. The message names the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.channel_mults.is_empty() {
            return Err("channel_mults is empty: the U-Net needs at least one level".into());
        }
        if self.levels() > 16 {
            return Err(format!(
                "channel_mults has {} levels: at most 16 (each one halves H and W)",
                self.levels()
            ));
        }
        if let Some(i) = self.channel_mults.iter().position(|&m| m == 0) {
            return Err(format!(
                "channel_mults[{i}] is 0: every level needs channels"
            ));
        }
        if self.base_channels == 0 || !self.base_channels.is_multiple_of(2) {
            return Err(format!(
                "base_channels must be even and positive (it is also the size of the sinusoidal \
                 time embedding), got {}",
                self.base_channels
            ));
        }
        if self.time_embed_dim == 0 {
            return Err("time_embed_dim must be positive".into());
        }
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return Err(format!(
                "time_scale must be positive and finite, got {}",
                self.time_scale
            ));
        }
        if self.groups == 0 {
            return Err("groups must be positive".into());
        }
        for (i, c) in self.channels().into_iter().enumerate() {
            if c % self.groups != 0 {
                return Err(format!(
                    "groups = {} does not divide the {c} channels of level {i} \
                     (base_channels {} x channel_mults[{i}] {})",
                    self.groups, self.base_channels, self.channel_mults[i]
                ));
            }
        }
        Ok(())
    }

    /// The factor H and W must be multiples of: `2^(levels - 1)`.
    pub fn size_multiple(&self) -> usize {
        1 << self.levels().saturating_sub(1)
    }

    /// Checks that an `h x w` image fits the levels.
    pub fn check_size(&self, h: usize, w: usize) -> Result<(), String> {
        let f = self.size_multiple();
        if h == 0 || w == 0 || !h.is_multiple_of(f) || !w.is_multiple_of(f) {
            return Err(format!(
                "H and W ({h}x{w}) must be positive and divisible by {f} = 2^(levels - 1) for the \
                 {} levels of channel_mults",
                self.levels()
            ));
        }
        Ok(())
    }
}
