//! The viewer under load, on 127.0.0.1 only: `cargo run --release -p gimp-view --example
//! load_test [SLIDE]` (default: the repository's slide). A fresh server (empty tile cache, slide
//! not opened) is asked for its first tile, then for the tiles of the four finest levels one at
//! a time (each rendered once: cold latencies; on a slide larger than 16 × 16 tiles, those of a
//! window at its centre, 16 × 16 tiles of the finest level and what covers it above), then:
//! 200 requests at once for tiles already asked for (the cache), 200 at once for tiles of the
//! finest level never asked for, and 200 at once for new tiles of the four finest levels mixed
//! (every one rendered or read from the file). Prints the figures docs/PERFORMANCE.md quotes
//! and exits 1 when the first tile takes 100 ms or more, the one-at-a-time 95th percentile or
//! the cached concurrent one 50 ms or more, or any request fails.

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
    // Opened here (not timed): the first request of a page is its `/api/slides/0`, which opens it.
    let opened = std::time::Instant::now();
    if let Some(Err(e)) = st.catalog.reader(0) {
        panic!("{e}");
    }
    let open_ms = opened.elapsed().as_secs_f64() * 1e3;
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

    // The window: the finest level's 16 × 16 tiles at the centre (the whole level when it is
    // smaller), and the tiles covering it at the three levels above.
    let (w, h) = pyramid.level_size(max).expect("level");
    let (cols, rows) = (w.div_ceil(256), h.div_ceil(256));
    let span = 16u64;
    let (c0, r0) = (
        (cols / 2).saturating_sub(span / 2),
        (rows / 2).saturating_sub(span / 2),
    );
    let window = |level: u32, c0: u64, r0: u64, span: u64| {
        let shift = max - level;
        let (w, h) = pyramid.level_size(level).expect("level");
        let (cols, rows) = (w.div_ceil(256), h.div_ceil(256));
        let mut v = Vec::new();
        for c in (c0 >> shift)..((c0 + span).div_ceil(1 << shift)).min(cols) {
            for r in (r0 >> shift)..((r0 + span).div_ceil(1 << shift)).min(rows) {
                v.push((level, c, r));
            }
        }
        v
    };
    let mut all = Vec::new();
    for level in max.saturating_sub(3)..=max {
        all.extend(window(level, c0, r0, span));
    }
    let first = all[0];

    let t = Instant::now();
    fetch(&url(first.0, first.1, first.2)).unwrap_or_else(|e| panic!("{e}"));
    let first_ms = t.elapsed().as_secs_f64() * 1e3;

    let mut ms = Vec::new();
    for &(l, c, r) in &all[1..] {
        let t = Instant::now();
        fetch(&url(l, c, r)).unwrap_or_else(|e| panic!("{e}"));
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let pct = |v: &[f64], q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    let (p50, p95, worst) = (pct(&ms, 0.5), pct(&ms, 0.95), ms[ms.len() - 1]);

    let n = 200;
    let cached: Vec<(u32, u64, u64)> = (0..n).map(|i| all[i % all.len()]).collect();
    let cached = concurrently(&cached, &url);

    // Tiles nobody asked for yet: the finest level right of the window, then the four finest
    // levels below it (each tile once).
    let fresh_finest: Vec<_> = (0..rows)
        .flat_map(|r| (0..cols).map(move |c| (max, c, r)))
        .filter(|&(_, c, r)| !(c0..c0 + span).contains(&c) || !(r0..r0 + span).contains(&r))
        .skip(((rows / 2) * cols) as usize)
        .take(n)
        .collect();
    let cold_finest = (fresh_finest.len() == n).then(|| concurrently(&fresh_finest, &url));
    // A quarter of the way down, above the window: 50 tiles of each of the four finest levels.
    let mut fresh_mixed = Vec::new();
    for level in max.saturating_sub(3)..=max {
        let shift = max - level;
        let (w, _) = pyramid.level_size(level).expect("level");
        let cols = w.div_ceil(256);
        let start = (r0 >> shift) / 2;
        let lv: Vec<_> = (0..(n / 4) as u64)
            .map(|i| (level, i % cols, start + i / cols))
            .filter(|&(_, _, r)| r < r0 >> shift)
            .collect();
        fresh_mixed.extend(lv);
    }
    let cold_mixed = (fresh_mixed.len() == n).then(|| concurrently(&fresh_mixed, &url));

    println!(
        "slide {} ({}×{}, DZI levels 0–{max}), opened in {open_ms:.0} ms",
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
    let mut errors = Vec::new();
    for (what, r) in [
        ("cached tiles", Some(&cached)),
        ("new tiles of the finest level", cold_finest.as_ref()),
        ("new tiles of the four finest levels", cold_mixed.as_ref()),
    ] {
        match r {
            Some(r) => {
                println!(
                    "{n} concurrent requests, {what}: {} ok, {} errors, {:.0} ms in all, p50 {:.1} ms, p95 {:.1} ms",
                    r.ok,
                    r.errors.len(),
                    r.wall_ms,
                    r.p50,
                    r.p95
                );
                errors.extend(r.errors.iter().cloned());
            }
            None => println!("{n} concurrent requests, {what}: the slide has too few tiles"),
        }
    }
    for e in errors.iter().take(5) {
        println!("  error: {e}");
    }
    let ok = first_ms < 100.0 && p95 < 50.0 && cached.p95 < 50.0 && errors.is_empty();
    println!(
        "{}",
        if ok {
            "PASS (first < 100 ms, one-at-a-time and cached-concurrent p95 < 50 ms, no errors)"
        } else {
            "FAIL"
        }
    );
    std::process::exit(if ok { 0 } else { 1 });
}

struct Burst {
    ok: usize,
    errors: Vec<String>,
    wall_ms: f64,
    p50: f64,
    p95: f64,
}

/// One request per tile, one thread each, released together.
fn concurrently(tiles: &[(u32, u64, u64)], url: &dyn Fn(u32, u64, u64) -> String) -> Burst {
    let barrier = Arc::new(std::sync::Barrier::new(tiles.len()));
    let t = Instant::now();
    let handles: Vec<_> = tiles
        .iter()
        .map(|&(l, c, r)| {
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
    let wall_ms = t.elapsed().as_secs_f64() * 1e3;
    let errors: Vec<String> = results.iter().filter_map(|r| r.clone().err()).collect();
    let mut ms: Vec<f64> = results.iter().filter_map(|r| r.clone().ok()).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        ms.get(((ms.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Burst {
        ok: ms.len(),
        errors,
        wall_ms,
        p50: at(0.5),
        p95: at(0.95),
    }
}
