//! Learning curves: `loss.svg` and `loss.png`, train and validation loss
//! against optimizer steps and, beside them, the stage's task metrics (answer
//! accuracy, reward accuracy, ...) at each evaluation: the performance
//! learning curve, which says whether a falling loss meant a better model.
//!
//! How to read them: both falling = still learning (under-fitting: train
//! longer or use a bigger model); train falling while validation turns up =
//! memorising the training set (over-fitting: stop earlier, add data or
//! dropout); both flat early = the learning rate is too low (or far too high).

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

/// (name, [(step, value in [0, 1])]) per task metric.
pub type ShareCurves = [(String, Vec<(f64, f64)>)];

/// Draws both pictures, atomically (temp file, then rename). Labels need a
/// TrueType font (plotters measures text even for SVG); on a machine without
/// one the curves are drawn unlabelled: blue = train, orange = validation.
pub fn draw_loss_curves(
    out: &Path,
    title: &str,
    train: &[(f64, f64)],
    val: &[(f64, f64)],
    metrics: &ShareCurves,
) -> Result<()> {
    let size = if metrics.is_empty() { (900, 540) } else { (1500, 540) };
    let text = font_loaded();
    let tmp = out.join("loss.tmp.svg");
    let curves = Curves { title, train, val, metrics };
    draw(SVGBackend::new(&tmp, size).into_drawing_area(), &curves, text)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, out.join("loss.svg"))
        .with_context(|| format!("cannot write {}", out.join("loss.svg").display()))?;
    // The PNG is drawn into memory, then encoded by the `png` crate:
    // plotters' own PNG writer would compile a whole image library (JPEG,
    // BMP and more) into every binary for this one picture.
    let mut pixels = vec![0u8; 3 * size.0 as usize * size.1 as usize]; // RGB, row after row
    draw(BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area(), &curves, text)?;
    let tmp = out.join("loss.tmp.png");
    write_png(&tmp, size, &pixels)?;
    std::fs::rename(&tmp, out.join("loss.png"))
        .with_context(|| format!("cannot write {}", out.join("loss.png").display()))?;
    Ok(())
}

/// An 8-bit RGB image, `size` = (width, height), as a PNG file.
fn write_png(path: &Path, size: (u32, u32), rgb: &[u8]) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), size.0, size.1);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let written = encoder.write_header().and_then(|mut writer| writer.write_image_data(rgb));
    written.with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

struct Curves<'a> {
    title: &'a str,
    train: &'a [(f64, f64)],
    val: &'a [(f64, f64)],
    metrics: &'a ShareCurves,
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, curves: &Curves, text: bool) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the loss curve failed: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let (width, _) = root.dim_in_pixel();
    let (loss_area, metric_area) = match curves.metrics.is_empty() {
        true => (root.clone(), None),
        false => {
            let (left, right) = root.split_horizontally(width * 3 / 5);
            (left, Some(right))
        }
    };
    draw_losses(&loss_area, curves, text)?;
    if let Some(area) = metric_area {
        draw_metrics(&area, curves, text)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn draw_losses<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, curves: &Curves, text: bool) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the loss curve failed: {e:?}");
    let (title, train, val) = (curves.title, curves.train, curves.val);
    let all = train.iter().chain(val);
    let max_step = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let max_loss = all.map(|p| p.1).filter(|l| l.is_finite()).fold(0.1, f64::max) * 1.05;
    let mut builder = ChartBuilder::on(root);
    builder.margin(15);
    if text {
        builder.caption(title, ("sans-serif", 22)).x_label_area_size(40).y_label_area_size(55);
    }
    let mut chart = builder.build_cartesian_2d(0.0..max_step, 0.0..max_loss).map_err(err)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("optimizer step").y_desc("loss (cross-entropy)");
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(err)?;
    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(230, 110, 20);
    chart
        .draw_series(LineSeries::new(train.iter().copied(), blue.stroke_width(2)))
        .map_err(err)?
        .label("train")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(val.iter().copied(), orange.stroke_width(2)))
        .map_err(err)?
        .label("validation")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], orange.stroke_width(2)));
    chart.draw_series(val.iter().map(|&p| Circle::new(p, 3, orange.filled()))).map_err(err)?;
    if text {
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)?;
    }
    Ok(())
}

/// The task metrics, as percentages, against the same steps.
fn draw_metrics<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, curves: &Curves, text: bool) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the metric curves failed: {e:?}");
    let max_step = curves.train.iter().chain(curves.val).map(|p| p.0).fold(1.0, f64::max);
    let mut builder = ChartBuilder::on(root);
    builder.margin(15);
    if text {
        builder.caption("task metrics", ("sans-serif", 22)).x_label_area_size(40).y_label_area_size(55);
    }
    let mut chart = builder.build_cartesian_2d(0.0..max_step, 0.0..100.0).map_err(err)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("optimizer step").y_desc("% of the evaluation set");
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(err)?;
    let palette = [RGBColor(44, 160, 44), RGBColor(148, 103, 189), RGBColor(214, 39, 40), RGBColor(140, 86, 75)];
    for (i, (name, points)) in curves.metrics.iter().enumerate() {
        let colour = palette[i % palette.len()];
        let points: Vec<(f64, f64)> = points.iter().map(|&(step, share)| (step, 100.0 * share)).collect();
        chart
            .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))
            .map_err(err)?
            .label(name.replace('_', " "))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled()))).map_err(err)?;
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// Registers the first TrueType font found in the usual system places.
fn font_loaded() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        let candidates = [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/System/Library/Fonts/Supplemental/Arial.ttf",
            "C:\\Windows\\Fonts\\arial.ttf",
        ];
        candidates.iter().filter_map(|p| std::fs::read(p).ok()).next().is_some_and(|bytes| {
            // plotters keeps a 'static reference; the font lives as long as the program.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        })
    })
}
