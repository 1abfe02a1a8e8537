//! Compares an encoder with a reference output file written by `tools/make_vit_fixtures.py`
//! (the weights by the reference's names plus `test.rgb_*` inputs and `test.out_*` outputs):
//! the full-size check of docs/SLIDES.md, on files too large for the repository.
//!
//! `cargo run --release -p gimp-extract --example encoder_check -- uni_v1 /tmp/vit_uni_v1_full.safetensors`

use gimp_extract::encoders;
use std::path::Path;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(name), Some(file)) = (args.get(1), args.get(2)) else {
        return Err("usage: encoder_check ENCODER FILE".into());
    };
    let spec = encoders::find(name).ok_or(format!("unknown encoder {name}"))?;
    let path = Path::new(file);
    let all = gimp_io::weights::read(path)?;
    let (weights, test): (
        std::collections::BTreeMap<_, _>,
        std::collections::BTreeMap<_, _>,
    ) = all.into_iter().partition(|(k, _)| !k.starts_with("test."));
    let t = Instant::now();
    let enc = spec.load_from(weights, path)?;
    eprintln!("loaded in {:.1} s", t.elapsed().as_secs_f64());
    for case in ["native", "other"] {
        let Some(rgb) = test.get(&format!("test.rgb_{case}")) else {
            continue;
        };
        let (b, _, side, _) = rgb.dims4()?;
        let bytes: Vec<u8> = rgb.flatten_all()?.to_vec1()?;
        let t = Instant::now();
        let out = enc.forward_sized(&bytes, b, side)?;
        let secs = t.elapsed().as_secs_f64();
        let want: Vec<f32> = test[&format!("test.out_{case}")].flatten_all()?.to_vec1()?;
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = out
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        println!(
            "{name} {b} × {side} px: {} values, max |Δ| / max |ref| = {:.2e} ({secs:.2} s)",
            out.len(),
            diff / scale
        );
    }
    Ok(())
}
