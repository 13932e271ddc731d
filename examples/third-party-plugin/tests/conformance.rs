//! The plugin passes ndm's conformance checks.

use third_party_plugin::{EdmVp, EdmVpConfig};

#[test]
fn edm_vp_conforms() {
    ndm_api::testing::check_schedule(&EdmVp::new(EdmVpConfig::default()).unwrap()).unwrap();
    let steep = EdmVpConfig {
        rho: 3.0,
        ..EdmVpConfig::default()
    };
    ndm_api::testing::check_schedule(&EdmVp::new(steep).unwrap()).unwrap();
}

/// Built through a registry, as a host builds it: the error names the plugin although the plugin's
/// code does not, and unknown fields are refused.
#[test]
fn bad_config_is_refused_naming_the_plugin() {
    use ndm_api::candle_core::Device;
    use ndm_api::registry::{BuildCtx, Origin, PluginRegistry};
    use ndm_api::PluginSpec;
    let mut reg = PluginRegistry::default();
    reg.add(third_party_plugin::EDM_VP, Origin::BuiltIn)
        .unwrap();
    let ctx = BuildCtx::without_weights(&Device::Cpu, &reg);
    let mut spec = PluginSpec::new("edm-vp");
    spec.set("sigma_min", "5.0");
    spec.set("sigma_max", "1.0");
    let e = reg.build_schedule(&spec, &ctx).unwrap_err().to_string();
    assert_eq!(
        e,
        "schedule.edm-vp: need 0 < sigma_min < sigma_max and rho > 0"
    );
    let mut typo = PluginSpec::new("edm-vp");
    typo.set("sigma_mni", "0.1");
    let e = reg.build_schedule(&typo, &ctx).unwrap_err().to_string();
    assert!(
        e.contains("schedule.edm-vp") && e.contains("sigma_mni"),
        "{e}"
    );
}
