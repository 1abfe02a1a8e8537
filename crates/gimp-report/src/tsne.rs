//! Fig. 2 of the paper: t-SNE of patient embeddings (`CLS_pat`) coloured by class, after PCA to
//! 50 dimensions (t-SNE on raw 1024-d embeddings is close to random). Deterministic for a seed:
//! PCA by seeded subspace iteration, t-SNE from a seeded initial embedding with the exact
//! (not Barnes-Hut) gradient.

use crate::draw_err as err;
use gimp_io::DataError;
use plotters::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::path::Path;

/// Projects rows onto their top `k` principal components (centred), by subspace iteration.
pub fn pca(rows: &[Vec<f32>], k: usize, seed: u64) -> Vec<Vec<f32>> {
    let n = rows.len();
    let d = rows.first().map_or(0, |r| r.len());
    let k = k.min(d).min(n.max(1));
    if d <= k {
        return rows.to_vec();
    }
    let mean: Vec<f64> = (0..d)
        .map(|j| rows.iter().map(|r| r[j] as f64).sum::<f64>() / n as f64)
        .collect();
    let x: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| r.iter().zip(&mean).map(|(v, m)| *v as f64 - m).collect())
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0, 1.0).expect("valid");
    // q: k vectors of length d.
    let mut q: Vec<Vec<f64>> = (0..k)
        .map(|_| (0..d).map(|_| normal.sample(&mut rng)).collect())
        .collect();
    for _ in 0..10 {
        // q ← Xᵀ X q, then orthonormalise (modified Gram–Schmidt).
        let xq: Vec<Vec<f64>> = q
            .iter()
            .map(|v| {
                x.iter()
                    .map(|r| r.iter().zip(v).map(|(a, b)| a * b).sum())
                    .collect()
            })
            .collect();
        q = xq
            .iter()
            .map(|u: &Vec<f64>| {
                (0..d)
                    .map(|j| x.iter().zip(u).map(|(r, w)| r[j] * w).sum())
                    .collect()
            })
            .collect();
        for i in 0..q.len() {
            for p in 0..i {
                let dot: f64 = q[i].iter().zip(&q[p]).map(|(a, b)| a * b).sum();
                let prev = q[p].clone();
                for (a, b) in q[i].iter_mut().zip(&prev) {
                    *a -= dot * b;
                }
            }
            let norm = q[i].iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
            q[i].iter_mut().for_each(|a| *a /= norm);
        }
    }
    x.iter()
        .map(|r| {
            q.iter()
                .map(|v| r.iter().zip(v).map(|(a, b)| a * b).sum::<f64>() as f32)
                .collect()
        })
        .collect()
}

/// 2-D t-SNE of `rows` (after PCA to 50 dimensions).
pub fn tsne(rows: &[Vec<f32>], perplexity: f32, epochs: usize, seed: u64) -> Vec<[f32; 2]> {
    let reduced = pca(rows, 50, seed);
    let n = reduced.len();
    let samples: Vec<&[f32]> = reduced.iter().map(|r| r.as_slice()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x75_4E);
    let normal = Normal::new(0.0f32, 1e-4).expect("valid");
    let init: Vec<f32> = (0..2 * n).map(|_| normal.sample(&mut rng)).collect();
    // Perplexity must stay below (n − 1) / 3 for the affinity search.
    let perplexity = perplexity.min(((n as f32) - 1.0) / 3.0).max(1.0);
    // bhtsne reduces in parallel; one thread fixes the order of its sums, hence the result.
    let run = || {
        let mut t = bhtsne::tSNE::<f32, &[f32], 2>::new(&samples);
        t.perplexity(perplexity)
            .epochs(epochs)
            .initial_embedding(init.clone())
            .exact(|a, b| {
                a.iter()
                    .zip(b.iter())
                    .map(|(x, y)| (x - y).powi(2))
                    .sum::<f32>()
                    .sqrt()
            });
        t.embedding()
    };
    let emb = match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
        Ok(pool) => pool.install(run),
        Err(_) => run(),
    };
    emb.chunks(2).map(|c| [c[0], c[1]]).collect()
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    points: &[[f32; 2]],
    labels: &[usize],
    classes: &[String],
    title: &str,
    out: &Path,
) -> Result<(), DataError>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| err(out, e))?;
    let (mut x0, mut x1, mut y0, mut y1) = (
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::INFINITY,
        f32::NEG_INFINITY,
    );
    for p in points {
        x0 = x0.min(p[0]);
        x1 = x1.max(p[0]);
        y0 = y0.min(p[1]);
        y1 = y1.max(p[1]);
    }
    let (px, py) = (((x1 - x0) * 0.05).max(1e-3), ((y1 - y0) * 0.05).max(1e-3));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .build_cartesian_2d((x0 - px)..(x1 + px), (y0 - py)..(y1 + py))
        .map_err(|e| err(out, e))?;
    chart
        .configure_mesh()
        .disable_mesh()
        .draw()
        .map_err(|e| err(out, e))?;
    for (c, name) in classes.iter().enumerate() {
        let color = Palette99::pick(c).to_rgba();
        chart
            .draw_series(
                points
                    .iter()
                    .zip(labels)
                    .filter(|(_, l)| **l == c)
                    .map(|(p, _)| Circle::new((p[0], p[1]), 4, color.filled())),
            )
            .map_err(|e| err(out, e))?
            .label(name.as_str())
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(out, e))?;
    root.present().map_err(|e| err(out, e))
}

struct Scatter<'a> {
    points: &'a [[f32; 2]],
    labels: &'a [usize],
    classes: &'a [String],
    title: &'a str,
}

impl crate::Figure for Scatter<'_> {
    fn draw_on<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, plotters::coord::Shift>,
        out: &Path,
    ) -> Result<(), DataError>
    where
        DB::ErrorType: 'static,
    {
        draw(
            root,
            self.points,
            self.labels,
            self.classes,
            self.title,
            out,
        )
    }
}

/// Writes the scatter plot as `{stem}.png` and `{stem}.svg`.
pub fn plot(
    points: &[[f32; 2]],
    labels: &[usize],
    classes: &[String],
    title: &str,
    stem: &Path,
) -> Result<(), DataError> {
    let scatter = Scatter {
        points,
        labels,
        classes,
        title,
    };
    crate::write_png_and_svg(&scatter, (720, 640), stem)
}

#[cfg(test)]
mod tests {
    #[test]
    fn pca_finds_the_dominant_direction_and_tsne_separates_clusters() {
        // Two clusters along one axis of a 60-d space.
        let rows: Vec<Vec<f32>> = (0..40)
            .map(|i| {
                (0..60)
                    .map(|j| {
                        if j == 7 {
                            if i < 20 {
                                -5.0
                            } else {
                                5.0
                            }
                        } else {
                            ((i * 31 + j * 17) % 13) as f32 * 0.01
                        }
                    })
                    .collect()
            })
            .collect();
        let p = super::pca(&rows, 3, 1);
        assert_eq!(p[0].len(), 3);
        assert!(p[0][0].abs() > 4.0 && p[0][0].signum() != p[39][0].signum());
        let e = super::tsne(&rows, 10.0, 300, 1);
        let e2 = super::tsne(&rows, 10.0, 300, 1);
        assert_eq!(e, e2, "deterministic for a seed");
        let centre = |r: std::ops::Range<usize>| {
            let n = r.len() as f32;
            r.fold([0.0f32, 0.0], |a, i| {
                [a[0] + e[i][0] / n, a[1] + e[i][1] / n]
            })
        };
        let (a, b) = (centre(0..20), centre(20..40));
        let spread = (0..20)
            .map(|i| ((e[i][0] - a[0]).powi(2) + (e[i][1] - a[1]).powi(2)).sqrt())
            .fold(0.0f32, f32::max);
        let gap = ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
        assert!(gap > spread, "gap {gap}, spread {spread}");
        let d = tempfile::tempdir().unwrap();
        let labels: Vec<usize> = (0..40).map(|i| usize::from(i >= 20)).collect();
        super::plot(
            &e,
            &labels,
            &["A".into(), "B".into()],
            "test",
            &d.path().join("fig"),
        )
        .unwrap();
        assert!(d.path().join("fig.png").is_file() && d.path().join("fig.svg").is_file());
    }
}
