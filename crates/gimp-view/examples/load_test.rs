//! The viewer under load, on 127.0.0.1 only: `cargo run --release -p gimp-view --example
//! load_test [SLIDE]` (default: the repository's slide). A fresh server (empty tile cache) is
//! asked for its first tile, then for every tile of the four finest levels one at a time (each
//! rendered once: cold latencies), then for 200 tiles at once. Prints the figures
//! docs/PERFORMANCE.md quotes and exits 1 when the first tile takes 100 ms or more, the 95th
//! percentile 50 ms or more, or any request fails.

use gimp_view::dzi::Pyramid;
use gimp_view::server::{router, AppState};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

fn fetch(url: &str) -> Result<usize, String> {
    let r = ureq::get(url).call().map_err(|e| format!("{url}: {e}"))?;
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut r.into_reader(), &mut body).map_err(|e| e.to_string())?;
    if body.get(..2) != Some(&[0xFF, 0xD8]) {
        return Err(format!("{url}: not a JPEG"));
    }
    Ok(body.len())
}

fn main() {
    let slide = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/slides/cmu_small_region.svs")
        });
    let st = Arc::new(AppState {
        catalog: gimp_view::catalog::Catalog::open(std::slice::from_ref(&slide))
            .unwrap_or_else(|e| panic!("{e}")),
        cache: gimp_view::cache::TileCache::new(256 << 20),
        openseadragon: PathBuf::from(gimp_view::OPENSEADRAGON_DIR),
    });
    let pyramid = st.catalog.slides[0]
        .pyramid()
        .unwrap_or_else(|| panic!("{}: cannot be opened", slide.display()));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(l.local_addr().expect("address")).expect("send");
            axum::serve(l, router(st)).await.expect("serve");
        });
    });
    let addr = rx.recv().expect("server address");
    let url = |level: u32, c: u64, r: u64| {
        format!("http://{addr}/slides/0/image_files/{level}/{c}_{r}.jpeg")
    };
    let max = pyramid.max_level();

    let t = Instant::now();
    fetch(&url(max, 0, 0)).unwrap_or_else(|e| panic!("{e}"));
    let first_ms = t.elapsed().as_secs_f64() * 1e3;

    let tiles = |p: &Pyramid| {
        let mut v = Vec::new();
        for level in max.saturating_sub(3)..=max {
            let (w, h) = p.level_size(level).expect("level");
            for c in 0..w.div_ceil(256) {
                for r in 0..h.div_ceil(256) {
                    if (level, c, r) != (max, 0, 0) {
                        v.push((level, c, r));
                    }
                }
            }
        }
        v
    };
    let all = tiles(&pyramid);
    let mut ms = Vec::new();
    for &(l, c, r) in &all {
        let t = Instant::now();
        fetch(&url(l, c, r)).unwrap_or_else(|e| panic!("{e}"));
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let pct = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    let (p50, p95, worst) = (pct(0.5), pct(0.95), ms[ms.len() - 1]);

    let n = 200;
    let barrier = Arc::new(std::sync::Barrier::new(n));
    let t = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (l, c, r) = all[i % all.len()];
            let u = url(l, c, r);
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                let t = Instant::now();
                fetch(&u).map(|_| t.elapsed().as_secs_f64() * 1e3)
            })
        })
        .collect();
    let results: Vec<Result<f64, String>> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let wall = t.elapsed().as_secs_f64() * 1e3;
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let mut conc: Vec<f64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    conc.sort_by(f64::total_cmp);
    let conc_p95 = conc
        .get(((conc.len().max(1) - 1) as f64 * 0.95) as usize)
        .copied()
        .unwrap_or(f64::NAN);

    println!(
        "slide {} ({}×{}, DZI levels 0–{max})",
        slide.display(),
        pyramid.width,
        pyramid.height
    );
    println!("first tile (cold server)          {first_ms:.1} ms");
    println!(
        "{} tiles of levels {}–{max}, one at a time, each rendered once: p50 {p50:.1} ms, p95 {p95:.1} ms, max {worst:.1} ms",
        ms.len(),
        max.saturating_sub(3)
    );
    println!(
        "{n} concurrent requests: {} ok, {} errors, {wall:.0} ms in all, p95 {conc_p95:.1} ms",
        n - errors.len(),
        errors.len()
    );
    for e in errors.iter().take(5) {
        println!("  error: {e}");
    }
    let ok = first_ms < 100.0 && p95 < 50.0 && errors.is_empty();
    println!(
        "{}",
        if ok {
            "PASS (first < 100 ms, p95 < 50 ms, no errors)"
        } else {
            "FAIL"
        }
    );
    std::process::exit(if ok { 0 } else { 1 });
}
