//! Cohorts assembled from small files in every supported layout, and the problems a cohort check
//! must find.

use gimp_cohort::cache::FeatureCache;
use gimp_cohort::split::{make_splits, Scheme};
use gimp_cohort::{Cohort, CohortFile, LoadOptions, Summary};
use gimp_io::h5::{self, Chunking};
use gimp_io::splits::Part;
use gimp_io::Bag;
use std::collections::BTreeMap;
use std::path::Path;

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn bag(dir: &Path, slide: &str, n: usize, d: usize) {
    let features: Vec<f32> = (0..n * d).map(|i| (i % 17) as f32 * 0.1).collect();
    let coords = Some((0..n as i64).map(|i| [i * 256, 0]).collect());
    let p = dir.join("features/h5_files").join(format!("{slide}.h5"));
    let b = Bag::from_parts(&p, n, d, features, coords).unwrap();
    h5::write_features(&p, &b, Chunking::Clam).unwrap();
}

/// Four patients (p1 has two slides), two classes, a matrix for three of them.
fn base(dir: &Path) {
    write(dir, "dataset.csv", "case_id,slide_id,label,site\np1,s1a,LUAD,A\np1,s1b,LUAD,A\np2,s2,LUSC,B\np3,s3,LUAD,C\np4,s4,LUSC,D\n");
    bag(dir, "s1a", 5, 8);
    bag(dir, "s1b", 3, 8);
    bag(dir, "s2", 4, 8);
    bag(dir, "s3", 6, 8);
    bag(dir, "s4", 2, 8);
    write(
        dir,
        "expr.tsv",
        "case_id\tENSG01.3\tENSG02.1\np1\t1.0\t2.0\np2\t3.0\t4.0\np3\t5.0\t6.0\nstranger\t1\t1\n",
    );
}

fn toml(dir: &Path, extra: &str) -> CohortFile {
    write(
        dir,
        "cohort.toml",
        &format!("[labels]\ncsv = \"dataset.csv\"\n[features]\ndir = \"features\"\n[expression]\nmatrix = \"expr.tsv\"\n{extra}"),
    );
    CohortFile::load(&dir.join("cohort.toml")).unwrap()
}

fn load(dir: &Path, extra: &str) -> Cohort {
    Cohort::load(toml(dir, extra), LoadOptions::default()).unwrap()
}

#[test]
fn joins_by_patient_and_summarises() {
    let d = tempfile::tempdir().unwrap();
    base(d.path());
    write(
        d.path(),
        "splits/splits_0.csv",
        ",train,val,test\n0,s1a,s2,s4\n1,s1b,,\n2,s3,,\n",
    );
    let c = load(d.path(), "[splits]\nfiles = [\"splits/splits_0.csv\"]\n");
    assert!(
        c.diagnostics.errors.is_empty(),
        "{:?}",
        c.diagnostics.errors
    );
    let s = Summary::of(&c);
    assert_eq!((s.patients, s.slides, s.feature_dim), (4, 5, Some(8)));
    assert_eq!(
        s.classes
            .iter()
            .map(|c| (c.name.as_str(), c.patients, c.slides))
            .collect::<Vec<_>>(),
        vec![("LUAD", 2, 3), ("LUSC", 2, 2)]
    );
    assert_eq!(s.modalities.slides_and_expression, 3);
    assert_eq!(s.modalities.slides_only, 1);
    let b = s.bag_sizes.as_ref().unwrap();
    assert_eq!((b.min, b.max, b.total), (2, 8, 20));
    assert_eq!(s.splits[0].train, vec![2, 0]);
    assert_eq!(s.splits[0].val, vec![0, 1]);
    assert_eq!(s.splits[0].test, vec![0, 1]);
    assert!(
        s.warnings.iter().any(|w| w.contains("stranger")),
        "{:?}",
        s.warnings
    );
    assert_eq!(
        c.expression.as_ref().unwrap().genes,
        vec!["ENSG01", "ENSG02"]
    );
    assert_eq!(c.expression_of(&c.patients[1]).unwrap(), &[3.0, 4.0]);
    // JSON output round-trips through serde_json.
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["patients"], 4);
    assert!(s.render().contains("no errors"));
}

#[test]
fn finds_leaks_unknown_ids_and_width_mismatch() {
    let d = tempfile::tempdir().unwrap();
    base(d.path());
    bag(d.path(), "s4", 2, 9); // wrong width
                               // p1 in train through s1a and in test through s1b; 'ghost' is nobody.
    write(
        d.path(),
        "splits/splits_0.csv",
        ",train,val,test\n0,s1a,s2,s1b\n1,s3,,ghost\n",
    );
    let c = load(d.path(), "[splits]\nfiles = [\"splits/splits_0.csv\"]\n");
    let e = c.diagnostics.errors.join("\n");
    assert!(
        e.contains("patient 'p1' is in test through 's1b' and in train through 's1a'"),
        "{e}"
    );
    assert!(e.contains("'ghost' (line 3)"), "{e}");
    assert!(
        e.contains("feature width 9 in 1 file(s), but 8 in most") && e.contains("s4.h5"),
        "{e}"
    );
}

#[test]
fn label_outside_map_is_an_error_naming_the_line() {
    let d = tempfile::tempdir().unwrap();
    base(d.path());
    let f = toml(d.path(), "");
    let mut f2 = f.clone();
    f2.config.labels.label_map = Some(BTreeMap::from([
        ("LUAD".to_string(), 0),
        ("NORMAL".to_string(), 1),
    ]));
    let e = Cohort::load(f2, LoadOptions::default()).unwrap_err();
    assert_eq!(e.kind, gimp_io::ErrorKind::Unknown);
    assert!(
        e.to_string().contains("dataset.csv: line 4: label 'LUSC'"),
        "{e}"
    );
}

#[test]
fn unknown_cohort_keys_and_bad_toml_are_reported_with_lines() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "c.toml",
        "[labels]\ncsv = \"x.csv\"\nlabel_mapp = {}\n",
    );
    let e = CohortFile::load(&d.path().join("c.toml")).unwrap_err();
    assert!(
        e.to_string().contains("line 3") && e.to_string().contains("label_mapp"),
        "{e}"
    );
}

#[test]
fn reads_gdc_folders_mcat_tables_and_other_split_layouts() {
    let d = tempfile::tempdir().unwrap();
    base(d.path());
    // GDC: p4 as a STAR file (plus a normal aliquot to skip), p2 as a legacy FPKM file.
    let star = "# gene-model: GENCODE v36\ngene_id\tgene_name\tgene_type\tunstranded\tstranded_first\tstranded_second\ttpm_unstranded\tfpkm_unstranded\tfpkm_uq_unstranded\nN_unmapped\t\t\t1\t1\t1\t\t\t\nENSG01.3\tA\tprotein_coding\t1\t1\t1\t1.0\t7.5\t1.0\nENSG02.1\tB\tprotein_coding\t1\t1\t1\t1.0\t8.5\t1.0\n";
    write(d.path(), "gdc/u1/a.tsv", star);
    write(d.path(), "gdc/u2/n.tsv", &star.replace("7.5", "0.0"));
    write(
        d.path(),
        "gdc/sheet.tsv",
        "File ID\tFile Name\tData Category\tData Type\tProject ID\tCase ID\tSample ID\tSample Type\nu2\tn.tsv\tT\tG\tP\tp4\tp4-11A\tSolid Tissue Normal\nu1\ta.tsv\tT\tG\tP\tp4\tp4-01A\tPrimary Tumor\n",
    );
    write(
        d.path(),
        "expr.tsv",
        "case_id\tENSG01\tENSG02\np1\t1.0\t2.0\np3\t5.0\t6.0\n",
    );
    write(
        d.path(),
        "mcat_splits/splits_0.csv",
        ",train,val\n0,p1,p2\n1,p3,p4\n",
    );
    write(
        d.path(),
        "fold0.csv",
        ",train,train_label,val,val_label,test,test_label\n0,s1a,0,s2,1.0,s3,0\n1,s1b,0.0,,,s4,1\n",
    );
    let c = load(
        d.path(),
        "gdc_dir = \"gdc\"\nsample_sheet = \"gdc/sheet.tsv\"\n[splits]\nfiles = [\"mcat_splits/splits_0.csv\", \"fold0.csv\"]\n",
    );
    assert!(
        c.diagnostics.errors.is_empty(),
        "{:?}",
        c.diagnostics.errors
    );
    let p4 = &c.patients[3];
    assert_eq!(
        c.expression_of(p4).unwrap(),
        &[7.5, 8.5],
        "primary tumour aliquot chosen"
    );
    assert!(!c.patients[1].has_expression());
    assert_eq!(c.folds[0].format, gimp_io::splits::SplitFormat::Mcat);
    assert_eq!(c.folds[0].patients(Part::Val), vec![1, 3]);
    assert_eq!(c.folds[1].format, gimp_io::splits::SplitFormat::Transmil);
    assert_eq!(c.folds[1].patients(Part::Test), vec![2, 3]);

    // A GDC file with a different gene list is an error naming that file.
    write(
        d.path(),
        "gdc/u1/a.tsv",
        &star.replace("ENSG02.1", "ENSG99.1"),
    );
    write(
        d.path(),
        "gdc/sheet.tsv",
        "File ID\tFile Name\tData Category\tData Type\tProject ID\tCase ID\tSample ID\tSample Type\nu2\tn.tsv\tT\tG\tP\tp2\tp2-01A\tPrimary Tumor\nu1\ta.tsv\tT\tG\tP\tp4\tp4-01A\tPrimary Tumor\n",
    );
    let c = load(
        d.path(),
        "gdc_dir = \"gdc\"\nsample_sheet = \"gdc/sheet.tsv\"\n",
    );
    let e = c.diagnostics.errors.join("\n");
    assert!(e.contains("a.tsv") && e.contains("ENSG99"), "{e}");
}

#[test]
fn mcat_wide_table_in_a_zip() {
    let d = tempfile::tempdir().unwrap();
    base(d.path());
    let csv = ",case_id,slide_id,site,is_female,oncotree_code,age,survival_months,censorship,train,TP53_mut,TP53_cnv,TP53_rnaseq,ZXDC_rnaseq\n0,p1,s1a.svs,A,0,LUAD,60,10,1,1.0,1,0,0.5,-0.2\n1,p1,s1b.svs,A,0,LUAD,60,10,1,1.0,1,0,0.5,-0.2\n2,p2,s2.svs,B,1,LUSC,70,5,0,1.0,0,1,-1.5,0.9\n";
    let f = std::fs::File::create(d.path().join("tcga_x_all_clean.csv.zip")).unwrap();
    let mut z = zip::ZipWriter::new(f);
    z.start_file(
        "tcga_x_all_clean.csv",
        zip::write::SimpleFileOptions::default(),
    )
    .unwrap();
    std::io::Write::write_all(&mut z, csv.as_bytes()).unwrap();
    z.finish().unwrap();
    let m = gimp_io::expression::read_mcat_table(
        &d.path().join("tcga_x_all_clean.csv.zip"),
        &[gimp_io::expression::OmicType::Rnaseq],
    )
    .unwrap();
    // The last gene column (ZXDC_rnaseq) is kept, unlike MCAT's loader; metadata is not a gene.
    assert_eq!(m.genes, vec!["TP53_rnaseq", "ZXDC_rnaseq"]);
    assert_eq!(m.samples, vec!["p1", "p2"]);
    assert_eq!(m.row(1), &[-1.5, 0.9]);
}

#[test]
fn missing_values_error_unless_imputed() {
    let d = tempfile::tempdir().unwrap();
    base(d.path());
    write(
        d.path(),
        "expr.tsv",
        "case_id\tG1\tG2\np1\t1.0\t2.0\np2\tNA\t4.0\np3\t3.0\t6.0\n",
    );
    let c = load(d.path(), "");
    assert!(
        c.diagnostics
            .errors
            .iter()
            .any(|e| e.contains("gene 'G1' has no value for sample 'p2'")),
        "{:?}",
        c.diagnostics.errors
    );
    let c = load(d.path(), "impute = \"mean\"\n");
    assert!(c.diagnostics.errors.is_empty());
    assert_eq!(c.expression_info.imputed_values, 1);
    assert_eq!(c.expression_of(&c.patients[1]).unwrap(), &[2.0, 4.0]);
}

#[test]
fn holdout_split_is_stratified_and_deterministic() {
    let labels: Vec<usize> = (0..946).map(|i| usize::from(i % 2 == 0)).collect();
    let a = make_splits(&labels, Scheme::PAPER, 3);
    assert_eq!(a, make_splits(&labels, Scheme::PAPER, 3));
    assert_ne!(a, make_splits(&labels, Scheme::PAPER, 4));
    let count = |p: Part, class: usize| {
        a[0].iter()
            .filter(|(i, q)| **q == p && labels[**i] == class)
            .count()
    };
    assert_eq!((count(Part::Test, 0), count(Part::Test, 1)), (95, 95));
    assert_eq!((count(Part::Val, 0), count(Part::Val, 1)), (95, 95));
    assert_eq!(a[0].len(), 946);
}

#[test]
fn kfold_test_sets_are_disjoint_and_cover_everyone() {
    let labels: Vec<usize> = (0..103).map(|i| i % 3).collect();
    let folds = make_splits(&labels, Scheme::KFold { k: 5, val: 0.2 }, 1);
    assert_eq!(folds.len(), 5);
    let mut seen = vec![0; labels.len()];
    for f in &folds {
        assert_eq!(f.len(), labels.len());
        for (i, p) in f {
            if *p == Part::Test {
                seen[*i] += 1;
            }
        }
        let n_test = f.values().filter(|p| **p == Part::Test).count();
        assert!((20..=21).contains(&n_test), "{n_test}");
    }
    assert!(seen.iter().all(|s| *s == 1));
}

/// Folds that cannot be honest are refused: k above the smallest class's size would leave some
/// folds' test parts without that class, or empty.
#[test]
fn kfold_refuses_more_folds_than_the_smallest_class_has_patients() {
    use gimp_cohort::split::check_classes as check_scheme;
    let labels = [0, 0, 0, 0, 0, 1, 1, 1];
    let e = check_scheme(&labels, Scheme::KFold { k: 10, val: 0.2 }).unwrap_err();
    assert!(
        e.contains("class 1 has 3") && e.contains("at most 3 folds"),
        "{e}"
    );
    assert!(check_scheme(&labels, Scheme::KFold { k: 4, val: 0.2 }).is_err());
    assert!(check_scheme(&labels, Scheme::KFold { k: 3, val: 0.2 }).is_ok());
    assert!(check_scheme(&labels, Scheme::PAPER).is_ok());
}

/// `split check` flags a split file whose training or test part is empty.
#[test]
fn split_files_with_an_empty_part_are_flagged() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("splits_0.csv");
    std::fs::write(&p, ",train,val,test\n0,a,c,\n1,b,,\n").unwrap();
    let (_, problems) = gimp_cohort::split::check_split_standalone(&p).unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("the test part is empty"),
        "{problems:?}"
    );
}

#[test]
fn feature_cache_matches_source_and_detects_staleness() {
    let d = tempfile::tempdir().unwrap();
    base(d.path());
    let src = d.path().join("features/h5_files/s1a.h5");
    let cache = FeatureCache::new(d.path().join("cache"));
    assert!(cache.open(&src, "s1a").unwrap().is_none());
    let cb = cache.get(&src, "s1a", u64::MAX).unwrap();
    let b = gimp_io::feature_file::read_bag(&src, u64::MAX).unwrap();
    assert_eq!(cb.to_bag(&src).unwrap(), b);
    assert!(cache.open(&src, "s1a").unwrap().is_some());
    // Rewriting the source (different size) makes the entry stale.
    bag(d.path(), "s1a", 9, 8);
    assert!(cache.open(&src, "s1a").unwrap().is_none());
    assert_eq!(cache.get(&src, "s1a", u64::MAX).unwrap().n, 9);
}

/// Rewrites slide `slide`'s bag with an encoder recorded on it.
fn tag(dir: &Path, slide: &str, encoder: &str, sha: &str) {
    let p = dir.join("features/h5_files").join(format!("{slide}.h5"));
    let b = h5::read_features(&p, 1 << 20).unwrap();
    let prov = h5::FeatureProvenance {
        encoder: encoder.into(),
        weights_sha256: sha.into(),
    };
    h5::write_features_with(&p, &b, Chunking::Clam, Some(&prov)).unwrap();
}

#[test]
fn the_encoder_of_the_features_is_reported_and_must_be_one() {
    let d = tempfile::tempdir().unwrap();
    base(d.path());
    for s in ["s1a", "s1b", "s2", "s3", "s4"] {
        tag(d.path(), s, "uni_v1", &"a".repeat(64));
    }
    let c = load(d.path(), "");
    assert!(
        c.diagnostics.errors.is_empty(),
        "{:?}",
        c.diagnostics.errors
    );
    assert_eq!(
        c.feature_encoders,
        vec![("uni_v1 (weights sha256 aaaaaaaaaaaa)".to_string(), 5)]
    );
    assert!(Summary::of(&c).render().contains("encoder     uni_v1"));
    // One slide from another encoder of the same width: an error naming both and the file.
    tag(d.path(), "s3", "phikon_v2", &"b".repeat(64));
    let c = load(d.path(), "");
    let e = c.diagnostics.errors.join("\n");
    assert!(e.contains("different encoders"), "{e}");
    assert!(e.contains("phikon_v2") && e.contains("s3.h5"), "{e}");
    // The same encoder with other weights is another encoder too.
    tag(d.path(), "s3", "uni_v1", &"c".repeat(64));
    let c = load(d.path(), "");
    assert!(c
        .diagnostics
        .errors
        .join("\n")
        .contains("different encoders"));
    // A file that records nothing is a warning.
    tag(d.path(), "s3", "uni_v1", &"a".repeat(64));
    bag(d.path(), "s4", 2, 8);
    let c = load(d.path(), "");
    assert!(
        c.diagnostics.errors.is_empty(),
        "{:?}",
        c.diagnostics.errors
    );
    assert!(c
        .diagnostics
        .warnings
        .join("\n")
        .contains("record no encoder"));
}
