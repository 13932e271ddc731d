//! `backbone.unet` as the registry builds it: defaults, shapes, refusals.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use ndm_api::registry::BuildCtx;
use ndm_api::vars::seeded_var_builder;
use ndm_api::{Backbone, Family, NetInput, PluginRegistry, PluginSpec, Rng};
use ndm_unet::unet::UNetConfig;
use ndm_unet::KernelBackend;

/// Builds `spec` for `shape` with seeded weights under `backbone.`; returns the net or the error.
fn build(spec: &PluginSpec, shape: &[usize]) -> (VarMap, ndm_api::Result<Box<dyn Backbone>>) {
    // Referencing the crate links it, and with it its registration.
    assert_eq!(ndm_unet::plugin::NAME, "backbone.unet");
    let reg = PluginRegistry::builtin();
    let vm = VarMap::new();
    let ctx = BuildCtx {
        device: &Device::Cpu,
        dtype: DType::F32,
        shape,
        vb: seeded_var_builder(&vm, 3, DType::F32, &Device::Cpu).pp("backbone"),
        registry: &reg,
    };
    let net = reg.build_backbone(spec, &ctx);
    (vm, net)
}

fn spec(sets: &[(&str, &str)]) -> PluginSpec {
    let mut s = PluginSpec::new("unet");
    for (k, v) in sets {
        s.set(k, v);
    }
    s
}

fn refusal(sets: &[(&str, &str)], shape: &[usize]) -> String {
    match build(&spec(sets), shape).1 {
        Ok(_) => panic!("{sets:?} on {shape:?} was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn builds_from_the_registry_with_defaults_and_keeps_the_shape() {
    let (vm, net) = build(&spec(&[]), &[1, 8, 8]);
    let net = net.unwrap();
    let n: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
    assert_eq!(n, 410_721, "the default network on 1 channel");
    assert!(vm
        .data()
        .lock()
        .unwrap()
        .contains_key("backbone.conv_in.weight"));
    let mut rng = Rng::new(1);
    let z = rng
        .normal_tensor(&[3, 1, 8, 8], DType::F32, &Device::Cpu)
        .unwrap();
    let t = rng
        .uniform_tensor(&[3], 0.0, 1.0, DType::F32, &Device::Cpu)
        .unwrap();
    let ones = Tensor::ones(3, DType::F32, &Device::Cpu).unwrap();
    let y = net
        .forward(&NetInput {
            z: &z,
            t: &t,
            alpha: &ones,
            sigma: &ones,
            log_snr: &ones,
        })
        .unwrap();
    assert_eq!(y.dims(), &[3, 1, 8, 8]);
    assert!(!net.predicts_data());
}

#[test]
fn resolved_spec_records_every_default() {
    let reg = PluginRegistry::builtin();
    let resolved = spec(&[("groups", "4")])
        .resolve(Family::Backbone, &reg)
        .unwrap();
    let back: UNetConfig =
        ndm_api::registry::parse_config("backbone.unet", &resolved.params).unwrap();
    assert_eq!(
        back,
        UNetConfig {
            groups: 4,
            ..UNetConfig::default()
        }
    );
    assert_eq!(back.time_scale, 1000.0);
}

#[test]
fn several_channels_and_levels() {
    let sets = [
        ("base_channels", "8"),
        ("channel_mults", "[1, 2, 2]"),
        ("groups", "4"),
        ("time_embed_dim", "16"),
    ];
    let (_, net) = build(&spec(&sets), &[3, 8, 12]);
    let net = net.unwrap();
    let z = Tensor::zeros((2, 3, 8, 12), DType::F32, &Device::Cpu).unwrap();
    let t = Tensor::new(&[0.1f32, 0.9], &Device::Cpu).unwrap();
    let y = net
        .forward(&NetInput {
            z: &z,
            t: &t,
            alpha: &t,
            sigma: &t,
            log_snr: &t,
        })
        .unwrap();
    assert_eq!(y.dims(), &[2, 3, 8, 12]);
}

#[test]
fn refuses_data_that_is_not_an_image() {
    let e = refusal(&[], &[2]);
    assert!(
        e.contains("backbone.unet needs image data [C, H, W], got [2]"),
        "{e}"
    );
    let e = refusal(&[], &[1, 28, 28, 1]);
    assert!(e.contains("needs image data [C, H, W]"), "{e}");
}

#[test]
fn refuses_groups_that_do_not_divide_the_channels() {
    let e = refusal(&[("groups", "3")], &[1, 8, 8]);
    assert!(
        e.contains("backbone.unet") && e.contains("groups = 3 does not divide"),
        "{e}"
    );
    // 12 x 1 is divisible by 8? No; 12 x 2 = 24 is: the first level is at fault.
    let e = refusal(&[("base_channels", "12")], &[1, 8, 8]);
    assert!(e.contains("level 0"), "{e}");
}

#[test]
fn refuses_sizes_the_levels_cannot_halve() {
    let e = refusal(&[], &[1, 7, 8]);
    assert!(
        e.contains("backbone.unet") && e.contains("divisible by 2") && e.contains("channel_mults"),
        "{e}"
    );
    // Three levels halve twice: 28 will do, 30 will not.
    let e = refusal(&[("channel_mults", "[1, 1, 2]")], &[1, 28, 30]);
    assert!(e.contains("divisible by 4"), "{e}");
}

#[test]
fn refuses_empty_channel_mults() {
    let e = refusal(&[("channel_mults", "[]")], &[1, 8, 8]);
    assert!(
        e.contains("backbone.unet") && e.contains("channel_mults is empty"),
        "{e}"
    );
}

#[test]
fn refuses_an_odd_embedding_size() {
    // 9 channels in 3 groups would do; the sinusoidal embedding of size 9 would not.
    let e = refusal(&[("base_channels", "9"), ("groups", "3")], &[1, 8, 8]);
    assert!(
        e.contains("backbone.unet") && e.contains("base_channels") && e.contains("even"),
        "{e}"
    );
}

#[test]
fn refuses_unknown_fields() {
    let e = refusal(&[("attention", "true")], &[1, 8, 8]);
    assert!(
        e.contains("backbone.unet") && e.contains("attention"),
        "{e}"
    );
}

#[test]
fn the_backend_follows_the_device() {
    assert_eq!(
        KernelBackend::for_device(&Device::Cpu),
        KernelBackend::Fused
    );
    let reg = PluginRegistry::builtin();
    let vm = VarMap::new();
    let ctx = BuildCtx {
        device: &Device::Cpu,
        dtype: DType::F32,
        shape: &[1, 8, 8],
        vb: seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu),
        registry: &reg,
    };
    let net = ndm_unet::plugin::build_unet(UNetConfig::default(), &ctx).unwrap();
    assert_eq!(net.backend(), KernelBackend::Fused);
    assert_eq!(net.channels(), (1, 1));
}
