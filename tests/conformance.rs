//! The built-in plugins pass the same conformance checks a third-party plugin crate runs.

mod common;

use common::{device, registry};
use ndm_api::candle_core::DType;
use ndm_api::registry::BuildCtx;
use ndm_api::testing::{check_parameterization, check_schedule, check_transform};
use ndm_api::{Family, PluginSpec};

fn ctx<'a>(
    reg: &'a ndm_api::PluginRegistry,
    vb: ndm_api::candle_nn::VarBuilder<'a>,
    shape: &'a [usize],
) -> BuildCtx<'a> {
    BuildCtx {
        device: device(),
        dtype: DType::F32,
        shape,
        vb,
        registry: reg,
        classes: 0,
    }
}

#[test]
fn every_builtin_schedule_parameterization_and_transform_conforms() {
    let reg = registry();
    let varmap = ndm_api::candle_nn::VarMap::new();
    let vb = ndm_api::vars::seeded_var_builder(&varmap, 0, DType::F32, device());
    let c = ctx(&reg, vb.clone(), &[2]);
    for name in reg.names(Family::Schedule) {
        let s = reg.build_schedule(&PluginSpec::new(name), &c).unwrap();
        check_schedule(s.as_ref()).unwrap_or_else(|e| panic!("schedule.{name}: {e}"));
    }
    let mut continuous = PluginSpec::new("vp-linear");
    continuous.set("form", "\"continuous\"");
    check_schedule(reg.build_schedule(&continuous, &c).unwrap().as_ref()).unwrap();
    for name in reg.names(Family::Param) {
        let p = reg.build_param(&PluginSpec::new(name), &c).unwrap();
        check_parameterization(p.as_ref()).unwrap_or_else(|e| panic!("param.{name}: {e}"));
    }
    for name in reg.names(Family::Transform) {
        // A transform of images only (blur) is checked on small [C, H, W] data.
        let shape: &[usize] = match reg.build_transform(&PluginSpec::new(name), &c) {
            Err(e) if e.to_string().contains("acts on images") => &[2, 6, 5],
            _ => &[2],
        };
        let t = reg
            .build_transform(&PluginSpec::new(name), &ctx(&reg, vb.clone(), shape))
            .unwrap();
        check_transform(t.as_ref(), shape).unwrap_or_else(|e| panic!("transform.{name}: {e}"));
    }
}

#[test]
fn a_broken_schedule_is_caught() {
    #[derive(Debug)]
    struct Increasing;
    impl ndm_api::NoiseSchedule for Increasing {
        fn point(&self, t: f64) -> ndm_api::SchedulePoint {
            // alpha grows with t: the log-SNR increases, which no diffusion can use.
            let th = 1.2 - t;
            ndm_api::SchedulePoint::from_derivatives(th.cos(), th.sin(), th.sin(), -th.cos())
        }
    }
    let e = check_schedule(&Increasing).unwrap_err();
    assert!(
        e.contains("not negative") || e.contains("decreasing"),
        "{e}"
    );
}

#[test]
fn pinned_candle_version_matches_the_lock_file() {
    let lock = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock"),
    )
    .unwrap();
    let entry = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"candle-core\""))
        .unwrap();
    assert!(
        entry.contains(&format!("version = \"{}\"", ndm_api::sdk::CANDLE_VERSION)),
        "{entry}"
    );
}
