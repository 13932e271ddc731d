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
