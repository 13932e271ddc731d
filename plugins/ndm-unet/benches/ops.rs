//! Single-op timings, native candle vs fused, forward and forward+backward (medians, ms).
//!
//! `cargo bench -p ndm-unet --bench ops`

use std::time::Instant;

use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::VarMap;
use ndm_api::vars::seeded_var_builder;
use ndm_api::Rng;
use ndm_unet::unet::AttentionBlock;
use ndm_unet::KernelBackend::{self, Fused, Native};

type OpFn = Box<dyn Fn(KernelBackend, &[Tensor]) -> Result<Tensor>>;

fn randn(rng: &mut Rng, dims: &[usize]) -> Result<Tensor> {
    rng.normal_tensor(dims, candle_core::DType::F32, &Device::Cpu)
}

fn median_ms(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2] * 1e3
}

fn time(be: KernelBackend, f: &OpFn, ins: &[Var], iters: usize) -> Result<(f64, f64)> {
    let ts: Vec<Tensor> = ins.iter().map(|v| v.as_tensor().clone()).collect();
    let (mut fw, mut fb) = (Vec::new(), Vec::new());
    for _ in 0..iters + 1 {
        let t0 = Instant::now();
        let y = f(be, &ts)?;
        let t1 = Instant::now();
        let g = y.sum_all()?.backward()?;
        let t2 = Instant::now();
        drop(g);
        fw.push((t1 - t0).as_secs_f64());
        fb.push((t2 - t0).as_secs_f64());
    }
    fw.remove(0);
    fb.remove(0);
    Ok((median_ms(fw), median_ms(fb)))
}

/// An attention block over 64 channels (4 heads, 8 groups) with seeded weights, built for the
/// backend it is called with.
fn attention() -> OpFn {
    let vm = VarMap::new();
    Box::new(move |be, t| {
        let vb = seeded_var_builder(&vm, 7, DType::F32, &Device::Cpu);
        let block = AttentionBlock::new(vb, 64, 4, 8, be)?;
        // The output projection starts at zero; give it weights (once) so all of it is timed.
        for (name, var) in vm.data().lock().unwrap().iter() {
            let zero = var.as_tensor().abs()?.max_all()?.to_scalar::<f32>()? == 0.0;
            if name.starts_with("proj.") && zero {
                let mut rng = Rng::derived(3, name);
                var.set(&(rng.normal_tensor(var.dims(), DType::F32, &Device::Cpu)? * 0.1)?)?;
            }
        }
        block.forward(&t[0])
    })
}

fn main() -> Result<()> {
    let iters: usize = std::env::var("NDM_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let mut rng = Rng::new(1);
    let cases: Vec<(&str, Vec<Vec<usize>>, OpFn)> = vec![
        (
            "conv2d 3x3 64x32x28x28 -> 32",
            vec![vec![64, 32, 28, 28], vec![32, 32, 3, 3], vec![32]],
            Box::new(|be, t| be.conv2d(&t[0], &t[1], Some(&t[2]), 1, 1)),
        ),
        (
            "conv2d 3x3 64x64x14x14 -> 64",
            vec![vec![64, 64, 14, 14], vec![64, 64, 3, 3], vec![64]],
            Box::new(|be, t| be.conv2d(&t[0], &t[1], Some(&t[2]), 1, 1)),
        ),
        (
            "conv2d 3x3 64x64x7x7 -> 64",
            vec![vec![64, 64, 7, 7], vec![64, 64, 3, 3], vec![64]],
            Box::new(|be, t| be.conv2d(&t[0], &t[1], Some(&t[2]), 1, 1)),
        ),
        (
            "conv2d 3x3 64x1x28x28 -> 32",
            vec![vec![64, 1, 28, 28], vec![32, 1, 3, 3], vec![32]],
            Box::new(|be, t| be.conv2d(&t[0], &t[1], Some(&t[2]), 1, 1)),
        ),
        (
            "conv2d 3x3 s2 64x32x28x28 -> 32",
            vec![vec![64, 32, 28, 28], vec![32, 32, 3, 3], vec![32]],
            Box::new(|be, t| be.conv2d(&t[0], &t[1], Some(&t[2]), 2, 1)),
        ),
        (
            "conv2d 1x1 64x96x28x28 -> 32",
            vec![vec![64, 96, 28, 28], vec![32, 96, 1, 1], vec![32]],
            Box::new(|be, t| be.conv2d(&t[0], &t[1], Some(&t[2]), 1, 0)),
        ),
        (
            "group_norm+silu 64x32x28x28 g8",
            vec![vec![64, 32, 28, 28], vec![32], vec![32]],
            Box::new(|be, t| be.group_norm_silu(&t[0], 8, &t[1], &t[2], 1e-5)),
        ),
        (
            "group_norm 64x32x28x28 g8",
            vec![vec![64, 32, 28, 28], vec![32], vec![32]],
            Box::new(|be, t| be.group_norm(&t[0], 8, &t[1], &t[2], 1e-5)),
        ),
        (
            "silu 64x32x28x28",
            vec![vec![64, 32, 28, 28]],
            Box::new(|be, t| be.silu(&t[0])),
        ),
        (
            "upsample2x 64x64x14x14",
            vec![vec![64, 64, 14, 14]],
            Box::new(|be, t| be.upsample_nearest2x(&t[0])),
        ),
        (
            "softmax last dim 256x196x196",
            vec![vec![256, 196, 196]],
            Box::new(|be, t| be.softmax_last_dim(&t[0])),
        ),
        (
            "softmax last dim 256x49x49",
            vec![vec![256, 49, 49]],
            Box::new(|be, t| be.softmax_last_dim(&t[0])),
        ),
        (
            "attention block 64x64x7x7, 4 heads",
            vec![vec![64, 64, 7, 7]],
            attention(),
        ),
        (
            "attention block 64x64x14x14, 4 heads",
            vec![vec![64, 64, 14, 14]],
            attention(),
        ),
    ];
    println!("| op (f32, median of {iters}, ms) | native fwd | fused fwd | native fwd+bwd | fused fwd+bwd | speed-up fwd+bwd |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, shapes, f) in cases {
        let ins: Vec<Var> = shapes
            .iter()
            .map(|s| Var::from_tensor(&randn(&mut rng, s)?))
            .collect::<Result<_>>()?;
        let (nf, nb) = time(Native, &f, &ins, iters)?;
        ndm_unet::kernels::profile::set_enabled(true);
        let (ff, fb) = time(Fused, &f, &ins, iters)?;
        ndm_unet::kernels::profile::set_enabled(false);
        println!(
            "| {name} | {nf:.1} | {ff:.1} | {nb:.1} | {fb:.1} | {:.1}x |",
            nb / fb
        );
    }
    println!("\n| fused kernel (inside the ops above) | calls | mean ms |\n|---|---:|---:|");
    for (name, d, n) in ndm_unet::kernels::profile::snapshot() {
        println!("| {name} | {n} | {:.2} |", d.as_secs_f64() * 1e3 / n as f64);
    }
    Ok(())
}
