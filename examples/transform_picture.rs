//! A picture of a trained model's transform `F(x, t)` at t = 0, 0.25, 0.5, 0.75, 1 (NDM's
//! Figure 2a): held-out data pushed through `F`, one panel per time, side by side in one PNG.
//!
//!     cargo run --release --example transform_picture -- RUN_DIR [OUT.png]

use anyhow::{bail, Context};
use ndm_api::candle_core::{DType, Device, Tensor};
use ndm_api::checkpoint::RunDir;
use ndm_api::{Rng, Split};
use plotters::prelude::*;
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let run = PathBuf::from(
        args.next()
            .context("usage: transform_picture RUN_DIR [OUT.png]")?,
    );
    let out = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| run.join("transform.png"));
    let setup = ndm_plugins_all::setup(None)?;
    let loaded = RunDir::new(&run).load(&setup.plugins, &Device::Cpu)?;
    let (pipe, data) = (loaded.pipe, loaded.data);
    if pipe.data_shape != [2] {
        bail!(
            "this picture is for 2-D data; the run has data shape {:?}",
            pipe.data_shape
        );
    }
    let n = 4000;
    let x = data.sample(n, Split::Test, &mut Rng::new(5), &pipe.device)?;
    let times = [0.0, 0.25, 0.5, 0.75, 1.0];
    let (w, h) = (300u32, 300u32);
    let width = w * times.len() as u32;
    let mut buf = vec![0u8; (width * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let panels = root.split_evenly((1, times.len()));
        for (panel, &t) in panels.iter().zip(&times) {
            let tt = Tensor::full(t as f32, n, &pipe.device)?;
            let f = pipe.f(&x, &tt)?.to_dtype(DType::F64)?.to_vec2::<f64>()?;
            let lim = 3.0;
            let map = |v: f64| ((v + lim) / (2.0 * lim) * w as f64) as i32;
            let grey = RGBColor(210, 210, 210);
            panel
                .draw(&Rectangle::new(
                    [(0, 0), (w as i32 - 1, h as i32 - 1)],
                    grey,
                ))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            for (p, q) in x.to_dtype(DType::F64)?.to_vec2::<f64>()?.iter().zip(&f) {
                // Colour by the data point's square so the reader can follow points through F.
                let c = if (p[0].floor() as i64).rem_euclid(2) == 0 {
                    RGBAColor(200, 40, 40, 0.4)
                } else {
                    RGBAColor(30, 70, 200, 0.4)
                };
                panel
                    .draw(&Circle::new((map(q[0]), map(-q[1])), 1, c.filled()))
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            println!(
                "t = {t}: F(x, t) has mean |F| {:.3}",
                f.iter()
                    .map(|r| (r[0] * r[0] + r[1] * r[1]).sqrt())
                    .sum::<f64>()
                    / n as f64
            );
        }
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    image::RgbImage::from_raw(width, h, buf)
        .context("picture buffer")?
        .save(&out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}
