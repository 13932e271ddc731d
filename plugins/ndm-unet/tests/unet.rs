//! The reference U-Net built with fused kernels matches the native build: output, loss
//! gradients for every parameter, and a few AdamW steps.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use common::*;
use ndm_api::vars::seeded_var_builder;
use ndm_api::Rng;
use ndm_unet::unet::{UNet, UNetConfig};
use ndm_unet::KernelBackend;

fn tiny() -> UNetConfig {
    UNetConfig {
        base_channels: 8,
        channel_mults: vec![1, 2],
        groups: 4,
        time_embed_dim: 16,
        ..UNetConfig::default()
    }
}

/// A 2-channel tiny U-Net with the same seeded weights for either backend.
fn build(backend: KernelBackend, dtype: DType) -> (VarMap, UNet) {
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, 42, dtype, &Device::Cpu);
    let net = UNet::new(vb, &tiny(), 2, 2, backend).unwrap();
    (vm, net)
}

#[test]
fn fused_and_native_unets_agree() {
    for dtype in [DType::F64, DType::F32] {
        let mut rng = Rng::new(5);
        let x = randn(&mut rng, &[3, 2, 8, 8], dtype);
        let t = rng
            .uniform_tensor(&[3], 0.0, 1.0, dtype, &Device::Cpu)
            .unwrap();
        let target = randn(&mut rng, &[3, 2, 8, 8], dtype);
        let tol = if dtype == DType::F64 { 1e-10 } else { 1e-4 };
        let (vf, nf) = build(KernelBackend::Fused, dtype);
        let (vn, nn) = build(KernelBackend::Native, dtype);
        let yf = nf.forward(&x, &t).unwrap();
        let yn = nn.forward(&x, &t).unwrap();
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
            assert_close(&format!("grad {name} {dtype:?}"), a, b, tol * 10.0);
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

#[test]
fn unet_rejects_bad_sizes() {
    let (_, net) = build(KernelBackend::Fused, DType::F32);
    let x = Tensor::zeros((1, 2, 7, 8), DType::F32, &Device::Cpu).unwrap();
    let t = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
    let e = net.forward(&x, &t).unwrap_err().to_string();
    assert!(e.contains("divisible by 2"), "{e}");
}

#[test]
fn default_config_has_the_documented_size() {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    UNet::new(vb, &UNetConfig::default(), 1, 1, KernelBackend::Fused).unwrap();
    let n: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
    assert_eq!(n, 410_721);
}
