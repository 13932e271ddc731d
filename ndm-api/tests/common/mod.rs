//! Shared helpers: seeded inputs, comparisons, and a central-difference gradient check.

#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor, Var};
use ndm_api::Rng;

pub fn randn(rng: &mut Rng, dims: &[usize], dtype: DType) -> Tensor {
    rng.normal_tensor(dims, dtype, &Device::Cpu).unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a: Vec<f64> = a
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f64> = b
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

pub fn max_abs(a: &Tensor) -> f64 {
    let a: Vec<f64> = a
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    a.iter().map(|x| x.abs()).fold(0.0, f64::max)
}

pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f64) {
    let d = max_abs_diff(a, b);
    let scale = max_abs(b).max(1.0);
    assert!(
        d <= tol * scale,
        "{what}: max |diff| {d:e} > {tol:e} * {scale}"
    );
}

/// A function of some inputs, reduced to a scalar by the caller.
pub type Func<'a> = &'a dyn Fn(&[Tensor]) -> Result<Tensor>;

/// Gradients of `sum(f(inputs) * r)` with respect to every input.
pub fn grads(f: Func, inputs: &[Tensor], r: &Tensor) -> Vec<Tensor> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let loss = (f(&ts).unwrap() * r).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    vars.iter()
        .map(|v| g.get(v).expect("missing gradient").clone())
        .collect()
}

/// Checks the backward of `f` (f64) against central differences on every input element.
pub fn check_central_differences(name: &str, f: Func, inputs: &[Tensor], r: &Tensor) {
    let analytic = grads(f, inputs, r);
    let h = 1e-6;
    let loss = |ins: &[Tensor]| -> f64 {
        (f(ins).unwrap() * r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    for (i, inp) in inputs.iter().enumerate() {
        let base: Vec<f64> = inp.flatten_all().unwrap().to_vec1().unwrap();
        let ga: Vec<f64> = analytic[i].flatten_all().unwrap().to_vec1().unwrap();
        for j in 0..base.len() {
            let run = |delta: f64| {
                let mut v = base.clone();
                v[j] += delta;
                let mut ins = inputs.to_vec();
                ins[i] = Tensor::from_vec(v, inp.dims(), inp.device()).unwrap();
                loss(&ins)
            };
            let num = (run(h) - run(-h)) / (2.0 * h);
            let err = (num - ga[j]).abs();
            assert!(
                err <= 1e-6 * (1.0 + num.abs()),
                "{name}: input {i} element {j}: analytic {} vs numeric {num} (err {err:e})",
                ga[j]
            );
        }
    }
}
