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

#[test]
fn bad_config_is_refused() {
    let e = EdmVp::new(EdmVpConfig {
        sigma_min: 5.0,
        sigma_max: 1.0,
        rho: 7.0,
    })
    .unwrap_err();
    assert!(e.to_string().contains("schedule.edm-vp"), "{e}");
}
