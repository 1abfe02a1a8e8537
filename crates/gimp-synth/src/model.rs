//! The generative model: patients with a latent subtype and tumour purity, slides made of tissue
//! regions, and expression driven by gene programmes (see `docs/DESIGN.md` §28).
//!
//! Randomness is split into independent ChaCha8 streams — one for the cohort's shared parameters
//! and one per patient — so patients can be generated in parallel and still give the same bytes.

use crate::config::SynthConfig;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution, Normal, StandardNormal};

/// Stream ids: patients use their index; shared parameters use ids above any patient count.
const STREAM_PATIENTS: u64 = 1 << 40;
const STREAM_GENES: u64 = (1 << 40) + 1;
const STREAM_IMAGE: u64 = (1 << 40) + 2;

pub fn stream(seed: u64, id: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(id);
    r
}

/// Non-tumour tissue types and how often a non-tumour region is each.
pub const OTHER_TISSUES: [(&str, f64); 6] = [
    ("stroma", 0.35),
    ("normal_alveolar", 0.25),
    ("necrosis", 0.10),
    ("lymphocytes", 0.15),
    ("blood", 0.08),
    ("artefact", 0.07),
];

/// Number of latent gene programmes besides the subtype ones.
pub const N_PROGRAMMES: usize = 20;

/// Per-patient latent variables.
#[derive(Debug, Clone, PartialEq)]
pub struct PatientLatent {
    pub index: usize,
    pub case_id: String,
    pub true_class: usize,
    /// The label written to `dataset.csv` (differs from `true_class` for label noise).
    pub observed_class: usize,
    pub purity: f64,
    pub n_slides: usize,
    pub has_slide: bool,
    pub has_expression: bool,
    pub expression_in_gdc: bool,
}

pub fn case_id(i: usize) -> String {
    format!("SYN-{:04}", i + 1)
}

pub fn slide_id(case: &str, k: usize) -> String {
    format!("{case}-01Z-00-DX{}", k + 1)
}

/// Draws every patient's latent variables.
pub fn patients(cfg: &SynthConfig) -> Vec<PatientLatent> {
    let mut rng = stream(cfg.seed, STREAM_PATIENTS);
    let c = cfg.classes.len();
    let n = cfg.n_patients;
    let mut classes: Vec<usize> = (0..n).map(|i| i % c).collect();
    classes.shuffle(&mut rng);
    let beta = Beta::new(cfg.purity_beta.0, cfg.purity_beta.1)
        .unwrap_or_else(|_| Beta::new(2.0, 5.0).expect("valid"));
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    let n_no_expr = (cfg.missing_expression * n as f64).round() as usize;
    let n_no_slide = (cfg.missing_slide * n as f64).round() as usize;
    let mut no_expr = vec![false; n];
    let mut no_slide = vec![false; n];
    for &i in &order[..n_no_expr] {
        no_expr[i] = true;
    }
    for &i in &order[n_no_expr..(n_no_expr + n_no_slide).min(n)] {
        no_slide[i] = true;
    }
    (0..n)
        .map(|i| {
            let true_class = classes[i];
            let observed_class = if rng.gen::<f64>() < cfg.label_noise {
                (true_class + 1 + rng.gen_range(0..c - 1)) % c
            } else {
                true_class
            };
            let purity = beta.sample(&mut rng);
            let n_slides = if rng.gen::<f64>() < cfg.second_slide_rate {
                2
            } else {
                1
            };
            let gdc = rng.gen::<f64>() < cfg.gdc_fraction;
            PatientLatent {
                index: i,
                case_id: case_id(i),
                true_class,
                observed_class,
                purity,
                n_slides,
                has_slide: !no_slide[i],
                has_expression: !no_expr[i],
                expression_in_gdc: gdc && !no_expr[i],
            }
        })
        .collect()
}

/// Shared gene parameters.
pub struct GeneModel {
    pub ids: Vec<String>,
    pub names: Vec<String>,
    pub lengths_kb: Vec<f32>,
    baseline: Vec<f32>,
    dropout: Vec<f32>,
    /// (gene, loading) per latent programme.
    programmes: Vec<Vec<(usize, f32)>>,
    /// (gene, loading) per class: the subtype programmes.
    subtype: Vec<Vec<(usize, f32)>>,
}

impl GeneModel {
    pub fn new(cfg: &SynthConfig) -> Self {
        let mut rng = stream(cfg.seed, STREAM_GENES);
        let g = cfg.n_genes;
        let ids = (0..g)
            .map(|i| format!("ENSG{:011}", 1000 + 7 * i))
            .collect();
        let names = (0..g).map(|i| format!("SYNG{}", i + 1)).collect();
        let lengths_kb = (0..g).map(|_| rng.gen_range(0.3f32..8.0)).collect();
        let mut baseline = vec![0f32; g];
        let mut dropout = vec![0f32; g];
        let mut expressed = Vec::new();
        for i in 0..g {
            // Many genes are barely expressed; the rest are log-normal around a few FPKM.
            if rng.gen::<f64>() < 0.35 {
                baseline[i] = rng.gen_range(0.0..0.3);
                dropout[i] = 0.8;
            } else {
                let z: f32 = rng.sample(StandardNormal);
                baseline[i] = (3.0 + 1.5 * z).max(0.5);
                dropout[i] = 0.05 * (-baseline[i] / 2.0).exp();
                expressed.push(i);
            }
        }
        let prog_size = (g / 50).max(5);
        let programmes = (0..N_PROGRAMMES)
            .map(|_| {
                (0..prog_size)
                    .map(|_| {
                        (
                            rng.gen_range(0..g),
                            rng.sample::<f32, _>(StandardNormal) * 0.5,
                        )
                    })
                    .collect()
            })
            .collect();
        expressed.shuffle(&mut rng);
        let per = cfg
            .programme_genes()
            .min(expressed.len() / cfg.classes.len().max(1));
        let subtype = (0..cfg.classes.len())
            .map(|k| {
                expressed[k * per..(k + 1) * per]
                    .iter()
                    .map(|&gi| (gi, rng.gen_range(0.5f32..1.5)))
                    .collect()
            })
            .collect();
        Self {
            ids,
            names,
            lengths_kb,
            baseline,
            dropout,
            programmes,
            subtype,
        }
    }

    /// log2(FPKM + 1) of one sample. `purity` scales the subtype programme (a normal-tissue
    /// sample passes 0).
    pub fn sample(
        &self,
        cfg: &SynthConfig,
        rng: &mut ChaCha8Rng,
        class: usize,
        purity: f64,
    ) -> Vec<f32> {
        let mut x = self.baseline.clone();
        for (prog, f) in self.programmes.iter().zip(programme_factors(rng)) {
            for &(gi, w) in prog {
                x[gi] += w * f;
            }
        }
        let s = (cfg.expression_signal * purity) as f32;
        for &(gi, w) in &self.subtype[class] {
            x[gi] += s * w;
        }
        let noise = Normal::new(0.0f32, cfg.expression_noise as f32)
            .unwrap_or_else(|_| Normal::new(0.0, 0.5).expect("valid"));
        for (i, v) in x.iter_mut().enumerate() {
            *v += noise.sample(rng);
            if rng.gen::<f32>() < self.dropout[i] {
                *v = 0.0;
            }
            *v = v.max(0.0);
        }
        x
    }
}

/// A sample's latent gene-programme activities, standard normal: the first draws of its
/// expression stream. The survival model reads the patient's from a fresh copy of that stream
/// (`crate::survival`), so the risk it carries is written into the expression.
pub fn programme_factors(rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..N_PROGRAMMES)
        .map(|_| rng.sample(StandardNormal))
        .collect()
}

/// log2(FPKM + 1) → FPKM, rounded to 4 decimals as GDC writes it.
pub fn to_fpkm(log_value: f32) -> f32 {
    let v = (log_value.exp2() - 1.0).max(0.0);
    (v * 1e4).round() / 1e4
}

/// The patient's expression stream, separate from the slide stream so that changing the slide
/// parameters does not change the expression.
pub fn expression_rng(cfg: &SynthConfig, p: &PatientLatent) -> ChaCha8Rng {
    stream(cfg.seed ^ 0x5EED_E4E4, p.index as u64)
}

pub fn slide_rng(cfg: &SynthConfig, p: &PatientLatent, k: usize) -> ChaCha8Rng {
    stream(cfg.seed ^ 0x511D_E000 ^ ((k as u64) << 32), p.index as u64)
}

/// Tissue prototypes shared by the cohort: one tumour type per class, then [`OTHER_TISSUES`].
pub struct ImageModel {
    pub tissue_names: Vec<String>,
    prototypes: Vec<Vec<f32>>,
}

impl ImageModel {
    pub fn new(cfg: &SynthConfig) -> Self {
        let mut rng = stream(cfg.seed, STREAM_IMAGE);
        let d = cfg.d_in;
        // ResNet-like scale and sparsity: about half the channels active, exponential magnitudes.
        let proto = |rng: &mut ChaCha8Rng| -> Vec<f32> {
            (0..d)
                .map(|_| {
                    if rng.gen::<f32>() < 0.5 {
                        -rng.gen::<f32>().ln() * 0.6
                    } else {
                        -0.2
                    }
                })
                .collect()
        };
        let tumour_base = proto(&mut rng);
        let mut prototypes = Vec::new();
        let mut tissue_names = Vec::new();
        for name in &cfg.classes {
            let delta: Vec<f32> = (0..d)
                .map(|_| {
                    if rng.gen::<f32>() < 0.3 {
                        rng.sample::<f32, _>(StandardNormal)
                    } else {
                        0.0
                    }
                })
                .collect();
            prototypes.push(
                tumour_base
                    .iter()
                    .zip(&delta)
                    .map(|(b, e)| b + cfg.image_separation as f32 * e)
                    .collect(),
            );
            tissue_names.push(format!("tumour_{name}"));
        }
        for (name, _) in OTHER_TISSUES {
            prototypes.push(proto(&mut rng));
            tissue_names.push(name.to_string());
        }
        Self {
            tissue_names,
            prototypes,
        }
    }
}

/// One generated slide.
pub struct SlideData {
    pub coords: Vec<[i64; 2]>,
    pub features: Vec<f32>,
    pub region: Vec<u32>,
    pub tissue: Vec<u8>,
    /// Level-0 size in pixels, for the patch file's attributes.
    pub width: i64,
    pub height: i64,
}

pub const PATCH: i64 = 256;

/// Lays out tissue blobs on the 256-px grid and fills them with regions and patch features.
pub fn slide(
    cfg: &SynthConfig,
    model: &ImageModel,
    p: &PatientLatent,
    rng: &mut ChaCha8Rng,
) -> SlideData {
    let d = cfg.d_in;
    let (lo, hi) = ((cfg.patches_min as f64).ln(), (cfg.patches_max as f64).ln());
    let target = rng.gen_range(lo..=hi).exp().round().max(1.0) as usize;
    // Blobs: 1–4 ellipses, placed left to right.
    let n_blobs = rng.gen_range(1..=4usize).min(target.max(1));
    let weights: Vec<f64> = (0..n_blobs).map(|_| rng.gen_range(0.5..1.5)).collect();
    let wsum: f64 = weights.iter().sum();
    let mut cells: Vec<(i64, i64, usize)> = Vec::new(); // (gx, gy, blob)
    let mut x0 = 2i64;
    let mut max_y = 0i64;
    for (b, w) in weights.iter().enumerate() {
        let area = (target as f64 * w / wsum).max(1.0);
        let aspect = rng.gen_range(0.6..1.7);
        let rx = (area / std::f64::consts::PI * aspect).sqrt().max(0.5);
        let ry = (area / std::f64::consts::PI / aspect).sqrt().max(0.5);
        let (cx, cy) = (x0 as f64 + rx, 2.0 + ry + rng.gen_range(0.0..3.0));
        // CLAM order inside a contour: x is the slow index, y the fast one.
        for gx in (cx - rx).floor() as i64..=(cx + rx).ceil() as i64 {
            for gy in (cy - ry).floor() as i64..=(cy + ry).ceil() as i64 {
                let (u, v) = ((gx as f64 + 0.5 - cx) / rx, (gy as f64 + 0.5 - cy) / ry);
                if u * u + v * v <= 1.0 && gx >= 0 && gy >= 0 {
                    cells.push((gx, gy, b));
                    max_y = max_y.max(gy);
                }
            }
        }
        x0 = (cx + rx).ceil() as i64 + 3;
    }
    if cells.is_empty() {
        cells.push((2, 2, 0));
    }
    // Regions: Voronoi cells of random seeds within each blob.
    let n_types_tumour = cfg.classes.len();
    let other_total: f64 = OTHER_TISSUES.iter().map(|(_, w)| w).sum();
    let mut seeds: Vec<(f64, f64, usize)> = Vec::new(); // (x, y, blob)
    let mut seed_type: Vec<u8> = Vec::new();
    for b in 0..n_blobs {
        let members: Vec<&(i64, i64, usize)> = cells.iter().filter(|c| c.2 == b).collect();
        if members.is_empty() {
            continue;
        }
        let k = (members.len() / 120).max(2);
        for _ in 0..k {
            let c = members[rng.gen_range(0..members.len())];
            seeds.push((
                c.0 as f64 + rng.gen::<f64>(),
                c.1 as f64 + rng.gen::<f64>(),
                b,
            ));
            let t = if rng.gen::<f64>() < p.purity {
                if rng.gen::<f64>() < cfg.confuser_rate {
                    ((p.true_class + 1 + rng.gen_range(0..n_types_tumour - 1)) % n_types_tumour)
                        as u8
                } else {
                    p.true_class as u8
                }
            } else {
                let mut u = rng.gen::<f64>() * other_total;
                let mut pick = OTHER_TISSUES.len() - 1;
                for (j, (_, w)) in OTHER_TISSUES.iter().enumerate() {
                    if u < *w {
                        pick = j;
                        break;
                    }
                    u -= w;
                }
                (n_types_tumour + pick) as u8
            };
            seed_type.push(t);
        }
    }
    let stain: Vec<f32> = (0..d)
        .map(|_| rng.sample::<f32, _>(StandardNormal) * 0.12)
        .collect();
    let region_var: Vec<Vec<f32>> = (0..seeds.len())
        .map(|_| {
            (0..d)
                .map(|_| rng.sample::<f32, _>(StandardNormal) * 0.15)
                .collect()
        })
        .collect();
    let noise = cfg.patch_noise as f32;
    let n = cells.len();
    let mut features = Vec::with_capacity(n * d);
    let mut region = Vec::with_capacity(n);
    let mut tissue = Vec::with_capacity(n);
    let mut coords = Vec::with_capacity(n);
    for &(gx, gy, b) in &cells {
        let (fx, fy) = (gx as f64 + 0.5, gy as f64 + 0.5);
        let r = seeds
            .iter()
            .enumerate()
            .filter(|(_, s)| s.2 == b)
            .min_by(|a, c| {
                let da = (a.1 .0 - fx).powi(2) + (a.1 .1 - fy).powi(2);
                let dc = (c.1 .0 - fx).powi(2) + (c.1 .1 - fy).powi(2);
                da.total_cmp(&dc)
            })
            .map(|(i, _)| i)
            .unwrap_or(0);
        let t = seed_type.get(r).copied().unwrap_or(n_types_tumour as u8);
        let proto = &model.prototypes[t as usize];
        let rv = &region_var[r.min(region_var.len().saturating_sub(1))];
        for j in 0..d {
            let z: f32 = rng.sample(StandardNormal);
            features.push((proto[j] + stain[j] + rv[j] + noise * z).max(0.0));
        }
        region.push(r as u32);
        tissue.push(t);
        coords.push([gx * PATCH, gy * PATCH]);
    }
    SlideData {
        coords,
        features,
        region,
        tissue,
        width: (x0 + 2) * PATCH,
        height: (max_y + 4) * PATCH,
    }
}
