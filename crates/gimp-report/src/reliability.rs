//! The reliability diagram: for each confidence bin, how often the predicted class was right
//! (bars) against the diagonal of perfect calibration, with the share of patients per bin below
//! and the ECE in the title; PNG and SVG.

use crate::draw_err as err;
use gimp_io::DataError;
use gimp_metrics::calibration::Calibration;
use plotters::prelude::*;
use std::path::Path;

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    cal: &Calibration,
    title: &str,
    out: &Path,
) -> Result<(), DataError>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| err(out, e))?;
    let root = root
        .titled(
            &format!("{title} — ECE {:.3}, MCE {:.3}", cal.ece, cal.mce),
            ("sans-serif", 18),
        )
        .map_err(|e| err(out, e))?;
    let (upper, lower) = root.split_vertically(440);
    let mut chart = ChartBuilder::on(&upper)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)
        .map_err(|e| err(out, e))?;
    chart
        .configure_mesh()
        .x_desc("confidence (top-label probability)")
        .y_desc("accuracy")
        .draw()
        .map_err(|e| err(out, e))?;
    let blue = RGBColor(52, 101, 164);
    chart
        .draw_series(cal.bins.iter().filter(|b| b.count > 0).map(|b| {
            Rectangle::new(
                [(b.low, 0.0), (b.high, b.accuracy)],
                blue.mix(0.75).filled(),
            )
        }))
        .map_err(|e| err(out, e))?
        .label("accuracy of the bin")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], blue.filled()));
    // The gap to each bin's mean confidence: what the ECE sums.
    chart
        .draw_series(cal.bins.iter().filter(|b| b.count > 0).map(|b| {
            let mid = (b.low + b.high) / 2.0;
            PathElement::new(
                vec![(mid, b.accuracy), (mid, b.confidence)],
                RED.stroke_width(3),
            )
        }))
        .map_err(|e| err(out, e))?
        .label("gap to mean confidence")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], RED.stroke_width(3)));
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, 0.0), (1.0, 1.0)],
            BLACK.mix(0.6).stroke_width(1),
        ))
        .map_err(|e| err(out, e))?
        .label("perfect calibration")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], BLACK.stroke_width(1)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(out, e))?;
    let total = cal.bins.iter().map(|b| b.count).sum::<usize>().max(1) as f64;
    let top = cal
        .bins
        .iter()
        .map(|b| b.count as f64 / total)
        .fold(0.0, f64::max)
        .max(0.05);
    let mut counts = ChartBuilder::on(&lower)
        .margin(12)
        .x_label_area_size(20)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..1f64, 0f64..top * 1.1)
        .map_err(|e| err(out, e))?;
    counts
        .configure_mesh()
        .y_desc("patients")
        .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
        .draw()
        .map_err(|e| err(out, e))?;
    counts
        .draw_series(cal.bins.iter().map(|b| {
            Rectangle::new(
                [(b.low, 0.0), (b.high, b.count as f64 / total)],
                BLACK.mix(0.45).filled(),
            )
        }))
        .map_err(|e| err(out, e))?;
    root.present().map_err(|e| err(out, e))
}

struct Diagram<'a> {
    cal: &'a Calibration,
    title: &'a str,
}

impl crate::Figure for Diagram<'_> {
    fn draw_on<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, plotters::coord::Shift>,
        out: &Path,
    ) -> Result<(), DataError>
    where
        DB::ErrorType: 'static,
    {
        draw(root, self.cal, self.title, out)
    }
}

/// Writes the reliability diagram as `{stem}.png` and `{stem}.svg`.
pub fn plot(cal: &Calibration, title: &str, stem: &Path) -> Result<(), DataError> {
    crate::write_png_and_svg(&Diagram { cal, title }, (640, 620), stem)
}

#[cfg(test)]
mod tests {
    use gimp_metrics::calibration::calibration;

    #[test]
    fn writes_png_and_svg() {
        let probs: Vec<Vec<f64>> = (0..50)
            .map(|i| {
                let p = 0.5 + (i as f64) / 101.0;
                vec![p, 1.0 - p]
            })
            .collect();
        let y: Vec<usize> = (0..50).map(|i| usize::from(i % 3 == 0)).collect();
        let cal = calibration(&y, &probs, 10);
        let d = tempfile::tempdir().unwrap();
        super::plot(&cal, "test", &d.path().join("rel")).unwrap();
        let svg = std::fs::read_to_string(d.path().join("rel.svg")).unwrap();
        assert!(svg.contains("ECE"), "the title carries the ECE");
        let png = image_size(&d.path().join("rel.png"));
        assert_eq!(png, (640, 620));
        assert!(!d.path().join("rel.tmp.png").exists());
    }

    fn image_size(p: &std::path::Path) -> (u32, u32) {
        let b = std::fs::read(p).unwrap();
        assert_eq!(&b[1..4], b"PNG");
        let w = u32::from_be_bytes([b[16], b[17], b[18], b[19]]);
        let h = u32::from_be_bytes([b[20], b[21], b[22], b[23]]);
        (w, h)
    }
}
