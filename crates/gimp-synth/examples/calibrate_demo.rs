//! Gene-only logistic-regression accuracy of the demo size over seeds, for a range of subtype
//! programme fractions: `cargo run --release -p gimp-synth --example calibrate_demo`.
use gimp_synth::{calibration::expression_accuracy, Difficulty, Size, SynthConfig};

fn main() {
    for fraction in [0.01f64, 0.03, 0.05, 0.1] {
        let accs: Vec<f64> = (0..8)
            .map(|seed| {
                let mut cfg = SynthConfig::new(Difficulty::Paper, Size::Demo, seed);
                cfg.programme_fraction = fraction;
                expression_accuracy(&cfg)
            })
            .collect();
        let mean = accs.iter().sum::<f64>() / accs.len() as f64;
        println!("programme fraction {fraction}: mean test accuracy {mean:.3} ({accs:.2?})");
    }
}
