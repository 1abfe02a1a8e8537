//! Reads a whole slide level in square regions, as patch extraction does, and prints the time:
//! `cargo run --release -p gimp-slide --example read_speed -- SLIDE [LEVEL] [REGION]` (defaults:
//! level 0, 256-pixel regions). Each tile is decoded once (the regions follow the tile grid's
//! rows, the reader's cache holds the row). With `DUMP=FILE` the level's RGB bytes are also
//! written to FILE (row by row, no header), for a pixel comparison. Used by
//! `bench/slide_formats.sh`.

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: read_speed SLIDE [LEVEL] [REGION]");
        std::process::exit(2);
    };
    let level: usize = args.get(2).map_or(Ok(0), |a| a.parse())?;
    let region: u32 = args.get(3).map_or(Ok(256), |a| a.parse())?;
    let t = Instant::now();
    let s = gimp_slide::open(std::path::Path::new(path))?;
    let open_s = t.elapsed().as_secs_f64();
    let l = s.levels()[level];
    let ds = l.downsample;
    let t = Instant::now();
    let mut checksum = 0u64;
    let dump = std::env::var_os("DUMP");
    let mut whole = dump
        .as_ref()
        .map(|_| image::RgbImage::new(l.width as u32, l.height as u32));
    for y in (0..l.height).step_by(region as usize) {
        for x in (0..l.width).step_by(region as usize) {
            let x0 = (x as f64 * ds) as i64;
            let y0 = (y as f64 * ds) as i64;
            let img = s.read_region(x0, y0, level, region, region)?;
            checksum = checksum.wrapping_add(img.as_raw().iter().map(|&v| v as u64).sum::<u64>());
            if let Some(w) = whole.as_mut() {
                image::imageops::replace(w, &img, x as i64, y as i64);
            }
        }
    }
    let read_s = t.elapsed().as_secs_f64();
    if let (Some(file), Some(w)) = (dump, whole) {
        std::fs::write(file, w.as_raw())?;
    }
    let mp = (l.width * l.height) as f64 / 1e6;
    println!(
        "{path}: level {level} {}x{}: open {open_s:.3} s, read {read_s:.3} s ({:.1} Mpx/s), checksum {checksum}",
        l.width,
        l.height,
        mp / read_s
    );
    Ok(())
}
