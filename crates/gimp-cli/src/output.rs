//! What commands print about a result, and the files they leave beside a run's checkpoint
//! (`metrics.json`, `learning_curves.png`).

use anyhow::Result;
use gimp_linear::baseline::LogregResult;
use gimp_linear::cox_baseline::CoxResult;
use gimp_train::task::{Scores, StageResult};
use std::path::Path;

/// Prints the logistic-regression baseline's splits and, over several, the mean test accuracy.
pub fn print_logreg(r: &LogregResult) {
    for f in &r.folds {
        println!(
            "split {}: {} training patients, {} genes, L-BFGS {} iterations{}",
            f.fold,
            f.train,
            r.genes,
            f.iterations,
            if f.converged { "" } else { " (not converged)" }
        );
        if let Some(v) = &f.val {
            print!("{}", crate::table::report("  validation", v, &r.classes));
        }
        print!("{}", crate::table::report("  test", &f.test, &r.classes));
    }
    if r.folds.len() > 1 {
        println!(
            "test accuracy over {} splits: {}% ± {} (mean ± std)",
            r.folds.len(),
            crate::table::pct(r.test_accuracy_mean),
            crate::table::pct(r.test_accuracy_std)
        );
    }
}

/// Prints the Cox baseline's splits and, over several, the mean test c-index.
pub fn print_cox(r: &CoxResult) {
    for f in &r.folds {
        let (scores, what) = match f.val_cindex.is_empty() {
            true => (&f.inner_cindex, "inner cross-validation c-index"),
            false => (&f.val_cindex, "validation c-index"),
        };
        let chosen = if scores.is_empty() {
            String::new()
        } else {
            let by_penalty: Vec<String> = r
                .penalties
                .iter()
                .zip(scores)
                .map(|(l, c)| format!("{l}: {c:.3}"))
                .collect();
            format!(" ({what} {})", by_penalty.join(", "))
        };
        println!(
            "split {}: {} training patients ({} events), {} genes, penalty {}{chosen}, Newton {} iterations{}",
            f.fold,
            f.train,
            f.train_events,
            r.genes,
            f.penalty,
            f.iterations,
            if f.converged { "" } else { " (not converged)" }
        );
        println!(
            "  test: {} patients, {} events, Harrell's c-index {:.4} (95% bootstrap {:.4}–{:.4})",
            f.test_patients,
            f.test_events,
            f.test.cindex,
            f.test_interval.low,
            f.test_interval.high
        );
    }
    if r.folds.len() > 1 {
        println!(
            "test c-index over {} splits: {:.4} ± {:.4} (mean ± std)",
            r.folds.len(),
            r.test_cindex_mean,
            r.test_cindex_std
        );
    }
}

/// Writes a stage's `metrics.json` and prints its validation and test metrics.
pub fn report(name: &str, r: &StageResult, classes: &[String], dir: &Path) -> Result<()> {
    gimp_io::atomic::write_bytes_atomic(
        &dir.join("metrics.json"),
        serde_json::to_string_pretty(r)?.as_bytes(),
    )?;
    println!(
        "{name}: best epoch {}, checkpoint {}",
        r.best_epoch + 1,
        r.checkpoint.display()
    );
    for (title, s) in [
        ("  validation", &r.figures.val),
        ("  test", &r.figures.test),
    ] {
        if let Some(s) = s {
            print!("{}", scores(title, s, classes));
        }
    }
    Ok(())
}

/// A run's figures on a part of the split as lines of text, in its task's terms.
pub fn scores(title: &str, s: &Scores, classes: &[String]) -> String {
    match s {
        Scores::Classification(r) => crate::table::report(title, r, classes),
        Scores::Survival(s) => survival_scores(title, s),
    }
}

/// Survival metrics as lines of text: a metric the data cannot give is left out, its reason
/// listed.
pub fn survival_scores(title: &str, s: &gimp_train::task::SurvivalScores) -> String {
    use std::fmt::Write;
    let mut t = format!("{title}: {} patients, {} events\n", s.patients, s.events);
    let c = s.cindex;
    let _ = writeln!(
        t,
        "    Harrell's c-index {:.4} (95% bootstrap {:.4}–{:.4})",
        c.value, c.low, c.high
    );
    if let Some(u) = s.uno {
        let _ = writeln!(t, "    Uno's c-index {u:.4}");
    }
    for (time, auc) in s.auc_times.iter().zip(&s.auc) {
        let _ = writeln!(t, "    AUC at {time:.4}: {auc:.4}");
    }
    if let Some(m) = s.mean_auc {
        let _ = writeln!(t, "    mean time-dependent AUC {m:.4}");
    }
    if let Some(b) = s.integrated_brier {
        let _ = writeln!(t, "    integrated Brier score {b:.4}");
    }
    if let Some(p) = s.logrank_p {
        let _ = writeln!(t, "    log-rank p, risk halves {p:.4e}");
    }
    for n in &s.notes {
        let _ = writeln!(t, "    ({n})");
    }
    t
}

/// [`report`] without printing: metrics.json and learning_curves.png only.
pub fn report_quiet(name: &str, r: &StageResult, dir: &Path) -> Result<()> {
    gimp_io::atomic::write_bytes_atomic(
        &dir.join("metrics.json"),
        serde_json::to_string_pretty(r)?.as_bytes(),
    )?;
    if let Err(e) = gimp_report::learning_curves(
        &dir.join("log.jsonl"),
        &dir.join("learning_curves.png"),
        name,
    ) {
        eprintln!("warning: no learning-curve figure: {e}");
    }
    Ok(())
}
