//! The reference U-Net: fused vs native (output, every parameter gradient, AdamW steps), the
//! attention block's gradient, odd settings that must build and train, dropout, the log-SNR
//! embedding, zero-initialised outputs and the default size.

#[path = "../../../ndm-api/tests/common/mod.rs"]
mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Optimizer, VarMap};
use common::*;
use ndm_api::vars::{seeded_var_builder, sorted_vars};
use ndm_api::Rng;
use ndm_unet::unet::{AttentionBlock, AttentionResolutions, TimeInput, UNet, UNetConfig};
use ndm_unet::KernelBackend;

/// Two levels (8x8 -> 4x4 for 8x8 images), two blocks per level, 2-head attention at both.
fn tiny() -> UNetConfig {
    UNetConfig {
        base_channels: 8,
        channel_mults: vec![1, 2],
        blocks_per_level: 2,
        groups: 4,
        time_embed_dim: 16,
        attention_resolutions: AttentionResolutions::At(vec![8, 4]),
        attention_heads: 2,
        ..UNetConfig::default()
    }
}

/// Gives every variable that starts at zero (output convs, attention projections, GroupNorm
/// biases) seeded non-zero values, so that every path carries gradient from the first step.
fn fill_zero_vars(vm: &VarMap, seed: u64) {
    for (name, var) in sorted_vars(vm) {
        if max_abs(var.as_tensor()) == 0.0 {
            let mut rng = Rng::derived(seed, &name);
            let t = rng
                .normal_tensor(var.dims(), var.dtype(), &Device::Cpu)
                .unwrap();
            var.set(&(t * 0.3).unwrap()).unwrap();
        }
    }
}

/// A 2-channel U-Net of `cfg` for 8x8 images with the same seeded weights for either backend.
fn build_cfg(cfg: &UNetConfig, backend: KernelBackend, dtype: DType) -> (VarMap, UNet) {
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, 42, dtype, &Device::Cpu);
    let net = UNet::new(vb, cfg, 2, 2, (8, 8), backend).unwrap();
    (vm, net)
}

fn build(backend: KernelBackend, dtype: DType) -> (VarMap, UNet) {
    build_cfg(&tiny(), backend, dtype)
}

fn param_count(vm: &VarMap) -> usize {
    vm.all_vars().iter().map(|v| v.elem_count()).sum()
}

#[test]
fn fused_and_native_unets_agree() {
    let lowest = UNetConfig {
        blocks_per_level: 1,
        attention_resolutions: AttentionResolutions::Lowest,
        time_embedding: TimeInput::LogSnr,
        ..tiny()
    };
    for cfg in [tiny(), lowest] {
        for dtype in [DType::F64, DType::F32] {
            let mut rng = Rng::new(5);
            let x = randn(&mut rng, &[3, 2, 8, 8], dtype);
            let t = rng
                .uniform_tensor(&[3], 0.0, 1.0, dtype, &Device::Cpu)
                .unwrap();
            let l = rng
                .uniform_tensor(&[3], -10.0, 10.0, dtype, &Device::Cpu)
                .unwrap();
            let target = randn(&mut rng, &[3, 2, 8, 8], dtype);
            let tol = if dtype == DType::F64 { 1e-10 } else { 1e-4 };
            let (vf, nf) = build_cfg(&cfg, KernelBackend::Fused, dtype);
            let (vn, nn) = build_cfg(&cfg, KernelBackend::Native, dtype);
            fill_zero_vars(&vf, 1);
            fill_zero_vars(&vn, 1);
            let yf = nf.forward_cond(&x, &t, Some(&l)).unwrap();
            let yn = nn.forward_cond(&x, &t, Some(&l)).unwrap();
            assert!(max_abs(&yn) > 1e-3, "the output should not vanish");
            assert_close("unet forward", &yf, &yn, tol);
            let lf = (yf - &target).unwrap().sqr().unwrap().mean_all().unwrap();
            let ln = (yn - &target).unwrap().sqr().unwrap().mean_all().unwrap();
            let gf = lf.backward().unwrap();
            let gn = ln.backward().unwrap();
            let (df, dn) = (vf.data().lock().unwrap(), vn.data().lock().unwrap());
            assert_eq!(df.len(), dn.len());
            for (name, var) in df.iter() {
                let a = gf
                    .get(var)
                    .unwrap_or_else(|| panic!("no fused grad for {name}"));
                let b = gn
                    .get(&dn[name])
                    .unwrap_or_else(|| panic!("no native grad for {name}"));
                assert!(max_abs(b) > 0.0, "zero gradient for {name}");
                assert_close(&format!("grad {name} {dtype:?}"), a, b, tol * 10.0);
            }
        }
    }
}

#[test]
fn fused_unet_trains_like_native() {
    let mut rng = Rng::new(9);
    let x = randn(&mut rng, &[2, 2, 8, 8], DType::F32);
    let t = rng
        .uniform_tensor(&[2], 0.0, 1.0, DType::F32, &Device::Cpu)
        .unwrap();
    let mut losses = Vec::new();
    for be in [KernelBackend::Fused, KernelBackend::Native] {
        let (vm, net) = build(be, DType::F32);
        let mut opt = candle_nn::AdamW::new_lr(vm.all_vars(), 1e-2).unwrap();
        let mut l = Vec::new();
        for _ in 0..5 {
            let loss = (net.forward(&x, &t).unwrap() - &x)
                .unwrap()
                .sqr()
                .unwrap()
                .mean_all()
                .unwrap();
            opt.backward_step(&loss).unwrap();
            l.push(loss.to_scalar::<f32>().unwrap());
        }
        losses.push(l);
    }
    for (a, b) in losses[0].iter().zip(&losses[1]) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{:?}", losses);
    }
    assert!(
        losses[0][4] < losses[0][0],
        "loss did not decrease: {:?}",
        losses[0]
    );
}

/// An attention block over 4 channels in 2 heads, with a non-zero output projection.
fn attention_block(backend: KernelBackend) -> (VarMap, AttentionBlock) {
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, 8, DType::F64, &Device::Cpu);
    let block = AttentionBlock::new(vb, 4, 2, 2, backend).unwrap();
    (vm, block)
}

#[test]
fn attention_block_input_gradient_matches_central_differences() {
    let mut rng = Rng::new(12);
    let x = randn(&mut rng, &[2, 4, 3, 2], DType::F64);
    let r = randn(&mut rng, &[2, 4, 3, 2], DType::F64);
    let mut outs = Vec::new();
    for be in [KernelBackend::Fused, KernelBackend::Native] {
        let (vm, block) = attention_block(be);
        // As built the block is the identity (zero projection); then give it weights.
        assert_close(
            "zero-projection block",
            &block.forward(&x).unwrap(),
            &x,
            0.0,
        );
        fill_zero_vars(&vm, 2);
        let y = block.forward(&x).unwrap();
        assert!(max_abs_diff(&y, &x) > 1e-2);
        check_central_differences(
            &format!("attention block {be:?}"),
            &|t| block.forward(&t[0]),
            std::slice::from_ref(&x),
            &r,
        );
        outs.push(y);
    }
    assert_close("attention block fused vs native", &outs[0], &outs[1], 1e-12);
}

#[test]
fn attention_sits_where_the_config_says() {
    let names = |cfg: &UNetConfig, size| {
        let vm = VarMap::new();
        let vb = seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu);
        let net = UNet::new(vb, cfg, 1, 1, size, KernelBackend::Fused).unwrap();
        let mut blocks: Vec<String> = sorted_vars(&vm)
            .into_iter()
            .filter(|(n, _)| n.ends_with(".qkv.weight"))
            .map(|(n, _)| n.trim_end_matches(".qkv.weight").to_string())
            .collect();
        blocks.dedup();
        (net.attention_levels().to_vec(), blocks)
    };
    // Default for 28x28: levels 28, 14, 7; attention at 7 and in the middle.
    let (levels, blocks) = names(&UNetConfig::default(), (28, 28));
    assert_eq!(levels, [false, false, true]);
    assert_eq!(
        blocks,
        ["down2.attn0", "mid.attn0", "up2.attn0", "up2.attn1"]
    );
    // [14]: the middle (at 7) has none; the up path has blocks_per_level + 1 blocks.
    let cfg = UNetConfig {
        attention_resolutions: AttentionResolutions::At(vec![14]),
        blocks_per_level: 2,
        ..UNetConfig::default()
    };
    let (levels, blocks) = names(&cfg, (28, 28));
    assert_eq!(levels, [false, true, false]);
    assert_eq!(
        blocks,
        [
            "down1.attn0",
            "down1.attn1",
            "up1.attn0",
            "up1.attn1",
            "up1.attn2"
        ]
    );
    let cfg = UNetConfig {
        attention_resolutions: AttentionResolutions::At(vec![]),
        ..UNetConfig::default()
    };
    assert!(names(&cfg, (32, 32)).1.is_empty());
}

const LR: f64 = 0.05;

/// `loss = mean((unet(x, t) - target)^2)`, backward, plain SGD on every variable. Returns the
/// loss and the largest |gradient| of each variable.
fn sgd_step(
    vm: &VarMap,
    net: &UNet,
    x: &Tensor,
    target: &Tensor,
    rng: &mut Rng,
) -> (f32, HashMap<String, f64>) {
    let b = x.dim(0).unwrap();
    let t = rng
        .uniform_tensor(&[b], 0.0, 1.0, DType::F32, &Device::Cpu)
        .unwrap();
    let l = rng
        .uniform_tensor(&[b], -10.0, 10.0, DType::F32, &Device::Cpu)
        .unwrap();
    let y = net.forward_train(x, &t, Some(&l), rng).unwrap();
    assert_eq!(y.dims(), x.dims());
    let loss = (y - target).unwrap().sqr().unwrap().mean_all().unwrap();
    let grads = loss.backward().unwrap();
    let mut gmax = HashMap::new();
    for (name, var) in sorted_vars(vm) {
        let g = grads
            .get(&var)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        gmax.insert(name, max_abs(g));
        var.set(&(var.as_tensor() - (g * LR).unwrap()).unwrap())
            .unwrap();
    }
    (loss.to_scalar::<f32>().unwrap(), gmax)
}

#[test]
fn odd_settings_build_and_train() {
    let base = UNetConfig {
        base_channels: 8,
        groups: 4,
        time_embed_dim: 16,
        attention_heads: 2,
        ..UNetConfig::default()
    };
    // (what, config, [B, C, H, W])
    let cases = [
        (
            "one level, attention there, batch 1",
            UNetConfig {
                channel_mults: vec![1],
                ..base.clone()
            },
            [1, 1, 6, 6],
        ),
        (
            "attention at every level, 3 blocks per level",
            UNetConfig {
                channel_mults: vec![1, 2, 2],
                blocks_per_level: 3,
                attention_resolutions: AttentionResolutions::At(vec![8, 4, 2]),
                ..base.clone()
            },
            [2, 3, 8, 8],
        ),
        (
            "1 block per level, no attention, batch 1, not square",
            UNetConfig {
                channel_mults: vec![1, 2],
                blocks_per_level: 1,
                attention_resolutions: AttentionResolutions::At(vec![]),
                ..base.clone()
            },
            [1, 2, 4, 6],
        ),
        (
            "log-SNR embedding, dropout, 1 head",
            UNetConfig {
                channel_mults: vec![1, 2],
                time_embedding: TimeInput::LogSnr,
                attention_heads: 1,
                dropout: 0.3,
                ..base.clone()
            },
            [2, 1, 8, 8],
        ),
    ];
    for (what, cfg, dims) in cases {
        let vm = VarMap::new();
        let vb = seeded_var_builder(&vm, 4, DType::F32, &Device::Cpu);
        let net = UNet::new(
            vb,
            &cfg,
            dims[1],
            dims[1],
            (dims[2], dims[3]),
            Default::default(),
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        let before: HashMap<String, Tensor> = sorted_vars(&vm)
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().copy().unwrap()))
            .collect();
        let mut rng = Rng::new(6);
        let x = randn(&mut rng, &dims, DType::F32);
        let target = randn(&mut rng, &dims, DType::F32);
        let mut losses = Vec::new();
        let mut gmax: HashMap<String, f64> = HashMap::new();
        for _ in 0..3 {
            let (l, g) = sgd_step(&vm, &net, &x, &target, &mut rng);
            losses.push(l);
            for (n, v) in g {
                let e = gmax.entry(n).or_insert(0.0);
                *e = e.max(v);
            }
        }
        assert!(
            losses.iter().all(|l| l.is_finite()),
            "{what}: losses {losses:?}"
        );
        // Zero-initialised layers pass gradient on one step later each (output conv, then the
        // attention projections, then what lies before them), so by the third step every
        // variable has had a gradient; every update that f32 can represent has been applied
        // (the third step moves an attention block's GroupNorm weight by ~1e-7, which rounds away
        // next to its value 1 in f32).
        for (name, var) in sorted_vars(&vm) {
            let (w, g) = (max_abs(&before[&name]), gmax[&name]);
            assert!(g > 0.0, "{what}: {name} never had a gradient");
            let d = max_abs_diff(var.as_tensor(), &before[&name]);
            if LR * g > 1e-5 * (1.0 + w) {
                assert!(d > 0.0, "{what}: {name} did not change in 3 steps");
            }
        }
        let d = max_abs_diff(
            &vm.data().lock().unwrap()["conv_out.weight"]
                .as_tensor()
                .clone(),
            &before["conv_out.weight"],
        );
        assert!(d > 0.0, "{what}: the output conv did not move");
    }
}

#[test]
fn dropout_only_in_training_and_from_the_seeded_rng() {
    let cfg = UNetConfig {
        dropout: 0.5,
        ..tiny()
    };
    let (vm, net) = build_cfg(&cfg, KernelBackend::Fused, DType::F32);
    fill_zero_vars(&vm, 3);
    let mut rng = Rng::new(1);
    let x = randn(&mut rng, &[2, 2, 8, 8], DType::F32);
    let t = Tensor::new(&[0.3f32, 0.7], &Device::Cpu).unwrap();
    let eval = net.forward(&x, &t).unwrap();
    assert_close(
        "eval is deterministic",
        &net.forward(&x, &t).unwrap(),
        &eval,
        0.0,
    );
    let a = net.forward_train(&x, &t, None, &mut Rng::new(7)).unwrap();
    let b = net.forward_train(&x, &t, None, &mut Rng::new(7)).unwrap();
    let c = net.forward_train(&x, &t, None, &mut Rng::new(8)).unwrap();
    assert_close("same seed, same masks", &a, &b, 0.0);
    assert!(max_abs_diff(&a, &c) > 1e-3, "another seed, other masks");
    assert!(max_abs_diff(&a, &eval) > 1e-3, "training differs from eval");
    // dropout = 0: training is the deterministic network and draws nothing.
    let (vm, net) = build(KernelBackend::Fused, DType::F32);
    fill_zero_vars(&vm, 3);
    let mut rng = Rng::new(7);
    let y = net.forward_train(&x, &t, None, &mut rng).unwrap();
    assert_close("dropout 0", &y, &net.forward(&x, &t).unwrap(), 0.0);
    assert_eq!(rng.state(), Rng::new(7).state());
}

#[test]
fn log_snr_embedding_reads_the_log_snr_not_t() {
    let cfg = UNetConfig {
        time_embedding: TimeInput::LogSnr,
        ..tiny()
    };
    let (vm, net) = build_cfg(&cfg, KernelBackend::Fused, DType::F32);
    fill_zero_vars(&vm, 4);
    let mut rng = Rng::new(2);
    let x = randn(&mut rng, &[2, 2, 8, 8], DType::F32);
    let t = Tensor::new(&[0.3f32, 0.7], &Device::Cpu).unwrap();
    let t2 = Tensor::new(&[0.9f32, 0.1], &Device::Cpu).unwrap();
    let l = Tensor::new(&[5.0f32, -3.0], &Device::Cpu).unwrap();
    let l2 = Tensor::new(&[-5.0f32, 3.0], &Device::Cpu).unwrap();
    let e = net.forward(&x, &t).unwrap_err().to_string();
    assert!(e.contains("log-snr") && e.contains("log-SNR"), "{e}");
    let y = net.forward_cond(&x, &t, Some(&l)).unwrap();
    assert_close(
        "t is ignored",
        &net.forward_cond(&x, &t2, Some(&l)).unwrap(),
        &y,
        0.0,
    );
    assert!(max_abs_diff(&net.forward_cond(&x, &t, Some(&l2)).unwrap(), &y) > 1e-3);
}

#[test]
fn unet_rejects_bad_sizes() {
    let (_, net) = build(KernelBackend::Fused, DType::F32);
    let x = Tensor::zeros((1, 2, 7, 8), DType::F32, &Device::Cpu).unwrap();
    let t = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
    let e = net.forward(&x, &t).unwrap_err().to_string();
    assert!(e.contains("divisible by 2"), "{e}");
}

#[test]
fn default_config_fits_mnist_and_cifar_and_starts_at_zero() {
    for (c, size, params) in [(1, 28, 1_112_801), (3, 32, 1_113_955)] {
        let vm = VarMap::new();
        let vb = seeded_var_builder(&vm, 0, DType::F32, &Device::Cpu);
        let net = UNet::new(
            vb,
            &UNetConfig::default(),
            c,
            c,
            (size, size),
            KernelBackend::Fused,
        )
        .unwrap();
        assert_eq!(param_count(&vm), params, "{c}x{size}x{size}");
        let mut rng = Rng::new(3);
        let x = randn(&mut rng, &[2, c, size, size], DType::F32);
        let t = Tensor::new(&[0.2f32, 0.8], &Device::Cpu).unwrap();
        let y = net.forward(&x, &t).unwrap();
        assert_eq!(y.dims(), x.dims());
        // The output conv starts at zero (weight and bias), so the untrained network outputs 0.
        assert_eq!(max_abs(&y), 0.0);
    }
}

/// [`tiny`] with the time embedding of NDM's `F` (frequencies up to 10, not 1000), whose
/// derivative a central difference resolves.
fn ndm_f() -> UNetConfig {
    UNetConfig {
        time_scale: 10.0,
        ..tiny()
    }
}

/// The forward-mode time derivative of the U-Net (NDM's `dF/dt` through its network) against a
/// central difference in f64, through both backends, unconditional and class-conditional; the
/// value it returns is the plain forward pass.
#[test]
fn time_tangent_matches_a_central_difference_in_f64() {
    let dt = 1e-6;
    for (backend, classes) in [
        (KernelBackend::Fused, 0),
        (KernelBackend::Native, 0),
        (KernelBackend::Fused, 3),
    ] {
        let (vm, mut net) = build_cfg(&ndm_f(), backend, DType::F64);
        if classes > 0 {
            let vb = seeded_var_builder(&vm, 43, DType::F64, &Device::Cpu);
            net = net.with_classes(vb, classes).unwrap();
        }
        fill_zero_vars(&vm, 3);
        let mut rng = Rng::new(9);
        let x = randn(&mut rng, &[3, 2, 8, 8], DType::F64);
        let t = Tensor::new(&[0.2f64, 0.5, 0.85], &Device::Cpu).unwrap();
        let class = Tensor::new(&[2u32, 0, 3], &Device::Cpu).unwrap();
        let class = (classes > 0).then_some(&class);
        let run = |t: &Tensor| net.forward_classes(&x, t, None, class, None).unwrap();
        let (y, dy) = net
            .forward_and_time_tangent(&x, &t, class)
            .unwrap()
            .unwrap();
        assert_close("tangent pass output", &y, &run(&t), 1e-12);
        let fd =
            ((run(&(&t + dt).unwrap()) - run(&(&t - dt).unwrap())).unwrap() / (2.0 * dt)).unwrap();
        let scale = max_abs(&fd);
        assert!(scale > 1e-2, "the output barely moves with t: {scale}");
        let err = max_abs_diff(&dy, &fd);
        assert!(
            err < 1e-6 * scale,
            "{backend:?}, {classes} classes: error {err}, scale {scale}"
        );
    }
}

/// Gradients of a loss on the forward-mode tangent (what NDM's objective trains `F` with) with
/// respect to the input and to weights of every kind of layer, against central differences of
/// that loss in f64.
#[test]
fn time_tangent_gradients_match_central_differences_in_f64() {
    let (vm, net) = build_cfg(&ndm_f(), KernelBackend::Fused, DType::F64);
    fill_zero_vars(&vm, 4);
    let mut rng = Rng::new(10);
    let x = randn(&mut rng, &[2, 2, 8, 8], DType::F64);
    let r = randn(&mut rng, &[2, 2, 8, 8], DType::F64);
    let t = Tensor::new(&[0.3f64, 0.7], &Device::Cpu).unwrap();
    // The input gradient on the first item (each item's tangent depends on its own input only).
    let t0 = t.narrow(0, 0, 1).unwrap();
    check_central_differences(
        "U-Net time tangent, input",
        &|ins| {
            let (_, dy) = net.forward_and_time_tangent(&ins[0], &t0, None)?.unwrap();
            Ok(dy)
        },
        &[x.narrow(0, 0, 1).unwrap()],
        &r.narrow(0, 0, 1).unwrap(),
    );
    let loss = |net: &UNet| -> f64 {
        let (_, dy) = net.forward_and_time_tangent(&x, &t, None).unwrap().unwrap();
        (dy * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let (_, dy) = net.forward_and_time_tangent(&x, &t, None).unwrap().unwrap();
    let grads = (dy * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let vars: HashMap<String, candle_core::Var> = sorted_vars(&vm).into_iter().collect();
    let mut checked = 0;
    for (name, var) in &vars {
        // One element of each kind of weight: time MLP, block projections, GroupNorm, convs,
        // attention.
        let kinds = [
            "time.l1", "temb", "norm1", "conv1", "conv2", "qkv", "proj", "norm_out",
        ];
        if !kinds.iter().any(|k| name.contains(k))
            || !name.starts_with("down0")
                && !name.starts_with("time")
                && !name.starts_with("norm_out")
        {
            continue;
        }
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let flat = var.as_tensor().flatten_all().unwrap();
        let gflat: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
        let i = flat.elem_count() / 2;
        let orig: Vec<f64> = flat.to_vec1().unwrap();
        let h = 1e-5;
        let at = |v: f64| {
            let mut w = orig.clone();
            w[i] = v;
            var.set(&Tensor::from_vec(w, var.dims(), &Device::Cpu).unwrap())
                .unwrap();
            loss(&net)
        };
        let fd = (at(orig[i] + h) - at(orig[i] - h)) / (2.0 * h);
        at(orig[i]);
        assert!(
            (fd - gflat[i]).abs() < 1e-6 * (1.0 + fd.abs()),
            "{name}[{i}]: backward {} against difference {fd}",
            gflat[i]
        );
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} weights checked");
}
