//! Pictures of samples: a scatter plot for 2-D data (plotters draws into a buffer, no font
//! needed; the `image` crate writes the PNG).

use anyhow::Result;
use plotters::prelude::*;
use std::path::Path;

/// Writes an RGB buffer of `w x h` pixels as a PNG, atomically.
pub fn save_png(rgb: Vec<u8>, w: u32, h: u32, path: &Path) -> Result<()> {
    let img = image::RgbImage::from_raw(w, h, rgb)
        .ok_or_else(|| anyhow::anyhow!("picture buffer is not {w}x{h} RGB"))?;
    ndm_api::checkpoint::write_atomic(path, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png)
            .map_err(|e| ndm_api::NdmError::file(tmp, e))
    })?;
    Ok(())
}

/// Writes a scatter plot of 2-D points to a PNG, atomically.
pub fn scatter_png(points: &[[f64; 2]], path: &Path) -> Result<()> {
    let mut buf = vec![0u8; 640 * 640 * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (640, 640)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| anyhow::anyhow!("drawing failed: {e}"))?;
        let lim = 3.0;
        let map = |x: f64| ((x + lim) / (2.0 * lim) * 640.0) as i32;
        // Axes through the origin and the [-2, 2] frame, for scale.
        let grey = RGBColor(200, 200, 200);
        let draw = |e: &dyn Fn() -> std::result::Result<(), String>| e();
        draw(&|| {
            root.draw(&PathElement::new(
                vec![(map(-lim), map(0.0)), (map(lim), map(0.0))],
                grey,
            ))
            .map_err(|e| e.to_string())?;
            root.draw(&PathElement::new(
                vec![(map(0.0), map(-lim)), (map(0.0), map(lim))],
                grey,
            ))
            .map_err(|e| e.to_string())?;
            root.draw(&Rectangle::new(
                [(map(-2.0), map(-2.0)), (map(2.0), map(2.0))],
                grey,
            ))
            .map_err(|e| e.to_string())
        })
        .map_err(|e| anyhow::anyhow!("drawing failed: {e}"))?;
        let blue = RGBAColor(20, 60, 180, 0.35);
        for p in points {
            if p[0].is_finite() && p[1].is_finite() {
                root.draw(&Circle::new((map(p[0]), map(-p[1])), 1, blue.filled()))
                    .map_err(|e| anyhow::anyhow!("drawing failed: {e}"))?;
            }
        }
        root.present()
            .map_err(|e| anyhow::anyhow!("drawing failed: {e}"))?;
    }
    save_png(buf, 640, 640, path)
}

/// The bytes of images `[n, C, H, W]` with values in `[-1, 1]`, in the same layout: each value
/// maps to the byte whose cell it falls in (`floor((v + 1) 128)`, clamped), the inverse of the
/// datasets' pixel mapping.
pub fn image_bytes(x: &candle_core::Tensor) -> Result<Vec<u8>> {
    let v = x
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(v.into_iter()
        .map(|f| ((f + 1.0) * 128.0).floor().clamp(0.0, 255.0) as u8)
        .collect())
}

/// Writes images `[n, C, H, W]` (values in `[-1, 1]`, C = 1 or 3) as a grid of `rows` rows with
/// a 2-pixel white border between cells, their pixels as [`image_bytes`] maps them.
pub fn image_grid_png(x: &candle_core::Tensor, rows: usize, path: &Path) -> Result<()> {
    let (n, c, h, w) = x.dims4()?;
    anyhow::ensure!(c == 1 || c == 3, "cannot draw images with {c} channels");
    let rows = rows.clamp(1, n.max(1));
    let cols = n.div_ceil(rows);
    let pad = 2;
    let (gw, gh) = (cols * (w + pad) + pad, rows * (h + pad) + pad);
    let mut buf = vec![255u8; gw * gh * 3];
    let v = image_bytes(x)?;
    for k in 0..n {
        let (r, col) = (k / cols, k % cols);
        let (oy, ox) = (pad + r * (h + pad), pad + col * (w + pad));
        for y in 0..h {
            for xx in 0..w {
                let at = |ch: usize| v[((k * c + ch) * h + y) * w + xx];
                let px = ((oy + y) * gw + ox + xx) * 3;
                for (o, ch) in [0, 1, 2].into_iter().enumerate() {
                    buf[px + o] = at(if c == 1 { 0 } else { ch });
                }
            }
        }
    }
    save_png(buf, gw as u32, gh as u32, path)
}

/// Writes a loss curve (loss against step, log-scaled loss axis) as a PNG: a line on a grey frame,
/// no text (the numbers are in the CSV log next to it).
pub fn loss_curve_png(points: &[(usize, f64)], path: &Path) -> Result<()> {
    let pts: Vec<(f64, f64)> = points
        .iter()
        .filter(|(_, l)| l.is_finite() && *l > 0.0)
        .map(|&(s, l)| (s as f64, l.ln()))
        .collect();
    anyhow::ensure!(
        pts.len() >= 2,
        "fewer than two finite positive losses to plot"
    );
    lines_png(&[(pts, RGBColor(20, 60, 180))], path)
}

/// Writes curves `(x, y)` on shared axes (the union of their ranges) as an 800 x 400 PNG: coloured
/// lines on a grey frame, no text (the caller writes the numbers next to it).
pub fn lines_png(lines: &[(Vec<(f64, f64)>, RGBColor)], path: &Path) -> Result<()> {
    let all = || lines.iter().flat_map(|(pts, _)| pts.iter());
    anyhow::ensure!(all().count() >= 2, "fewer than two points to plot");
    let (w, h) = (800u32, 400u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing failed: {e}");
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let range = |f: fn(&(f64, f64)) -> f64| {
            all()
                .map(f)
                .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)))
        };
        let (x0, mut x1) = range(|p| p.0);
        let (mut y0, mut y1) = range(|p| p.1);
        if x1 - x0 < 1e-9 {
            x1 = x0 + 1.0;
        }
        if y1 - y0 < 1e-9 {
            (y0, y1) = (y0 - 0.5, y1 + 0.5);
        }
        let m = 20.0;
        let map = |p: &(f64, f64)| {
            (
                (m + (p.0 - x0) / (x1 - x0) * (w as f64 - 2.0 * m)) as i32,
                (h as f64 - m - (p.1 - y0) / (y1 - y0) * (h as f64 - 2.0 * m)) as i32,
            )
        };
        root.draw(&Rectangle::new(
            [
                (m as i32, m as i32),
                (w as i32 - m as i32, h as i32 - m as i32),
            ],
            RGBColor(200, 200, 200),
        ))
        .map_err(|e| err(&e))?;
        for (pts, colour) in lines {
            root.draw(&PathElement::new(
                pts.iter().map(map).collect::<Vec<_>>(),
                *colour,
            ))
            .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    save_png(buf, w, h, path)
}

/// Writes each of the images `[n, C, H, W]` (C = 1: grey, 3: RGB) as its own PNG,
/// `dir/000000.png` onwards (the folder torch-fidelity and pytorch-fid read). Returns how many.
pub fn image_folder(x: &candle_core::Tensor, dir: &Path) -> Result<usize> {
    let (n, c, h, w) = x.dims4()?;
    anyhow::ensure!(c == 1 || c == 3, "cannot write images with {c} channels");
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let v = image_bytes(x)?;
    let plane = h * w;
    for k in 0..n {
        let img = &v[k * c * plane..(k + 1) * c * plane];
        let path = dir.join(format!("{k:06}.png"));
        let bytes: Vec<u8> = (0..plane)
            .flat_map(|p| (0..c).map(move |ch| img[ch * plane + p]))
            .collect();
        let colour = if c == 1 {
            image::ExtendedColorType::L8
        } else {
            image::ExtendedColorType::Rgb8
        };
        ndm_api::checkpoint::write_atomic(&path, |tmp| {
            image::save_buffer_with_format(
                tmp,
                &bytes,
                w as u32,
                h as u32,
                colour,
                image::ImageFormat::Png,
            )
            .map_err(|e| ndm_api::NdmError::file(tmp, e))
        })?;
    }
    Ok(n)
}
