//! Hyper-parameters of the U-Net: the `backbone.unet` config.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

/// What the sinusoidal time embedding is computed from: `"t"` or `"log-snr"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeInput {
    /// Sinusoids of `time_scale * t`, `t` in [0, 1] (DDPM, with `time_scale` 1000).
    #[default]
    T,
    /// Sinusoids of `time_scale * u` with `u = (LOG_SNR_MAX - lambda) / LOG_SNR_SPAN`: the log-SNR
    /// `lambda` of `NetInput.log_snr` mapped so that [-20, 20] becomes [1, 0] ([`LOG_SNR_MAX`],
    /// [`LOG_SNR_SPAN`]). `u` grows with the noise like `t`, so `time_scale` keeps its meaning.
    LogSnr,
}

impl TimeInput {
    /// The name in configs.
    pub fn name(self) -> &'static str {
        match self {
            TimeInput::T => "t",
            TimeInput::LogSnr => "log-snr",
        }
    }
}

impl Serialize for TimeInput {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for TimeInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = String::deserialize(d).map_err(|e| {
            de::Error::custom(format!("time_embedding must be \"t\" or \"log-snr\": {e}"))
        })?;
        match v.as_str() {
            "t" => Ok(TimeInput::T),
            "log-snr" => Ok(TimeInput::LogSnr),
            _ => Err(de::Error::custom(format!(
                "time_embedding must be \"t\" or \"log-snr\", got \"{v}\""
            ))),
        }
    }
}

/// The log-SNR that [`TimeInput::LogSnr`] maps to `u = 0`.
pub const LOG_SNR_MAX: f64 = 20.0;
/// The log-SNR range that [`TimeInput::LogSnr`] maps onto a unit of `u`: [-20, 20] -> [1, 0].
/// It covers DDPM's linear schedule (about 9.2 to -10.1) and the cosine schedule (about 8.8 down
/// to its `log_snr_min`, -20 by default); values outside it are embedded all the same.
pub const LOG_SNR_SPAN: f64 = 40.0;

/// Where the self-attention blocks go: `"lowest"` (the lowest resolution the network reaches,
/// whatever the image size) or a list of resolutions (`[14]`, `[16, 8]`, `[]` for none).
///
/// The resolution of level `i` is `min(H, W) / 2^i` (the side of a square image at that level).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AttentionResolutions {
    /// The lowest resolution (the last level and the middle).
    #[default]
    Lowest,
    /// These resolutions; each must be reached by some level.
    At(Vec<usize>),
}

impl Serialize for AttentionResolutions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AttentionResolutions::Lowest => s.serialize_str("lowest"),
            AttentionResolutions::At(v) => {
                let mut seq = s.serialize_seq(Some(v.len()))?;
                for r in v {
                    seq.serialize_element(r)?;
                }
                seq.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for AttentionResolutions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AttentionResolutions;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "attention_resolutions = \"lowest\" or a list of resolutions such as [14]",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == "lowest" {
                    Ok(AttentionResolutions::Lowest)
                } else {
                    Err(E::custom(format!(
                        "attention_resolutions must be \"lowest\" or a list of resolutions such \
                         as [14], got \"{v}\""
                    )))
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(r) = a.next_element::<usize>()? {
                    v.push(r);
                }
                Ok(AttentionResolutions::At(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// Shape of a [`super::UNet`] apart from its input and output channels, which are the data's.
///
/// The layout is DDPM's (Ho et al. 2020): level `i` has `base_channels * channel_mults[i]`
/// channels; on the way down it runs `blocks_per_level` residual blocks (each followed by
/// self-attention where the level's resolution is in `attention_resolutions`) and, but for the
/// last level, a stride-2 conv that halves H and W; the middle is residual block, attention (when
/// the lowest resolution has attention), residual block; on the way up each level runs
/// `blocks_per_level + 1` blocks, each taking one saved activation (the input conv's, every down
/// block's and every downsampling's output) concatenated to its input, then a nearest 2x
/// upsampling and a conv. H and W must be divisible by `2^(levels - 1)`. The output conv starts
/// at zero (Nichol & Dhariwal 2021), so the untrained network outputs 0.
///
/// The defaults fit 28x28 (MNIST) and 32x32 (CIFAR-10) images alike: 32/64/64 channels over 3
/// levels (28 -> 14 -> 7, 32 -> 16 -> 8), one block per level, 4-head attention at the lowest
/// resolution; 1.11 M parameters (1,112,801 for 1 channel, 1,113,955 for 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UNetConfig {
    /// Channels of the first level; also the size of the sinusoidal time embedding, so even.
    pub base_channels: usize,
    /// Channel multiplier of each level (at least one level, none zero).
    pub channel_mults: Vec<usize>,
    /// Residual blocks per level on the way down (the way up has one more per level); at least 1.
    pub blocks_per_level: usize,
    /// GroupNorm groups; must divide every level's channel count.
    pub groups: usize,
    /// Width of the time embedding (the MLP after the sinusoids) that every residual block gets.
    pub time_embed_dim: usize,
    /// What the sinusoids embed: `"t"` (of `time_scale * t`) or `"log-snr"` (of `time_scale * u`,
    /// `u = (20 - log_snr) / 40`, see [`TimeInput::LogSnr`]).
    pub time_embedding: TimeInput,
    /// Highest frequency of the sinusoidal time embedding in radians per unit of its input (`t`
    /// in [0, 1], or `u` for `"log-snr"`). 1000 follows DDPM, whose times are integers.
    pub time_scale: f64,
    /// Resolutions with self-attention after every residual block: `"lowest"` or a list.
    pub attention_resolutions: AttentionResolutions,
    /// Attention heads; must divide the channels of every level with attention.
    pub attention_heads: usize,
    /// Dropout probability between the two convs of every residual block, in [0, 1); applied only
    /// by [`super::UNet::forward_train`]. `backbone.unet` refuses values above 0: the `Backbone`
    /// trait cannot tell training from sampling.
    pub dropout: f64,
}

impl Default for UNetConfig {
    fn default() -> Self {
        Self {
            base_channels: 32,
            channel_mults: vec![1, 2, 2],
            blocks_per_level: 1,
            groups: 8,
            time_embed_dim: 128,
            time_embedding: TimeInput::T,
            time_scale: 1000.0,
            attention_resolutions: AttentionResolutions::Lowest,
            attention_heads: 4,
            dropout: 0.0,
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

    /// Checks the config on its own (what needs the image size is [`Self::check_image`]). The
    /// message names the field at fault.
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
        if self.blocks_per_level == 0 {
            return Err("blocks_per_level must be at least 1, got 0".into());
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
        if self.attention_heads == 0 {
            return Err("attention_heads must be at least 1, got 0".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", self.dropout));
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

    /// The resolution of each level for `h x w` images: `min(h, w) / 2^i`.
    pub fn resolutions(&self, h: usize, w: usize) -> Vec<usize> {
        (0..self.levels()).map(|i| h.min(w) >> i).collect()
    }

    /// Which levels have attention for `h x w` images; errors (naming the field) when the image
    /// does not fit the levels, a listed resolution is never reached, or `attention_heads` does
    /// not divide the channels of a level with attention.
    pub fn attention_levels(&self, h: usize, w: usize) -> Result<Vec<bool>, String> {
        self.check_size(h, w)?;
        let res = self.resolutions(h, w);
        let levels = match &self.attention_resolutions {
            AttentionResolutions::Lowest => {
                let mut v = vec![false; res.len()];
                if let Some(last) = v.last_mut() {
                    *last = true;
                }
                v
            }
            AttentionResolutions::At(list) => {
                if let Some(r) = list.iter().find(|r| !res.contains(r)) {
                    let reached: Vec<String> = res.iter().map(|r| r.to_string()).collect();
                    return Err(format!(
                        "attention_resolutions contains {r}, which the network never reaches: \
                         for {h}x{w} images its {} levels have resolutions {} (min(H, W) / 2^level)",
                        res.len(),
                        reached.join(", ")
                    ));
                }
                res.iter().map(|r| list.contains(r)).collect()
            }
        };
        let ch = self.channels();
        for (i, _) in levels.iter().enumerate().filter(|(_, &a)| a) {
            if !ch[i].is_multiple_of(self.attention_heads) {
                return Err(format!(
                    "attention_heads = {} does not divide the {} channels of level {i} \
                     (resolution {}), which has attention",
                    self.attention_heads, ch[i], res[i]
                ));
            }
        }
        Ok(levels)
    }

    /// Everything [`Self::validate`] checks, and that `h x w` images fit the levels and the
    /// attention settings.
    pub fn check_image(&self, h: usize, w: usize) -> Result<(), String> {
        self.validate()?;
        self.attention_levels(h, w).map(|_| ())
    }
}
