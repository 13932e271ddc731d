//! Every kernel, forward and backward, against candle's native op (f32, f64) and against
//! central differences (f64), on small odd shapes.

mod common;

use candle_core::{DType, Result, Tensor};
use common::*;
use ndm_api::kernels::KernelBackend::{self, Fused, Native};
use ndm_api::Rng;

/// Fused vs native forward and input gradients, in f32 and f64, then central differences.
fn check_op(
    name: &str,
    shapes: &[&[usize]],
    f: &dyn Fn(KernelBackend, &[Tensor]) -> Result<Tensor>,
) {
    for (k, dtype) in [DType::F64, DType::F32].into_iter().enumerate() {
        let mut rng = Rng::new(7 + k as u64);
        let inputs: Vec<Tensor> = shapes.iter().map(|s| randn(&mut rng, s, dtype)).collect();
        let yf = f(Fused, &inputs).unwrap();
        let yn = f(Native, &inputs).unwrap();
        let tol = if dtype == DType::F64 { 1e-10 } else { 2e-5 };
        assert_close(&format!("{name} forward {dtype:?}"), &yf, &yn, tol);
        let r = randn(&mut rng, yf.dims(), dtype);
        let gf = grads(&|t| f(Fused, t), &inputs, &r);
        let gn = grads(&|t| f(Native, t), &inputs, &r);
        for (i, (a, b)) in gf.iter().zip(&gn).enumerate() {
            assert_close(&format!("{name} grad {i} {dtype:?}"), a, b, tol * 10.0);
        }
        if dtype == DType::F64 {
            check_central_differences(name, &|t| f(Fused, t), &inputs, &r);
        }
    }
}

#[test]
fn conv2d_3x3_stride1_pad1() {
    check_op(
        "conv3x3 s1",
        &[&[2, 3, 7, 5], &[4, 3, 3, 3], &[4]],
        &|be, t| be.conv2d(&t[0], &t[1], Some(&t[2]), 1, 1),
    );
}

#[test]
fn conv2d_3x3_stride2_pad1_odd() {
    check_op(
        "conv3x3 s2",
        &[&[2, 3, 7, 7], &[5, 3, 3, 3], &[5]],
        &|be, t| be.conv2d(&t[0], &t[1], Some(&t[2]), 2, 1),
    );
    check_op(
        "conv3x3 s2 even",
        &[&[1, 2, 6, 6], &[3, 2, 3, 3], &[3]],
        &|be, t| be.conv2d(&t[0], &t[1], Some(&t[2]), 2, 1),
    );
}

/// H and W of different parity with stride 2: candle 0.11's own conv2d backward reuses the
/// height's output padding for the width and fails here, so only central differences.
#[test]
fn conv2d_stride2_mixed_parity_central_differences() {
    let mut rng = Rng::new(11);
    let ins: Vec<Tensor> = [&[2usize, 3, 7, 6][..], &[4, 3, 3, 3], &[4]]
        .iter()
        .map(|s| randn(&mut rng, s, DType::F64))
        .collect();
    let f = |t: &[Tensor]| ndm_api::kernels::conv2d(&t[0], &t[1], Some(&t[2]), 2, 1);
    let y = f(&ins).unwrap();
    assert_eq!(y.dims(), &[2, 4, 4, 3]);
    let r = randn(&mut rng, y.dims(), DType::F64);
    check_central_differences("conv s2 7x6", &f, &ins, &r);
}

#[test]
fn conv2d_3x3_no_pad_batch1() {
    check_op(
        "conv3x3 p0 b1",
        &[&[1, 2, 5, 6], &[3, 2, 3, 3], &[3]],
        &|be, t| be.conv2d(&t[0], &t[1], Some(&t[2]), 1, 0),
    );
}

#[test]
fn conv2d_1x1_stride1_and_stride2() {
    check_op(
        "conv1x1 s1",
        &[&[3, 5, 4, 3], &[2, 5, 1, 1], &[2]],
        &|be, t| be.conv2d(&t[0], &t[1], Some(&t[2]), 1, 0),
    );
    check_op(
        "conv1x1 s2",
        &[&[2, 3, 5, 5], &[4, 3, 1, 1], &[4]],
        &|be, t| be.conv2d(&t[0], &t[1], Some(&t[2]), 2, 0),
    );
}

#[test]
fn conv2d_without_bias() {
    check_op("conv no bias", &[&[2, 3, 5, 4], &[2, 3, 3, 3]], &|be, t| {
        be.conv2d(&t[0], &t[1], None, 1, 1)
    });
}

#[test]
fn group_norm_plain_and_fused_silu() {
    for silu in [false, true] {
        let f = move |be: KernelBackend, t: &[Tensor]| {
            if silu {
                be.group_norm_silu(&t[0], 3, &t[1], &t[2], 1e-5)
            } else {
                be.group_norm(&t[0], 3, &t[1], &t[2], 1e-5)
            }
        };
        check_op(&format!("gn silu={silu}"), &[&[2, 6, 5, 3], &[6], &[6]], &f);
        check_op(
            &format!("gn b1 silu={silu}"),
            &[&[1, 6, 3, 3], &[6], &[6]],
            &f,
        );
        check_op(
            &format!("gn rank3 silu={silu}"),
            &[&[2, 6, 7], &[6], &[6]],
            &f,
        );
    }
}

#[test]
fn silu_elementwise() {
    check_op("silu", &[&[3, 5, 7]], &|be, t| be.silu(&t[0]));
    check_op("silu b1", &[&[1, 1, 3, 3]], &|be, t| be.silu(&t[0]));
}

#[test]
fn upsample_nearest2x() {
    check_op("upsample", &[&[2, 3, 3, 5]], &|be, t| {
        be.upsample_nearest2x(&t[0])
    });
    check_op("upsample b1", &[&[1, 2, 1, 4]], &|be, t| {
        be.upsample_nearest2x(&t[0])
    });
}

#[test]
fn bad_shapes_error_clearly() {
    let mut rng = Rng::new(1);
    let x = randn(&mut rng, &[2, 6, 4, 4], DType::F32);
    let g = randn(&mut rng, &[6], DType::F32);
    for be in [Fused, Native] {
        let e = be.group_norm(&x, 4, &g, &g, 1e-5).unwrap_err().to_string();
        assert!(e.contains("4 groups do not divide 6 channels"), "{e}");
        let e = be
            .group_norm_silu(&x, 0, &g, &g, 1e-5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("do not divide"), "{e}");
    }
    let w = randn(&mut rng, &[3, 5, 3, 3], DType::F32);
    let e = ndm_api::kernels::conv2d(&x, &w, None, 1, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("6 channels but the weight expects 5"), "{e}");
    let w = randn(&mut rng, &[3, 6, 7, 7], DType::F32);
    let e = ndm_api::kernels::conv2d(&x, &w, None, 1, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("larger than padded input"), "{e}");
    let e = ndm_api::kernels::upsample_nearest2x(&g)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[B, C, H, W]"), "{e}");
    let e = ndm_api::kernels::group_norm(&g.reshape((2, 3)).unwrap(), 1, &g, &g, 1e-5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("rank >= 3") || e.contains("gamma"), "{e}");
}

#[test]
fn non_contiguous_inputs_are_accepted() {
    let mut rng = Rng::new(3);
    let x = randn(&mut rng, &[2, 3, 5, 4], DType::F64)
        .transpose(2, 3)
        .unwrap();
    let w = randn(&mut rng, &[2, 3, 3, 3], DType::F64);
    let a = ndm_api::kernels::conv2d(&x, &w, None, 1, 1).unwrap();
    let b = Native.conv2d(&x, &w, None, 1, 1).unwrap();
    assert_close("strided conv", &a, &b, 1e-12);
    let a = ndm_api::kernels::silu(&x).unwrap();
    assert_close("strided silu", &a, &x.silu().unwrap(), 1e-12);
}

#[test]
fn conv2d_per_item_bias() {
    check_op(
        "conv per-item bias",
        &[&[3, 2, 5, 5], &[4, 2, 3, 3], &[3, 4]],
        &|be, t| be.conv2d(&t[0], &t[1], Some(&t[2]), 1, 1),
    );
}

#[test]
fn softmax_last_dim_fused_native_and_central_differences() {
    let f = |be: KernelBackend, t: &[Tensor]| be.softmax_last_dim(&t[0]);
    check_op("softmax", &[&[3, 4, 7]], &f);
    check_op("softmax one row", &[&[5]], &f);
    check_op("softmax length 1", &[&[2, 3, 1]], &f);
    // The composed native softmax (candle ops, max detached) against central differences too.
    let mut rng = Rng::new(21);
    let x = randn(&mut rng, &[2, 3, 6], DType::F64);
    let r = randn(&mut rng, &[2, 3, 6], DType::F64);
    check_central_differences(
        "native softmax",
        &|t| Native.softmax_last_dim(&t[0]),
        &[x],
        &r,
    );
}

#[test]
fn softmax_large_logits_do_not_overflow() {
    let mut rng = Rng::new(22);
    for dtype in [DType::F32, DType::F64] {
        let x = (randn(&mut rng, &[4, 9], dtype) * 500.0).unwrap();
        for be in [Fused, Native] {
            let y = be.softmax_last_dim(&x).unwrap();
            let sums: Vec<f64> = y
                .to_dtype(DType::F64)
                .unwrap()
                .sum(1)
                .unwrap()
                .to_vec1()
                .unwrap();
            assert!(
                sums.iter().all(|s| (s - 1.0).abs() < 1e-5),
                "{be:?} {dtype:?}: row sums {sums:?}"
            );
        }
        let (a, b) = (
            Fused.softmax_last_dim(&x).unwrap(),
            Native.softmax_last_dim(&x).unwrap(),
        );
        assert_close(&format!("large logits {dtype:?}"), &a, &b, 1e-5);
    }
}

#[test]
fn attention_core_fused_native_and_central_differences() {
    let heads = |h: usize| move |be: KernelBackend, t: &[Tensor]| be.attention(&t[0], h);
    // [B, 3C, N]: C = 4 in 2 heads of 2 channels over 5 positions.
    check_op("attention 2 heads", &[&[2, 12, 5]], &heads(2));
    check_op("attention 1 head", &[&[1, 9, 7]], &heads(1));
    check_op("attention 3 heads of 1", &[&[2, 9, 4]], &heads(3));
    check_op("attention one position", &[&[2, 6, 1]], &heads(2));
    let mut rng = Rng::new(23);
    let x = randn(&mut rng, &[2, 12, 5], DType::F64);
    let r = randn(&mut rng, &[2, 4, 5], DType::F64);
    check_central_differences(
        "native attention",
        &|t| Native.attention(&t[0], 2),
        &[x],
        &r,
    );
}

/// The attention core's forward-mode derivative (NDM's dF/dt through a U-Net's attention): fused
/// against the composed candle ops (value and the gradients of both inputs, f32 and f64), central
/// differences of the fused op in f64, and the tangent itself against central differences of
/// the attention along the tangent.
#[test]
fn attention_tangent_fused_native_and_central_differences() {
    let heads =
        |h: usize| move |be: KernelBackend, t: &[Tensor]| be.attention_tangent(&t[0], &t[1], h);
    check_op(
        "attention tangent 2 heads",
        &[&[2, 12, 5], &[2, 12, 5]],
        &heads(2),
    );
    check_op(
        "attention tangent 1 head",
        &[&[1, 9, 7], &[1, 9, 7]],
        &heads(1),
    );
    check_op(
        "attention tangent one position",
        &[&[2, 6, 1], &[2, 6, 1]],
        &heads(2),
    );
    let mut rng = Rng::new(25);
    let x = randn(&mut rng, &[2, 12, 5], DType::F64);
    let dx = randn(&mut rng, &[2, 12, 5], DType::F64);
    let tangent = Fused.attention_tangent(&x, &dx, 2).unwrap();
    let h = 1e-5;
    let at = |sign: f64| {
        Fused
            .attention(&(&x + (&dx * (sign * h)).unwrap()).unwrap(), 2)
            .unwrap()
    };
    let fd = ((at(1.0) - at(-1.0)).unwrap() / (2.0 * h)).unwrap();
    assert_close(
        "attention tangent vs central differences",
        &tangent,
        &fd,
        1e-7,
    );
    let e = Fused
        .attention_tangent(&x, &randn(&mut rng, &[2, 12, 4], DType::F64), 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not match qkv"), "{e}");
}

#[test]
fn attention_core_refuses_bad_channel_counts() {
    let mut rng = Rng::new(24);
    for be in [Fused, Native] {
        let x = randn(&mut rng, &[1, 12, 5], DType::F32);
        let e = be.attention(&x, 3).unwrap_err().to_string();
        assert!(e.contains("divisible by 3 heads"), "{e}");
        let e = be.attention(&x, 0).unwrap_err().to_string();
        assert!(e.contains("0 heads"), "{e}");
        let x = randn(&mut rng, &[1, 10, 5], DType::F32);
        let e = be.attention(&x, 1).unwrap_err().to_string();
        assert!(e.contains("not 3 x C"), "{e}");
    }
}

#[test]
fn linear_plain_and_silu_input_with_shared_and_per_example_bias() {
    for silu in [false, true] {
        check_op(
            &format!("linear silu={silu}"),
            &[&[7, 5], &[3, 5], &[3]],
            &|be, t| be.linear(&t[0], &t[1], Some(&t[2]), silu),
        );
        check_op(
            &format!("linear per-example bias silu={silu}"),
            &[&[4, 6], &[5, 6], &[4, 5]],
            &|be, t| be.linear(&t[0], &t[1], Some(&t[2]), silu),
        );
        check_op(
            &format!("linear no bias silu={silu}"),
            &[&[2, 3], &[4, 3]],
            &|be, t| be.linear(&t[0], &t[1], None, silu),
        );
    }
}

/// Enough rows for several parallel blocks (forward, input and weight gradients), and a batch of one.
#[test]
fn linear_many_rows_and_one_row() {
    check_op("linear 150 rows", &[&[150, 4], &[3, 4], &[3]], &|be, t| {
        be.linear(&t[0], &t[1], Some(&t[2]), true)
    });
    check_op("linear 1 row", &[&[1, 4], &[2, 4], &[2]], &|be, t| {
        be.linear(&t[0], &t[1], Some(&t[2]), true)
    });
}

#[test]
fn linear_bad_shapes_error_clearly_and_strided_input_is_accepted() {
    let mut rng = Rng::new(5);
    let x = randn(&mut rng, &[4, 3], DType::F64);
    let w = randn(&mut rng, &[2, 5], DType::F64);
    let e = ndm_api::kernels::linear(&x, &w, None, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("are not [n, k] and [m, k]"), "{e}");
    let w = randn(&mut rng, &[2, 3], DType::F64);
    let b = randn(&mut rng, &[3], DType::F64);
    let e = ndm_api::kernels::linear(&x, &w, Some(&b), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("is neither [2] nor [4, 2]"), "{e}");
    let xt = randn(&mut rng, &[3, 4], DType::F64).t().unwrap();
    let a = ndm_api::kernels::linear(&xt, &w, None, true).unwrap();
    let b = Native.linear(&xt, &w, None, true).unwrap();
    assert_close("strided linear", &a, &b, 1e-12);
}

#[test]
fn silu_tangent_and_its_backward() {
    check_op("silu tangent", &[&[3, 7], &[3, 7]], &|be, t| {
        be.silu_tangent(&t[0], &t[1])
    });
    let mut rng = Rng::new(9);
    let x = randn(&mut rng, &[4], DType::F64);
    let e = ndm_api::kernels::silu_tangent(&x, &randn(&mut rng, &[5], DType::F64))
        .unwrap_err()
        .to_string();
    assert!(e.contains("shape mismatch"), "{e}");
}

/// Inside `expect_backward` the forward keeps `sigmoid(x)` and the backward uses it: the same
/// gradients as candle's ops and as central differences.
#[test]
fn linear_backward_from_the_kept_sigmoid() {
    check_op(
        "linear, kept sigmoid",
        &[&[9, 5], &[4, 5], &[4]],
        &|be, t| ndm_api::kernels::expect_backward(|| be.linear(&t[0], &t[1], Some(&t[2]), true)),
    );
}

/// 3x3, stride 1, padding 1 with at least 8 channels in and out runs as Winograd F(2x2, 3x3),
/// its input gradient too: against candle's conv2d and central differences on the tiling's edge
/// cases (odd H and W, a 1x1 image, batch 1, Cin != Cout, several images per GEMM with a partial
/// last group).
#[test]
fn conv2d_3x3_winograd_edge_shapes() {
    let conv = |be: KernelBackend, t: &[Tensor]| be.conv2d(&t[0], &t[1], Some(&t[2]), 1, 1);
    check_op(
        "winograd 5x3 odd",
        &[&[2, 8, 5, 3], &[9, 8, 3, 3], &[9]],
        &conv,
    );
    check_op(
        "winograd 1x1 b1",
        &[&[1, 8, 1, 1], &[8, 8, 3, 3], &[8]],
        &conv,
    );
    check_op(
        "winograd 1x4",
        &[&[2, 8, 1, 4], &[10, 8, 3, 3], &[10]],
        &conv,
    );
    check_op(
        "winograd 3x3 b5",
        &[&[5, 8, 3, 3], &[8, 8, 3, 3], &[8]],
        &conv,
    );
}

#[test]
fn conv2d_3x3_winograd_per_item_bias_and_no_bias() {
    check_op(
        "winograd per-item bias",
        &[&[5, 8, 3, 5], &[9, 8, 3, 3], &[5, 9]],
        &|be, t| be.conv2d(&t[0], &t[1], Some(&t[2]), 1, 1),
    );
    check_op(
        "winograd no bias b1",
        &[&[1, 9, 7, 6], &[8, 9, 3, 3]],
        &|be, t| be.conv2d(&t[0], &t[1], None, 1, 1),
    );
}

/// GroupNorm's forward-mode tangent, plain and with the fused SiLU: fused vs candle's ops (value
/// and the gradients in the input, the tangent, gamma and beta, f32 and f64), then central
/// differences of the fused op in f64; an odd spatial size and several channels per group.
#[test]
fn group_norm_tangent_plain_and_fused_silu() {
    check_op(
        "group_norm+silu tangent",
        &[&[2, 6, 3, 5], &[2, 6, 3, 5], &[6], &[6]],
        &|be, t| be.group_norm_tangent(&t[0], &t[1], 3, &t[2], &t[3], 1e-5, true),
    );
    // Without the SiLU the tangent does not depend on beta: a zero beta, not an input.
    check_op(
        "group_norm tangent",
        &[&[2, 6, 3, 5], &[2, 6, 3, 5], &[6]],
        &|be, t| {
            let beta = t[2].zeros_like()?;
            be.group_norm_tangent(&t[0], &t[1], 3, &t[2], &beta, 1e-5, false)
        },
    );
    check_op(
        "group_norm+silu tangent b1 rank3",
        &[&[1, 4, 7], &[1, 4, 7], &[4], &[4]],
        &|be, t| be.group_norm_tangent(&t[0], &t[1], 2, &t[2], &t[3], 1e-5, true),
    );
}

/// The Winograd weight and bias gradients (3x3, stride 1, padding 1, at least 8 channels) through
/// the op: odd (7x6) and even (8x8) images, batch 1 and 3, bias `[Cout]` and `[B, Cout]`, against
/// candle's conv2d and central differences.
#[test]
fn conv2d_3x3_winograd_weight_gradient() {
    let conv = |be: KernelBackend, t: &[Tensor]| be.conv2d(&t[0], &t[1], Some(&t[2]), 1, 1);
    check_op(
        "winograd dW 7x6 b3 per-item bias",
        &[&[3, 8, 7, 6], &[9, 8, 3, 3], &[3, 9]],
        &conv,
    );
    check_op(
        "winograd dW 8x8 b1",
        &[&[1, 9, 8, 8], &[8, 9, 3, 3], &[8]],
        &conv,
    );
}
