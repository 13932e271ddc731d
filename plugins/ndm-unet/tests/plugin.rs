//! `backbone.unet` as the registry builds it: defaults, shapes, refusals.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use ndm_api::registry::BuildCtx;
use ndm_api::vars::seeded_var_builder;
use ndm_api::{Backbone, Family, NetInput, PluginRegistry, PluginSpec, Rng};
use ndm_unet::unet::{AttentionResolutions, TimeInput, UNetConfig};
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
        classes: 0,
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

/// The error of building `sets` on `shape`; every refusal is one line.
fn refusal(sets: &[(&str, &str)], shape: &[usize]) -> String {
    match build(&spec(sets), shape).1 {
        Ok(_) => panic!("{sets:?} on {shape:?} was accepted"),
        Err(e) => {
            let e = e.to_string();
            assert!(!e.contains('\n'), "not one line: {e}");
            e
        }
    }
}

#[test]
fn builds_from_the_registry_with_defaults_and_keeps_the_shape() {
    let (vm, net) = build(&spec(&[]), &[1, 8, 8]);
    let net = net.unwrap();
    let n: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
    assert_eq!(n, 1_112_801, "the default network on 1 channel");
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
            class: None,
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
            class: None,
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
    let e = refusal(&[], &[1, 14, 16]);
    assert!(
        e.contains("backbone.unet") && e.contains("divisible by 4") && e.contains("channel_mults"),
        "{e}"
    );
    let e = refusal(&[("channel_mults", "[1, 2]")], &[1, 7, 8]);
    assert!(e.contains("divisible by 2"), "{e}");
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
fn the_default_builds_for_mnist_and_cifar_shapes() {
    for (shape, params) in [([1, 28, 28], 1_112_801), ([3, 32, 32], 1_113_955)] {
        let (vm, net) = build(&spec(&[]), &shape);
        let net = net.unwrap_or_else(|e| panic!("{shape:?}: {e}"));
        let n: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(n, params, "{shape:?}");
        let z = Tensor::zeros((1, shape[0], shape[1], shape[2]), DType::F32, &Device::Cpu).unwrap();
        let t = Tensor::new(&[0.5f32], &Device::Cpu).unwrap();
        let y = net
            .forward(&NetInput {
                z: &z,
                t: &t,
                alpha: &t,
                sigma: &t,
                log_snr: &t,
                class: None,
            })
            .unwrap();
        assert_eq!(y.dims(), z.dims());
    }
}

#[test]
fn attention_and_time_embedding_settings_resolve_and_build() {
    let reg = PluginRegistry::builtin();
    let sets = [
        ("attention_resolutions", "[14, 7]"),
        ("attention_heads", "2"),
        ("time_embedding", "log-snr"),
        ("blocks_per_level", "2"),
    ];
    let resolved = spec(&sets).resolve(Family::Backbone, &reg).unwrap();
    let cfg: UNetConfig =
        ndm_api::registry::parse_config("backbone.unet", &resolved.params).unwrap();
    assert_eq!(
        cfg.attention_resolutions,
        AttentionResolutions::At(vec![14, 7])
    );
    assert_eq!(cfg.time_embedding, TimeInput::LogSnr);
    let (vm, net) = build(&spec(&sets), &[1, 28, 28]);
    net.unwrap();
    let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
    assert!(names.iter().any(|n| n.starts_with("backbone.down1.attn1.")));
    assert!(names.iter().any(|n| n.starts_with("backbone.mid.attn0.")));
    // "lowest" is the default and is written out as such.
    let resolved = spec(&[]).resolve(Family::Backbone, &reg).unwrap();
    assert_eq!(
        resolved.params["attention_resolutions"].as_str(),
        Some("lowest")
    );
    assert_eq!(resolved.params["time_embedding"].as_str(), Some("t"));
}

#[test]
fn log_snr_embedding_reads_net_input_log_snr() {
    let (vm, net) = build(&spec(&[("time_embedding", "log-snr")]), &[1, 8, 8]);
    let net = net.unwrap();
    // Give the zero-initialised output conv weights, so the output depends on the input.
    for (name, var) in ndm_api::vars::sorted_vars(&vm) {
        if name.starts_with("backbone.conv_out.") {
            let mut rng = Rng::derived(1, &name);
            var.set(
                &rng.normal_tensor(var.dims(), DType::F32, &Device::Cpu)
                    .unwrap(),
            )
            .unwrap();
        }
    }
    let mut rng = Rng::new(4);
    let z = rng
        .normal_tensor(&[2, 1, 8, 8], DType::F32, &Device::Cpu)
        .unwrap();
    let t = Tensor::new(&[0.5f32, 0.5], &Device::Cpu).unwrap();
    let run = |l: &[f32]| {
        let l = Tensor::new(l, &Device::Cpu).unwrap();
        net.forward(&NetInput {
            z: &z,
            t: &t,
            alpha: &t,
            sigma: &t,
            log_snr: &l,
            class: None,
        })
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
    };
    assert_ne!(run(&[4.0, -4.0]), run(&[-4.0, 4.0]));
}

#[test]
fn refuses_attention_resolutions_never_reached() {
    let e = refusal(&[("attention_resolutions", "[16]")], &[1, 28, 28]);
    assert!(
        e.contains("backbone.unet")
            && e.contains("attention_resolutions contains 16")
            && e.contains("28, 14, 7"),
        "{e}"
    );
    let e = refusal(&[("attention_resolutions", "[0]")], &[3, 32, 32]);
    assert!(e.contains("attention_resolutions contains 0"), "{e}");
    let e = refusal(&[("attention_resolutions", "\"highest\"")], &[1, 8, 8]);
    assert!(
        e.contains("backbone.unet: attention_resolutions must be \"lowest\"")
            && e.contains("highest"),
        "{e}"
    );
    let e = refusal(&[("attention_resolutions", "14")], &[1, 8, 8]);
    assert!(e.contains("attention_resolutions"), "{e}");
}

#[test]
fn refuses_unknown_time_embeddings() {
    let e = refusal(&[("time_embedding", "snr")], &[1, 8, 8]);
    assert!(
        e.contains("backbone.unet: time_embedding must be \"t\" or \"log-snr\", got \"snr\""),
        "{e}"
    );
    let e = refusal(&[("time_embedding", "3")], &[1, 8, 8]);
    assert!(e.contains("time_embedding"), "{e}");
}

#[test]
fn refuses_attention_heads_that_do_not_divide_the_channels() {
    let e = refusal(&[("attention_heads", "3")], &[1, 28, 28]);
    assert!(
        e.contains("backbone.unet")
            && e.contains("attention_heads = 3 does not divide the 64 channels of level 2"),
        "{e}"
    );
    // 32 channels at level 0 (resolution 28): 64 heads do not divide them, whereas level 2's 64
    // channels would be fine.
    let e = refusal(
        &[
            ("attention_heads", "64"),
            ("attention_resolutions", "[28, 7]"),
        ],
        &[1, 28, 28],
    );
    assert!(e.contains("32 channels of level 0 (resolution 28)"), "{e}");
    let e = refusal(&[("attention_heads", "0")], &[1, 8, 8]);
    assert!(e.contains("attention_heads must be at least 1"), "{e}");
}

#[test]
fn refuses_dropout_out_of_range_and_applies_it_only_in_training() {
    for bad in ["1.0", "-0.1", "nan", "2"] {
        let e = refusal(&[("dropout", bad)], &[1, 8, 8]);
        assert!(
            e.contains("backbone.unet") && e.contains("dropout must be in [0, 1)"),
            "{bad}: {e}"
        );
    }
    // In range: `forward` (sampling, evaluation) is deterministic, `forward_train` draws its
    // masks from the generator it is given.
    let (vm, net) = build(&spec(&[("dropout", "0.5")]), &[1, 8, 8]);
    let net = net.unwrap();
    let mut rng = Rng::new(4);
    // The output conv starts at zero: give every weight a value so the output depends on the masks.
    for var in vm.all_vars() {
        let w = rng
            .normal_tensor(var.dims(), DType::F32, &Device::Cpu)
            .unwrap();
        var.set(&(w * 0.1).unwrap()).unwrap();
    }
    let z = rng
        .normal_tensor(&[2, 1, 8, 8], DType::F32, &Device::Cpu)
        .unwrap();
    let t = Tensor::new(&[0.3f32, 0.7], &Device::Cpu).unwrap();
    let (a, s, l) = (
        t.ones_like().unwrap(),
        t.ones_like().unwrap(),
        t.zeros_like().unwrap(),
    );
    let input = NetInput {
        z: &z,
        t: &t,
        alpha: &a,
        sigma: &s,
        log_snr: &l,
        class: None,
    };
    let v = |x: Tensor| x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(
        v(net.forward(&input).unwrap()),
        v(net.forward(&input).unwrap())
    );
    let train = |seed| v(net.forward_train(&input, &mut Rng::new(seed)).unwrap());
    assert_eq!(train(1), train(1));
    assert_ne!(train(1), train(2));
}

#[test]
fn refuses_zero_blocks_per_level() {
    let e = refusal(&[("blocks_per_level", "0")], &[1, 8, 8]);
    assert!(
        e.contains("backbone.unet") && e.contains("blocks_per_level must be at least 1"),
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
        classes: 0,
    };
    let net = ndm_unet::plugin::build_unet(UNetConfig::default(), &ctx).unwrap();
    assert_eq!(net.backend(), KernelBackend::Fused);
    assert_eq!(net.channels(), (1, 1));
}
