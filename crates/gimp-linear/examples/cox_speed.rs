//! Times `cox_baseline::fit_choosing_penalty` (5 inner folds × the 5 default penalties, then
//! the refit) on synthetic standardised cohorts of the shapes the linear start meets:
//!
//! `cargo run --release -p gimp-linear --example cox_speed [PATIENTSxGENES ...]`
//!
//! (default `330x2000 330x15000 120x8700`). With `COX_SPEED_DUMP=DIR` each fit's coefficients
//! are written to `DIR/PATIENTSxGENES.txt`, one a line, to compare two builds' results.

use gimp_linear::cox_baseline::{fit_choosing_penalty, DEFAULT_PENALTIES};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// `n` patients × `p` genes, each gene z-scored with the sample standard deviation as the
/// baseline's standardiser leaves them; survival times depending on ten genes, rounded to whole
/// weeks (so some are tied), about a third censored.
fn cohort(n: usize, p: usize, seed: u64) -> (Vec<Vec<f64>>, Vec<f64>, Vec<bool>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut normal = || {
        // Box–Muller: the example needs no distribution crate.
        let (u, v): (f64, f64) = (rng.gen::<f64>().max(1e-300), rng.gen());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    };
    let mut x: Vec<Vec<f64>> = (0..n).map(|_| (0..p).map(|_| normal()).collect()).collect();
    for j in 0..p {
        let mean = x.iter().map(|r| r[j]).sum::<f64>() / n as f64;
        let var = x.iter().map(|r| (r[j] - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        for r in &mut x {
            r[j] = (r[j] - mean) / var.sqrt();
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 1);
    let mut time = Vec::with_capacity(n);
    let mut event = Vec::with_capacity(n);
    for r in &x {
        let risk: f64 = r[..10.min(p)].iter().sum::<f64>() * 0.3;
        let t = -rng.gen::<f64>().max(1e-300).ln() * 1000.0 / risk.exp();
        let c = rng.gen::<f64>() * 2500.0;
        time.push((t.min(c) / 7.0).ceil() * 7.0);
        event.push(t <= c);
    }
    (x, time, event)
}

fn main() {
    let shapes: Vec<String> = std::env::args().skip(1).collect();
    let shapes = match shapes.is_empty() {
        true => vec!["330x2000".into(), "330x15000".into(), "120x8700".into()],
        false => shapes,
    };
    let dump = std::env::var_os("COX_SPEED_DUMP").map(std::path::PathBuf::from);
    for shape in &shapes {
        let (n, p) = shape
            .split_once('x')
            .and_then(|(n, p)| Some((n.parse().ok()?, p.parse().ok()?)))
            .unwrap_or_else(|| panic!("{shape}: expected PATIENTSxGENES"));
        let (x, time, event) = cohort(n, p, 7);
        let start = Instant::now();
        let (penalty, model) =
            fit_choosing_penalty(&x, &time, &event, &DEFAULT_PENALTIES, 5, 11).unwrap();
        let seconds = start.elapsed().as_secs_f64();
        let norm = model.coef.iter().map(|c| c * c).sum::<f64>().sqrt();
        println!(
            "{n} patients × {p} genes ({} events): {seconds:.3} s; penalty {penalty}, \
             ‖β‖ {norm:.12e}, {} iterations",
            event.iter().filter(|&&e| e).count(),
            model.iterations
        );
        if let Some(dir) = &dump {
            let text: String = model.coef.iter().map(|c| format!("{c:e}\n")).collect();
            std::fs::write(dir.join(format!("{shape}.txt")), text).unwrap();
        }
    }
}
