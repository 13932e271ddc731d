//! Convergence order of the fixed-step solvers on Gaussian data with the exact denoiser, where the
//! probability-flow ODE's solution is known to any accuracy (a tight RK45 solve stands in for it).
//!
//! Deterministic solvers: the RMS distance of the map z_1 -> x from the reference, for 5..320 steps,
//! and the observed order log2(err(N) / err(2N)). Ancestral sampling (stochastic): the error of the
//! samples' covariance, which falls with the steps until it meets the sampling floor.
//!
//!     cargo run --release --example solver_orders

use ndm_api::candle_core::{DType, Device, Tensor};
use ndm_api::ode::Tolerance;
use ndm_api::registry::BuildCtx;
use ndm_api::sample::sample;
use ndm_api::{Pipeline, PluginSpec, RegistryFile, Rng, Solver, Spacing, TimeGrid};

fn rms(a: &Tensor, b: &Tensor) -> anyhow::Result<f64> {
    Ok((a - b)?
        .sqr()?
        .mean_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?
        .sqrt())
}

fn main() -> anyhow::Result<()> {
    ndm_api::kernels::prepare_process();
    let reg = ndm_plugins_all::builtin_registry();
    let file = RegistryFile::parse(include_str!("../registry.toml"), "registry.toml")?;
    let mut spec = file.preset("ddpm")?.model.clone();
    spec.steps = None;
    spec.backbone = PluginSpec::new("gaussian-oracle");
    spec.objective = PluginSpec::new("ndm-elbo-continuous");
    spec.schedule.set("form", "\"continuous\"");
    let dev = Device::Cpu;
    let pipe = Pipeline::build(&spec, &[2], &reg, &dev, 0)?;
    let ctx = BuildCtx::without_weights(&dev, &reg);
    let solver = |kind: &str, set: &[(&str, &str)]| -> anyhow::Result<Box<dyn Solver>> {
        let mut s = PluginSpec::new(kind);
        for (k, v) in set {
            s.set(k, v);
        }
        Ok(reg.build_solver(&s, &ctx)?)
    };
    let n = 2000;
    let z = Rng::new(1).normal_tensor(&[n, 2], DType::F32, &dev)?;
    let reference = {
        let rk = ndm_solvers::Rk45 {
            tol: Tolerance {
                rtol: 1e-7,
                atol: 1e-7,
                max_steps: 100_000,
            },
        };
        let grid = TimeGrid::for_process(1, Spacing::Uniform, &pipe)?;
        rk.sample(&pipe, z.clone(), &grid, &mut Rng::new(0))?.z
    };
    let steps = [5usize, 10, 20, 40, 80, 160, 320];
    let deterministic = [
        (
            "euler (EM, eta 0)",
            solver("euler-maruyama", &[("eta", "0.0")])?,
        ),
        ("ddim", solver("ddim", &[])?),
        ("heun", solver("heun", &[])?),
        ("dpmpp-2m", solver("dpmpp-2m", &[])?),
    ];
    println!("Probability-flow ODE on gaussian data, exact denoiser, continuous VP; RMS error of z_0 vs RK45 (rtol 1e-7), {n} paths\n");
    println!(
        "| solver | spacing | {} |",
        steps
            .iter()
            .map(|s| format!("{s} steps"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|---|{}", "---|".repeat(steps.len()));
    for (name, s) in &deterministic {
        for spacing in [Spacing::Uniform, Spacing::LogSnr] {
            let mut errs = Vec::new();
            for &k in &steps {
                let grid = TimeGrid::for_process(k, spacing, &pipe)?;
                let out = s.sample(&pipe, z.clone(), &grid, &mut Rng::new(0))?;
                errs.push(rms(&out.z, &reference)?);
            }
            let orders: Vec<String> = errs
                .windows(2)
                .map(|w| format!("{:.2}", (w[0] / w[1]).log2()))
                .collect();
            println!(
                "| {name} | {spacing} | {} |",
                errs.iter()
                    .map(|e| format!("{e:.2e}"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            println!("| (order) | | | {} |", orders.join(" | "));
        }
    }
    let data = reg.build_dataset(&PluginSpec::new("gaussian"), &ctx)?;
    let big = 100_000;
    println!("\nAncestral sampling (stochastic), {big} samples: covariance error (Frobenius) vs steps; sampling floor ~ {:.3}\n", (2.0 * 1.8f64 / big as f64).sqrt() * 1.5);
    println!("| steps | cov error | mean error |");
    println!("|---|---|---|");
    let anc = solver("ancestral", &[])?;
    for k in [5usize, 10, 20, 40, 80] {
        let grid = TimeGrid::for_process(k, Spacing::Uniform, &pipe)?;
        let s = sample(&pipe, anc.as_ref(), &grid, big, &mut Rng::new(9))?;
        let m = data.sample_metrics(&s.x)?;
        println!("| {k} | {:.4} | {:.4} |", m[1].1, m[0].1);
    }
    Ok(())
}
