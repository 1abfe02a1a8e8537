//! Writing a generated cohort in exactly the layout users have (see `docs/DESIGN.md` §28).

use crate::config::SynthConfig;
use crate::model::{self, GeneModel, ImageModel, PatientLatent, PATCH};
use gimp_cohort::config::{
    CohortConfig, ExpressionConfig, FeaturesConfig, LabelsConfig, SplitsConfig,
};
use gimp_cohort::split::{make_splits, Scheme};
use gimp_cohort::survival::{SurvivalConfig, TimeUnit};
use gimp_io::dataset::{DatasetRow, DatasetTable};
use gimp_io::expression::ExpressionMatrix;
use gimp_io::h5::{Chunking, PatchAttrs, PatchFile};
use gimp_io::splits::Part;
use gimp_io::{Bag, DataError, ErrorKind, Result};
use rand::Rng;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// What was written.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthReport {
    pub out: PathBuf,
    pub patients: usize,
    pub slides: usize,
    pub patches: usize,
    pub matrix_samples: usize,
    pub gdc_samples: usize,
    /// Patients with an observed event, when the cohort has survival outcomes.
    pub events: Option<usize>,
    /// Harrell's c-index of the true log-hazard on the written outcomes: the ceiling of any
    /// risk model on this cohort.
    pub truth_cindex: Option<f64>,
}

fn uuid(rng: &mut impl Rng) -> String {
    let b: [u8; 16] = rng.gen();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Generates the cohort into `out`. `progress` is called with (slides done, slides in all).
pub fn generate(
    cfg: &SynthConfig,
    out: &Path,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<SynthReport> {
    cfg.validate().map_err(|m| {
        DataError::new(
            ErrorKind::Value,
            out,
            format!("invalid generator settings: {m}"),
        )
    })?;
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    let patients = model::patients(cfg);
    let image = ImageModel::new(cfg);
    let genes = GeneModel::new(cfg);
    let survival = cfg
        .survival
        .as_ref()
        .map(|s| crate::survival::outcomes(cfg, s, &patients));

    // Slides, in parallel; each patient's stream makes the bytes independent of scheduling.
    let jobs: Vec<(&PatientLatent, usize)> = patients
        .iter()
        .filter(|p| p.has_slide)
        .flat_map(|p| (0..p.n_slides).map(move |k| (p, k)))
        .collect();
    let done = AtomicUsize::new(0);
    let total = jobs.len();
    let patch_counts: Vec<usize> = jobs
        .par_iter()
        .map(|(p, k)| -> Result<usize> {
            let n = write_slide(cfg, &image, p, *k, out)?;
            progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
            Ok(n)
        })
        .collect::<Result<_>>()?;

    // Dataset CSV, with MCAT's survival columns when the cohort has survival outcomes.
    let mut rows = Vec::new();
    for p in &patients {
        let label = cfg.classes[p.observed_class].clone();
        let extra: BTreeMap<String, String> = survival
            .as_ref()
            .map(|s| {
                let o = &s[p.index];
                BTreeMap::from([
                    ("survival_months".to_string(), format!("{:.2}", o.months)),
                    ("censorship".to_string(), u8::from(o.censored).to_string()),
                ])
            })
            .unwrap_or_default();
        if p.has_slide {
            for k in 0..p.n_slides {
                rows.push(DatasetRow {
                    case_id: p.case_id.clone(),
                    slide_id: Some(model::slide_id(&p.case_id, k)),
                    label: label.clone(),
                    extra: extra.clone(),
                    line: 0,
                });
            }
        } else {
            rows.push(DatasetRow {
                case_id: p.case_id.clone(),
                slide_id: None,
                label,
                extra,
                line: 0,
            });
        }
    }
    gimp_io::dataset::write_dataset_csv(
        &out.join("dataset.csv"),
        &DatasetTable {
            rows,
            extra_columns: if survival.is_some() {
                vec!["survival_months".into(), "censorship".into()]
            } else {
                vec![]
            },
        },
    )?;

    // Expression: most patients as matrix rows, some as GDC STAR files with a sample sheet.
    let samples: Vec<(&PatientLatent, Vec<f32>)> = patients
        .par_iter()
        .filter(|p| p.has_expression)
        .map(|p| {
            let mut rng = model::expression_rng(cfg, p);
            (p, genes.sample(cfg, &mut rng, p.true_class, p.purity))
        })
        .collect();
    let matrix_rows: Vec<&(&PatientLatent, Vec<f32>)> = samples
        .iter()
        .filter(|(p, _)| !p.expression_in_gdc)
        .collect();
    let matrix = ExpressionMatrix {
        samples: matrix_rows.iter().map(|(p, _)| p.case_id.clone()).collect(),
        genes: genes.ids.clone(),
        values: matrix_rows
            .iter()
            .flat_map(|(_, x)| x.iter().map(|v| model::to_fpkm(*v)))
            .collect(),
    };
    let expr_dir = out.join("expression");
    if !matrix.samples.is_empty() {
        gimp_io::expression::write_matrix(&expr_dir.join("matrix.tsv.gz"), &matrix, "case_id")?;
    }
    let gdc: Vec<&(&PatientLatent, Vec<f32>)> = samples
        .iter()
        .filter(|(p, _)| p.expression_in_gdc)
        .collect();
    if !gdc.is_empty() {
        write_gdc(cfg, &genes, &gdc, &expr_dir.join("gdc"))?;
    }

    // The paper's split, in CLAM's layout.
    let labels: Vec<usize> = patients.iter().map(|p| p.observed_class).collect();
    let split = &make_splits(&labels, Scheme::PAPER, cfg.seed)[0];
    let mut parts: BTreeMap<Part, Vec<String>> = BTreeMap::new();
    let mut label_of: BTreeMap<String, String> = BTreeMap::new();
    for (i, part) in split {
        let p = &patients[*i];
        let ids: Vec<String> = if p.has_slide {
            (0..p.n_slides)
                .map(|k| model::slide_id(&p.case_id, k))
                .collect()
        } else {
            vec![p.case_id.clone()]
        };
        for id in ids {
            label_of.insert(id.clone(), cfg.classes[p.observed_class].clone());
            parts.entry(*part).or_default().push(id);
        }
    }
    gimp_io::splits::write_clam_split(&out.join("splits"), 0, &parts, &cfg.classes, &|s| {
        label_of.get(s).cloned()
    })?;

    // Patient-level ground truth; with survival, the true log-hazard (the best risk score),
    // the latent programme risk and the unobserved event and censoring times.
    let mut truth = String::from(
        "case_id\ttrue_label\trecorded_label\tpurity\tslides\thas_expression\texpression_source",
    );
    truth.push_str(if survival.is_some() {
        "\ttrue_log_hazard\tprogramme_risk\tevent_months\tcensoring_months\n"
    } else {
        "\n"
    });
    for p in &patients {
        let _ = write!(
            truth,
            "{}\t{}\t{}\t{:.4}\t{}\t{}\t{}",
            p.case_id,
            cfg.classes[p.true_class],
            cfg.classes[p.observed_class],
            p.purity,
            if p.has_slide { p.n_slides } else { 0 },
            p.has_expression,
            if !p.has_expression {
                "none"
            } else if p.expression_in_gdc {
                "gdc"
            } else {
                "matrix"
            }
        );
        if let Some(s) = &survival {
            let o = &s[p.index];
            let _ = write!(
                truth,
                "\t{:.6}\t{:.6}\t{:.4}\t{:.4}",
                o.log_hazard, o.programme_risk, o.event_time, o.censoring_time
            );
        }
        truth.push('\n');
    }
    gimp_io::atomic::write_bytes_atomic(&out.join("truth").join("patients.tsv"), truth.as_bytes())?;

    // cohort.toml last: its presence marks a complete cohort.
    let mut label_map = BTreeMap::new();
    for (i, c) in cfg.classes.iter().enumerate() {
        label_map.insert(c.clone(), i as i64);
    }
    let provenance = toml::Table::try_from(cfg).map_err(|e| {
        DataError::new(
            ErrorKind::Value,
            out,
            format!("cannot record settings: {e}"),
        )
    })?;
    let cohort = CohortConfig {
        name: Some(
            format!(
                "synthetic-{:?}-{:?}-seed{}",
                cfg.difficulty, cfg.size, cfg.seed
            )
            .to_lowercase(),
        ),
        labels: LabelsConfig::clam("dataset.csv", Some(label_map)),
        features: Some(FeaturesConfig {
            dir: "features".into(),
            formats: vec![gimp_io::FeatureFormat::H5, gimp_io::FeatureFormat::Pt],
            cache_dir: None,
        }),
        expression: Some(ExpressionConfig {
            matrix: (!matrix.samples.is_empty()).then(|| "expression/matrix.tsv.gz".into()),
            gdc_dir: (!gdc.is_empty()).then(|| "expression/gdc".into()),
            sample_sheet: (!gdc.is_empty()).then(|| "expression/gdc/gdc_sample_sheet.tsv".into()),
            star_column: "fpkm_unstranded".into(),
            ..Default::default()
        }),
        splits: Some(SplitsConfig {
            files: vec!["splits/splits_0.csv".into()],
            dir: None,
        }),
        survival: survival.is_some().then(|| SurvivalConfig {
            time_column: "survival_months".into(),
            censorship_column: Some("censorship".into()),
            event_column: None,
            unit: TimeUnit::Months,
            bins: 4,
        }),
        provenance: Some(provenance),
    };
    let text = toml::to_string_pretty(&cohort).map_err(|e| {
        DataError::new(
            ErrorKind::Value,
            out,
            format!("cannot write cohort.toml: {e}"),
        )
    })?;
    let header = "# Synthetic cohort written by `gimp-rs synth`; [provenance] regenerates it byte for byte.\n";
    gimp_io::atomic::write_bytes_atomic(
        &out.join("cohort.toml"),
        format!("{header}{text}").as_bytes(),
    )?;

    Ok(SynthReport {
        out: out.to_path_buf(),
        patients: patients.len(),
        slides: total,
        patches: patch_counts.iter().sum(),
        matrix_samples: matrix.samples.len(),
        gdc_samples: gdc.len(),
        events: survival
            .as_ref()
            .map(|s| s.iter().filter(|o| !o.censored).count()),
        truth_cindex: survival.as_deref().and_then(crate::survival::truth_cindex),
    })
}

fn write_slide(
    cfg: &SynthConfig,
    image: &ImageModel,
    p: &PatientLatent,
    k: usize,
    out: &Path,
) -> Result<usize> {
    let sid = model::slide_id(&p.case_id, k);
    let mut rng = model::slide_rng(cfg, p, k);
    let s = model::slide(cfg, image, p, &mut rng);
    let n = s.coords.len();
    let h5 = out
        .join("features")
        .join("h5_files")
        .join(format!("{sid}.h5"));
    let bag = Bag::from_parts(&h5, n, cfg.d_in, s.features, Some(s.coords.clone()))?;
    // CLAM's own chunk layout (one row per chunk) so readers meet what users have.
    gimp_io::h5::write_features(&h5, &bag, Chunking::Clam)?;
    if cfg.write_pt {
        gimp_io::pt::write_bag(
            &out.join("features")
                .join("pt_files")
                .join(format!("{sid}.pt")),
            &bag,
        )?;
    }
    let patches = PatchFile {
        coords: s.coords.clone(),
        attrs: PatchAttrs {
            patch_size: Some(PATCH),
            patch_level: Some(0),
            downsample: Some([1.0, 1.0]),
            level_dim: Some([s.width, s.height]),
            name: Some(sid.clone()),
            ..Default::default()
        },
    };
    gimp_io::h5::write_patches(&out.join("patches").join(format!("{sid}.h5")), &patches)?;
    let mut t = String::with_capacity(n * 32);
    t.push_str("x\ty\tregion\ttissue\tsignal\n");
    for i in 0..n {
        let tissue = s.tissue[i] as usize;
        let _ = writeln!(
            t,
            "{}\t{}\t{}\t{}\t{}",
            s.coords[i][0],
            s.coords[i][1],
            s.region[i],
            image.tissue_names[tissue],
            u8::from(tissue == p.true_class)
        );
    }
    gimp_io::atomic::write_bytes_atomic(
        &out.join("truth").join(format!("{sid}.tsv")),
        t.as_bytes(),
    )?;
    Ok(n)
}

/// GDC STAR "augmented counts" files in gdc-client's layout (`{file uuid}/{name}`), plus the
/// sample sheet; one in four of these patients also gets a solid-tissue-normal aliquot, which
/// readers must pass over in favour of the primary tumour.
fn write_gdc(
    cfg: &SynthConfig,
    genes: &GeneModel,
    samples: &[&(&PatientLatent, Vec<f32>)],
    dir: &Path,
) -> Result<()> {
    let mut rng = model::stream(cfg.seed ^ 0x6DC, 0);
    let mut sheet = String::from("File ID\tFile Name\tData Category\tData Type\tProject ID\tCase ID\tSample ID\tSample Type\n");
    for (p, logx) in samples {
        let mut aliquots = vec![("Primary Tumor", "01A", logx.clone())];
        if rng.gen::<f64>() < 0.25 {
            let mut nrng = model::stream(cfg.seed ^ 0x4E0, p.index as u64);
            aliquots.push((
                "Solid Tissue Normal",
                "11A",
                genes.sample(cfg, &mut nrng, p.true_class, 0.0),
            ));
        }
        for (stype, code, x) in aliquots {
            let file_id = uuid(&mut rng);
            let name = format!("{}.rna_seq.augmented_star_gene_counts.tsv", uuid(&mut rng));
            let fpkm: Vec<f32> = x.iter().map(|v| model::to_fpkm(*v)).collect();
            let fsum: f64 = fpkm.iter().map(|v| *v as f64).sum::<f64>().max(1e-9);
            let mut t = String::with_capacity(genes.ids.len() * 80);
            t.push_str("# gene-model: GENCODE v36\n");
            t.push_str("gene_id\tgene_name\tgene_type\tunstranded\tstranded_first\tstranded_second\ttpm_unstranded\tfpkm_unstranded\tfpkm_uq_unstranded\n");
            for (label, v) in [
                ("N_unmapped", 8120268),
                ("N_multimapping", 4402480),
                ("N_noFeature", 1446120),
                ("N_ambiguous", 5551010),
            ] {
                let _ = writeln!(t, "{label}\t\t\t{v}\t{v}\t{v}\t\t\t");
            }
            for (g, f) in fpkm.iter().enumerate() {
                let counts = (*f as f64 * genes.lengths_kb[g] as f64 * 30.0).round() as u64;
                let _ = writeln!(
                    t,
                    "{}.{}\t{}\tprotein_coding\t{}\t{}\t{}\t{:.4}\t{:.4}\t{:.4}",
                    genes.ids[g],
                    1 + g % 20,
                    genes.names[g],
                    counts,
                    counts / 2,
                    counts - counts / 2,
                    *f as f64 / fsum * 1e6,
                    f,
                    f * 21.7
                );
            }
            gimp_io::atomic::write_bytes_atomic(&dir.join(&file_id).join(&name), t.as_bytes())?;
            let _ = writeln!(
                sheet,
                "{file_id}\t{name}\tTranscriptome Profiling\tGene Expression Quantification\tSYN-LUNG\t{}\t{}-{code}\t{stype}",
                p.case_id, p.case_id
            );
        }
    }
    gimp_io::atomic::write_bytes_atomic(&dir.join("gdc_sample_sheet.tsv"), sheet.as_bytes())
}
