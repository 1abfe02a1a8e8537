//! Prints the gene-only logistic-regression test accuracy of each difficulty preset over a few
//! seeds: `cargo run --release -p gimp-synth --example calibrate [genes] [seeds]`.
use gimp_synth::{calibration::expression_accuracy, Difficulty, Size, SynthConfig};

fn main() {
    let genes: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(60_480);
    let seeds: u64 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let signal: Option<f64> = std::env::args().nth(3).and_then(|s| s.parse().ok());
    for d in [Difficulty::Easy, Difficulty::Paper, Difficulty::Hard] {
        let mut accs = Vec::new();
        for seed in 0..seeds {
            let mut cfg = SynthConfig::new(d, Size::Paper, seed);
            cfg.n_genes = genes;
            if let Some(s) = signal {
                cfg.expression_signal = s;
            }
            let t = std::time::Instant::now();
            accs.push(expression_accuracy(&cfg));
            eprintln!(
                "{d:?} seed {seed}: {:.4} ({:.1} s)",
                accs.last().unwrap(),
                t.elapsed().as_secs_f64()
            );
        }
        let mean = accs.iter().sum::<f64>() / accs.len() as f64;
        println!("{d:?}: mean test accuracy {mean:.4} over {seeds} seeds");
    }
}
