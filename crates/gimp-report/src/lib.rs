//! Figures for people: learning curves of a training stage, drawn from its `log.jsonl`.
//!
//! Pure Rust (plotters' bitmap backend) with a bundled font (DejaVu Sans, see
//! `assets/DejaVuSans-LICENSE.txt`), so no system library or font configuration is needed.

use gimp_io::{DataError, ErrorKind};
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

pub mod kaplan_meier;
pub mod reliability;
pub mod tsne;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

pub(crate) fn register_font() {
    REGISTER.call_once(|| {
        // A failure here only means text is not drawn; the curves still are.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// A named series of (epoch, value) points.
pub type Series = (String, Vec<(f64, f64)>);

/// One numeric series per key of the log, in epoch order.
pub fn read_log(path: &Path) -> Result<Vec<Series>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let mut series: Vec<Series> = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            DataError::malformed(path, format!("not JSON: {e}")).at(format!("line {}", i + 1))
        })?;
        let epoch = v.get("epoch").and_then(|e| e.as_f64()).unwrap_or(i as f64) + 1.0;
        if let Some(obj) = v.as_object() {
            for (k, val) in obj {
                if k == "epoch" {
                    continue;
                }
                let Some(y) = val.as_f64().filter(|y| y.is_finite()) else {
                    continue;
                };
                match series.iter_mut().find(|(n, _)| n == k) {
                    Some((_, s)) => s.push((epoch, y)),
                    None => series.push((k.clone(), vec![(epoch, y)])),
                }
            }
        }
    }
    Ok(series)
}

pub(crate) fn draw_err(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::new(ErrorKind::Io, path, format!("cannot draw the figure: {e}"))
}

/// A figure that draws itself on any plotters backend (`out` names the file in errors).
pub(crate) trait Figure {
    fn draw_on<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, plotters::coord::Shift>,
        out: &Path,
    ) -> Result<(), DataError>
    where
        DB::ErrorType: 'static;
}

/// Writes `figure` at `size` pixels as `{stem}.png` and `{stem}.svg`, each drawn under a
/// temporary name and renamed, so no half-written figure is left behind.
pub(crate) fn write_png_and_svg(
    figure: &impl Figure,
    size: (u32, u32),
    stem: &Path,
) -> Result<(), DataError> {
    register_font();
    let (png, svg) = (stem.with_extension("png"), stem.with_extension("svg"));
    let (tp, ts) = (
        stem.with_extension("tmp.png"),
        stem.with_extension("tmp.svg"),
    );
    figure.draw_on(BitMapBackend::new(&tp, size).into_drawing_area(), &png)?;
    figure.draw_on(SVGBackend::new(&ts, size).into_drawing_area(), &svg)?;
    std::fs::rename(&tp, &png).map_err(|e| DataError::io(&png, e))?;
    std::fs::rename(&ts, &svg).map_err(|e| DataError::io(&svg, e))
}

/// Draws a stage's learning curves: losses on the left panel, accuracies on the right.
/// Written to a temporary name and renamed, like every output.
pub fn learning_curves(log: &Path, out: &Path, title: &str) -> Result<(), DataError> {
    register_font();
    let series = read_log(log)?;
    if series.is_empty() {
        return Err(DataError::new(
            ErrorKind::Empty,
            log,
            "no epochs logged yet",
        ));
    }
    let tmp = out.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (1100, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(out, e))?;
        let root = root
            .titled(title, ("sans-serif", 22))
            .map_err(|e| draw_err(out, e))?;
        let panels = root.split_evenly((1, 2));
        let groups = [("loss", false), ("accuracy", true)];
        for (panel, (name, is_acc)) in panels.iter().zip(groups) {
            let chosen: Vec<&Series> = series
                .iter()
                .filter(|(k, _)| k.contains("accuracy") == is_acc)
                .collect();
            if chosen.is_empty() {
                continue;
            }
            let xmax = chosen
                .iter()
                .flat_map(|(_, s)| s.iter().map(|p| p.0))
                .fold(1.0, f64::max);
            let (mut ymin, mut ymax) = chosen
                .iter()
                .flat_map(|(_, s)| s.iter().map(|p| p.1))
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
                    (a.min(y), b.max(y))
                });
            if is_acc {
                ymin = ymin.min(0.5);
                ymax = ymax.max(1.0);
            }
            let pad = ((ymax - ymin) * 0.05).max(1e-3);
            let mut chart = ChartBuilder::on(panel)
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(56)
                .build_cartesian_2d(1.0..xmax.max(2.0), (ymin - pad)..(ymax + pad))
                .map_err(|e| draw_err(out, e))?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .y_desc(name)
                .draw()
                .map_err(|e| draw_err(out, e))?;
            for (i, (label, pts)) in chosen.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                    .map_err(|e| draw_err(out, e))?
                    .label(label.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| draw_err(out, e))?;
        }
        root.present().map_err(|e| draw_err(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| DataError::io(out, e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn draws_a_png_from_a_log() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log.jsonl");
        let lines: Vec<String> = (0..5)
            .map(|e| {
                format!(
                    "{{\"epoch\":{e},\"train_loss\":{},\"val_loss\":{},\"val_accuracy\":{}}}",
                    1.0 / (e + 1) as f64,
                    1.2 / (e + 1) as f64,
                    0.6 + 0.05 * e as f64
                )
            })
            .collect();
        std::fs::write(&log, lines.join("\n")).unwrap();
        let s = super::read_log(&log).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].1.len(), 5);
        let png = d.path().join("curves.png");
        super::learning_curves(&log, &png, "fine-tuning").unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(bytes.len() > 5000);
        std::fs::write(&log, "{not json").unwrap();
        assert!(super::read_log(&log)
            .unwrap_err()
            .to_string()
            .contains("line 1"));
    }
}
