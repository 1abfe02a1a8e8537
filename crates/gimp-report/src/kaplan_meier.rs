//! Kaplan–Meier curves of predicted risk groups (`docs/DESIGN.md` §34): one step curve per group
//! with its censorings marked, the log-rank p-value between the groups in the title, and the
//! numbers still at risk under the time axis; PNG and SVG.

use crate::draw_err as err;
use gimp_io::{DataError, ErrorKind};
use gimp_metrics::survival::{logrank, KaplanMeier, LogRank, Outcomes};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;
use std::path::Path;

/// What the figure shows, for a JSON beside it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KaplanMeierFigure {
    pub groups: Vec<String>,
    pub curves: Vec<KaplanMeier>,
    pub logrank: LogRank,
    /// Times of the at-risk table and, per group, the patients at risk at each.
    pub at_risk_times: Vec<f64>,
    pub at_risk: Vec<Vec<usize>>,
}

/// Groups of equal size by predicted risk: patients ranked by risk (ties in input order) and cut
/// into `n_groups` consecutive runs, 0 the lowest risk. Names: "low risk"/"high risk" for two,
/// "risk group k of n" otherwise.
pub fn risk_groups(risk: &[f64], n_groups: usize) -> (Vec<usize>, Vec<String>) {
    let n_groups = n_groups.max(1);
    let mut order: Vec<usize> = (0..risk.len()).collect();
    order.sort_by(|&a, &b| risk[a].total_cmp(&risk[b]));
    let mut group = vec![0; risk.len()];
    for (rank, &i) in order.iter().enumerate() {
        group[i] = rank * n_groups / risk.len().max(1);
    }
    let names = if n_groups == 2 {
        vec!["low risk".to_string(), "high risk".to_string()]
    } else {
        (1..=n_groups)
            .map(|k| format!("risk group {k} of {n_groups}"))
            .collect()
    };
    (group, names)
}

/// A p-value as people read it.
fn format_p(p: f64) -> String {
    if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

/// Six round times from 0 to the last follow-up for the at-risk table.
fn table_times(max_time: f64) -> Vec<f64> {
    let raw = max_time / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(raw);
    (0..)
        .map(|k| k as f64 * step)
        .take_while(|t| *t <= max_time)
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    figure: &KaplanMeierFigure,
    outcomes: Outcomes,
    group: &[usize],
    unit: &str,
    title: &str,
    max_time: f64,
    out: &Path,
) -> Result<(), DataError>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| err(out, e))?;
    let (_, height) = root.dim_in_pixel();
    let table_height = 40 + 22 * figure.groups.len() as u32;
    let (upper, lower) = root.split_vertically(height.saturating_sub(table_height));
    let caption = format!(
        "{title} — log-rank p = {} (χ², {} df)",
        format_p(figure.logrank.p),
        figure.logrank.degrees_of_freedom
    );
    let mut chart = ChartBuilder::on(&upper)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_time * 1.02, 0.0..1.02)
        .map_err(|e| err(out, e))?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc(format!("time ({unit})"))
        .y_desc("survival probability")
        .draw()
        .map_err(|e| err(out, e))?;
    for (g, (name, km)) in figure.groups.iter().zip(&figure.curves).enumerate() {
        let color = Palette99::pick(g).to_rgba();
        let mut steps = vec![(0.0, 1.0)];
        let mut previous = 1.0;
        for (&t, &s) in km.time.iter().zip(&km.survival) {
            steps.push((t, previous));
            steps.push((t, s));
            previous = s;
        }
        // The curve ends at the group's last observed time.
        if let Some(&last) = km.time.last() {
            steps.push((last, previous));
        }
        chart
            .draw_series(LineSeries::new(steps, color.stroke_width(2)))
            .map_err(|e| err(out, e))?
            .label(format!(
                "{name} (n = {})",
                group.iter().filter(|&&x| x == g).count()
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        // A tick at each censoring time, on the curve.
        let censored = (0..outcomes.len())
            .filter(|&i| group[i] == g && !outcomes.event[i])
            .filter_map(|i| km.at(outcomes.time[i]).map(|s| (outcomes.time[i], s)));
        chart
            .draw_series(censored.map(|p| Cross::new(p, 4, color.stroke_width(1))))
            .map_err(|e| err(out, e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(out, e))?;
    // The at-risk table, aligned with the time axis.
    let rows = figure.groups.len();
    let mut table = ChartBuilder::on(&lower)
        .margin_left(12)
        .margin_right(12)
        .y_label_area_size(56)
        .caption("number at risk", ("sans-serif", 14))
        .build_cartesian_2d(0.0..max_time * 1.02, 0.0..rows as f64)
        .map_err(|e| err(out, e))?;
    let style = ("sans-serif", 14).into_font();
    for (g, counts) in figure.at_risk.iter().enumerate() {
        let color = Palette99::pick(g).to_rgba();
        let y = rows as f64 - g as f64 - 0.5;
        table
            .draw_series(figure.at_risk_times.iter().zip(counts).map(|(&t, n)| {
                let centred = style
                    .clone()
                    .color(&color)
                    .pos(Pos::new(HPos::Center, VPos::Center));
                Text::new(n.to_string(), (t, y), centred)
            }))
            .map_err(|e| err(out, e))?;
    }
    root.present().map_err(|e| err(out, e))
}

struct Drawing<'a> {
    figure: &'a KaplanMeierFigure,
    outcomes: Outcomes<'a>,
    group: &'a [usize],
    unit: &'a str,
    title: &'a str,
    max_time: f64,
}

impl crate::Figure for Drawing<'_> {
    fn draw_on<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, plotters::coord::Shift>,
        out: &Path,
    ) -> Result<(), DataError>
    where
        DB::ErrorType: 'static,
    {
        draw(
            root,
            self.figure,
            self.outcomes,
            self.group,
            self.unit,
            self.title,
            self.max_time,
            out,
        )
    }
}

/// Draws the Kaplan–Meier curves of the groups `group[i]` (named by `names`), with the
/// log-rank test between them, as `{stem}.png` and `{stem}.svg` (each via a temporary name);
/// returns what was drawn.
pub fn plot(
    outcomes: Outcomes,
    group: &[usize],
    names: &[String],
    unit: &str,
    title: &str,
    stem: &Path,
) -> Result<KaplanMeierFigure, DataError> {
    let png = stem.with_extension("png");
    let bad = |message: String| DataError::new(ErrorKind::Value, &png, message);
    if group.len() != outcomes.len() || group.iter().any(|&g| g >= names.len()) {
        return Err(bad(format!(
            "{} group numbers for {} patients and {} group names",
            group.len(),
            outcomes.len(),
            names.len()
        )));
    }
    if outcomes.is_empty() {
        return Err(DataError::new(
            ErrorKind::Empty,
            &png,
            "no patients to draw",
        ));
    }
    let logrank = logrank(outcomes, group).map_err(|e| bad(e.to_string()))?;
    let curves: Vec<KaplanMeier> = (0..names.len())
        .map(|g| {
            let idx: Vec<usize> = (0..outcomes.len()).filter(|&i| group[i] == g).collect();
            let time: Vec<f64> = idx.iter().map(|&i| outcomes.time[i]).collect();
            let event: Vec<bool> = idx.iter().map(|&i| outcomes.event[i]).collect();
            KaplanMeier::fit(Outcomes {
                time: &time,
                event: &event,
            })
        })
        .collect();
    let max_time = outcomes.time.iter().copied().fold(0.0, f64::max).max(1e-9);
    let at_risk_times = table_times(max_time);
    let at_risk = curves
        .iter()
        .map(|km| at_risk_times.iter().map(|&t| km.at_risk_at(t)).collect())
        .collect();
    let figure = KaplanMeierFigure {
        groups: names.to_vec(),
        curves,
        logrank,
        at_risk_times,
        at_risk,
    };
    let drawing = Drawing {
        figure: &figure,
        outcomes,
        group,
        unit,
        title,
        max_time,
    };
    crate::write_png_and_svg(&drawing, (820, 620), stem)?;
    Ok(figure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_risk_rank() {
        let (g, names) = risk_groups(&[0.3, 0.1, 0.9, 0.5], 2);
        assert_eq!(g, vec![0, 0, 1, 1]);
        assert_eq!(names, vec!["low risk", "high risk"]);
        let (g, _) = risk_groups(&[5.0, 4.0, 3.0, 2.0, 1.0, 0.0], 3);
        assert_eq!(g, vec![2, 2, 1, 1, 0, 0]);
    }

    #[test]
    fn round_table_times() {
        assert_eq!(table_times(100.0), vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        assert_eq!(table_times(23.0), vec![0.0, 5.0, 10.0, 15.0, 20.0]);
    }

    /// Two groups that differ: the high-risk group dies early. The figure's numbers are the
    /// metrics crate's (Kaplan–Meier, log-rank), both files are written, the at-risk table counts
    /// by hand.
    #[test]
    fn draws_curves_with_logrank_and_numbers_at_risk() {
        let time: Vec<f64> = (0..20)
            .map(|i| {
                if i < 10 {
                    20.0 + i as f64 * 3.0
                } else {
                    1.0 + i as f64
                }
            })
            .collect();
        let event: Vec<bool> = (0..20).map(|i| i % 4 != 0).collect();
        let risk: Vec<f64> = (0..20).map(|i| i as f64).collect();
        let (group, names) = risk_groups(&risk, 2);
        let d = tempfile::tempdir().unwrap();
        let stem = d.path().join("km");
        let o = Outcomes::new(&time, &event).unwrap();
        let fig = plot(o, &group, &names, "months", "test", &stem).unwrap();
        assert!(fig.logrank.p < 0.01, "{:?}", fig.logrank);
        assert_eq!(fig.logrank, logrank(o, &group).unwrap());
        // Low-risk times 20, 23, …, 47; at 20 all ten are at risk, at 40 three (41, 44, 47).
        assert_eq!(fig.at_risk_times, vec![0.0, 10.0, 20.0, 30.0, 40.0]);
        assert_eq!(fig.at_risk[0], vec![10, 10, 10, 6, 3]);
        // High-risk times 11 … 20: ten at risk until 11, none after 20.
        assert_eq!(fig.at_risk[1], vec![10, 10, 1, 0, 0]);
        let png = std::fs::read(d.path().join("km.png")).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let svg = std::fs::read_to_string(d.path().join("km.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("high risk"));
        assert!(plot(o, &group[..3], &names, "months", "t", &stem).is_err());
    }
}
