//! Hyper-parameters of the reference U-Net.

/// Shape of a [`super::UNet`]. Level `i` has `base_channels * channel_mults[i]` channels; every
/// level but the last halves the resolution, so H and W must be divisible by
/// `2^(levels - 1)`. `groups` must divide every channel count (including concatenations).
#[derive(Debug, Clone, PartialEq)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub base_channels: usize,
    pub channel_mults: Vec<usize>,
    pub groups: usize,
    pub time_embed_dim: usize,
}

impl Default for UNetConfig {
    /// The reference network: channels 32/64 over 2 levels, 1 input channel.
    fn default() -> Self {
        Self {
            in_channels: 1,
            out_channels: 1,
            base_channels: 32,
            channel_mults: vec![1, 2],
            groups: 8,
            time_embed_dim: 128,
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

    pub(crate) fn validate(&self) -> candle_core::Result<()> {
        if self.channel_mults.is_empty() || self.base_channels == 0 || self.time_embed_dim == 0 {
            candle_core::bail!("UNetConfig: need at least one level and non-zero widths: {self:?}");
        }
        if self.base_channels % 2 != 0 {
            candle_core::bail!(
                "UNetConfig: base_channels (sinusoidal embedding size) must be even"
            );
        }
        Ok(())
    }
}
