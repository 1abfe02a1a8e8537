//! Reading one 150,000 × 1024 bag — the largest slides of the paper's cohort — from a CLAM
//! feature file (one row per HDF5 chunk, as CLAM writes it) and from the memory-mapped cache.
//!
//! `cargo bench -p gimp-cohort --bench bag_read` (set GIMP_BENCH_PATCHES to change the size).

use criterion::{criterion_group, criterion_main, Criterion};
use gimp_cohort::cache::FeatureCache;
use gimp_io::h5::{self, Chunking};
use gimp_io::Bag;
use std::hint::black_box;
use std::time::Duration;

fn make_bag(dir: &std::path::Path, n: usize, d: usize) -> std::path::PathBuf {
    let path = dir.join("slide.h5");
    let features: Vec<f32> = (0..n * d)
        .map(|i| ((i * 2_654_435_761) % 1000) as f32 * 1e-3)
        .collect();
    let coords = Some(
        (0..n as i64)
            .map(|i| [(i % 400) * 256, (i / 400) * 256])
            .collect(),
    );
    let bag = Bag::from_parts(&path, n, d, features, coords).expect("valid bag");
    h5::write_features(&path, &bag, Chunking::Clam).expect("write h5");
    path
}

fn bench(c: &mut Criterion) {
    let n: usize = std::env::var("GIMP_BENCH_PATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150_000);
    let d = 1024;
    let dir = tempfile::tempdir().expect("temp dir");
    let src = make_bag(dir.path(), n, d);
    let cache = FeatureCache::new(dir.path().join("cache"));
    cache.build(&src, "slide", u64::MAX).expect("cache");
    let mut g = c.benchmark_group(format!("read_bag_{n}x{d}"));
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));
    g.bench_function("clam_h5", |b| {
        b.iter(|| {
            let bag = gimp_io::h5::read_features(&src, u64::MAX).expect("read");
            black_box(bag.features.iter().sum::<f32>())
        })
    });
    g.bench_function("mmap_cache", |b| {
        b.iter(|| {
            let bag = cache.open(&src, "slide").expect("open").expect("present");
            black_box(bag.features().iter().sum::<f32>())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
