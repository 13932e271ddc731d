//! Noise schedules: `schedule.vp-linear` (DDPM's linear betas, discrete or continuous form),
//! `schedule.cosine` (Nichol & Dhariwal's cosine, truncated in log-SNR), the score-SDE processes
//! `schedule.ve` and `schedule.sub-vp`, flow matching's `schedule.fm-ot`, and VDM's learned
//! `schedule.vdm`.

mod cosine;
mod fm_ot;
mod score_sde;
mod vdm;
mod vp_linear;

pub use cosine::{Cosine, CosineConfig};
pub use fm_ot::{FmOt, FmOtConfig};
pub use score_sde::{SubVp, SubVpConfig, Ve, VeConfig};
pub use vdm::{point_from_gamma, Vdm, VdmConfig};
pub use vp_linear::{VpForm, VpLinear, VpLinearConfig};
