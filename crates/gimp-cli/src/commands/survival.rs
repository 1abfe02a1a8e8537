use anyhow::{anyhow, Result};
use gimp_metrics::survival::{report, Outcomes};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Survival metrics of predicted risks: a CSV/TSV with `time`, `event` (1 = event) and `risk`
    /// (higher = worse) per patient → Harrell's c-index with pair counts and a bootstrap
    /// interval, Uno's c-index and the cumulative/dynamic AUC (with --train), the log-rank test
    /// between risk halves; --plot draws Kaplan–Meier curves of the halves (PNG + SVG).
    Metrics {
        /// The scored patients.
        test: PathBuf,
        /// Training outcomes (`time`, `event`) for the censoring distribution of the IPCW metrics.
        #[arg(long)]
        train: Option<PathBuf>,
        /// Truncation time of Uno's c-index.
        #[arg(long)]
        tau: Option<f64>,
        /// Evaluation times of the dynamic AUC, comma-separated (default: quartiles of the test
        /// event times).
        #[arg(long, value_delimiter = ',')]
        times: Option<Vec<f64>>,
        /// Bootstrap resamples of the c-index interval.
        #[arg(long, default_value_t = 1000)]
        resamples: usize,
        /// Seed of the bootstrap resamples.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write Kaplan–Meier curves to STEM.png and STEM.svg.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Time unit for the figure's axis.
        #[arg(long, default_value = "months")]
        unit: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: Command) -> Result<ExitCode> {
    let Command::Metrics {
        test,
        train,
        tau,
        times,
        resamples,
        seed,
        plot,
        unit,
        json,
    } = cmd;
    let scored = gimp_io::survival_table::read(&test, true)?;
    let outcomes = Outcomes::new(&scored.time, &scored.event)?;
    let train_table = train
        .as_ref()
        .map(|p| gimp_io::survival_table::read(p, false))
        .transpose()?;
    let train_outcomes = train_table
        .as_ref()
        .map(|t| Outcomes::new(&t.time, &t.event))
        .transpose()?;
    let r = report(
        train_outcomes,
        outcomes,
        &scored.risk,
        tau,
        times.as_deref(),
        resamples,
        seed,
    )
    .map_err(|e| anyhow!("{}: {e}", test.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let h = &r.harrell;
        println!("patients {}   events {}", r.patients, r.events);
        println!(
            "Harrell's c-index {:.4} (95% bootstrap {:.4}–{:.4}); pairs: {} concordant, {} discordant, {} tied risk, {} tied time",
            h.cindex, r.harrell_interval.low, r.harrell_interval.high, h.concordant, h.discordant, h.tied_risk, h.tied_time
        );
        match &r.uno {
            Ok(u) => println!("Uno's c-index {u:.4}"),
            Err(e) => println!("Uno's c-index: {e}"),
        }
        match &r.dynamic_auc {
            Ok(a) => {
                for (t, v) in a.times.iter().zip(&a.auc) {
                    println!("AUC at {t}: {v:.4}");
                }
                println!("mean AUC {:.4}", a.mean);
            }
            Err(e) => println!("time-dependent AUC: {e}"),
        }
        println!(
            "log-rank, low vs high risk half: χ² {:.4}, p {:.4e}",
            r.logrank_halves.statistic, r.logrank_halves.p
        );
    }
    if let Some(stem) = plot {
        let (group, names) = gimp_report::kaplan_meier::risk_groups(&scored.risk, 2);
        let title = test
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        gimp_report::kaplan_meier::plot(outcomes, &group, &names, &unit, &title, &stem)?;
        if !json {
            println!(
                "Kaplan–Meier curves -> {}",
                stem.with_extension("png").display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
