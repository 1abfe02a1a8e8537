//! Human-readable rendering of metric reports.

use gimp_metrics::Report;
use std::fmt::Write;

pub fn pct(v: f64) -> String {
    format!("{:.1}", 100.0 * v)
}

/// One evaluated set as a block of text: metrics with intervals, then the confusion matrix.
pub fn report(title: &str, r: &Report, classes: &[String]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{title} (n = {})", r.n);
    let _ = writeln!(
        s,
        "  accuracy           {}%  [95% CI {}–{}, Wilson]",
        pct(r.accuracy.value),
        pct(r.accuracy.low),
        pct(r.accuracy.high)
    );
    let _ = writeln!(s, "  balanced accuracy  {}%", pct(r.balanced_accuracy));
    match &r.roc_auc {
        Some(a) => {
            let _ = writeln!(
                s,
                "  ROC-AUC            {:.3}  [95% CI {:.3}–{:.3}, bootstrap]",
                a.value, a.low, a.high
            );
        }
        None => {
            let _ = writeln!(s, "  ROC-AUC            n/a (one class absent)");
        }
    }
    let _ = writeln!(s, "  macro F1           {:.3}", r.macro_f1);
    let _ = writeln!(
        s,
        "  calibration (ECE)  {:.3}  (top-label, 15 bins; 0 is calibrated)",
        r.ece
    );
    let w = classes.iter().map(|c| c.len()).max().unwrap_or(4).max(6);
    let _ = write!(
        s,
        "  confusion (rows = true, columns = predicted)\n  {:w$}",
        ""
    );
    for c in classes {
        let _ = write!(s, " {c:>w$}");
    }
    let _ = writeln!(s);
    for (c, row) in classes.iter().zip(&r.confusion) {
        let _ = write!(s, "  {c:<w$}");
        for v in row {
            let _ = write!(s, " {v:>w$}");
        }
        let _ = writeln!(s);
    }
    s
}
