//! Survival outcomes of a cohort: MCAT/PORPOISE's columns read as they are, either indicator
//! convention, bad values refused with their line, MCAT's time bins (fixture from pandas, written
//! by tools/make_survival_fixtures.py), and what `cohort check` reports per split part.

use gimp_cohort::survival::{strata, Outcome, TimeBins};
use gimp_cohort::{Cohort, CohortFile, LoadOptions, Summary};
use std::path::Path;

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// Expression for every patient, so the cohort needs no slides.
fn cohort(dir: &Path, csv: &str, survival: &str) -> gimp_io::Result<Cohort> {
    write(dir, "dataset.csv", csv);
    write(
        dir,
        "expr.tsv",
        "case_id\tG1\tG2\np1\t1\t2\np2\t3\t4\np3\t5\t6\np4\t7\t8\n",
    );
    write(
        dir,
        "splits/splits_0.csv",
        ",train,val,test\n0,p1,p3,p4\n1,p2,,\n",
    );
    write(
        dir,
        "cohort.toml",
        &format!(
            "[labels]\ncsv = \"dataset.csv\"\n[expression]\nmatrix = \"expr.tsv\"\n\
             [splits]\nfiles = [\"splits/splits_0.csv\"]\n{survival}"
        ),
    );
    let file = CohortFile::load(&dir.join("cohort.toml"))?;
    Cohort::load(file, LoadOptions::default())
}

const MCAT: &str = "case_id,slide_id,label,survival_months,censorship\n\
    p1,s1a,A,10.5,0.0\np1,s1b,A,10.5,0.0\np2,s2,B,3,1\np3,s3,A,24.0,1.0\np4,s4,B,7.25,0\n";

#[test]
fn mcat_columns_read_as_they_are() {
    let d = tempfile::tempdir().unwrap();
    let c = cohort(d.path(), MCAT, "[survival]\n").unwrap();
    let o = c.survival.as_ref().unwrap();
    let pairs: Vec<(f64, bool)> = o.iter().map(|o| (o.time, o.event)).collect();
    assert_eq!(
        pairs,
        vec![(10.5, true), (3.0, false), (24.0, false), (7.25, true)]
    );
    let s = Summary::of(&c);
    let sv = s.survival.unwrap();
    assert_eq!((sv.all.patients, sv.all.events, sv.all.censored), (4, 2, 2));
    // Split: train p1, p2; val p3; test p4.
    let [train, val, test] = &sv.splits[0];
    assert_eq!((train.patients, train.events), (2, 1));
    assert_eq!((val.patients, val.censored), (1, 1));
    assert_eq!((test.patients, test.events, test.max_time), (1, 1, 7.25));
    assert!(Summary::of(&c)
        .render()
        .contains("survival test  1 patients, 1 events"));
}

#[test]
fn event_convention_and_days() {
    let d = tempfile::tempdir().unwrap();
    let csv = "case_id,slide_id,label,os_days,dead\np1,s1,A,300,1\np2,s2,B,20,0\np3,s3,A,1,1\np4,s4,B,5,0\n";
    let c = cohort(
        d.path(),
        csv,
        "[survival]\ntime_column = \"os_days\"\nevent_column = \"dead\"\nunit = \"days\"\n",
    )
    .unwrap();
    let events: Vec<bool> = c.survival.unwrap().iter().map(|o| o.event).collect();
    assert_eq!(events, vec![true, false, true, false]);
}

/// Each bad value is an error naming the file, the line and what was expected.
#[test]
fn bad_values_name_their_line() {
    let cases = [
        ("p3,s3,A,-2,0", "line 4", "≥ 0"),
        ("p3,s3,A,abc,0", "line 4", "is not a time"),
        ("p3,s3,A,,0", "line 4", "is not a time"),
        ("p3,s3,A,NaN,0", "line 4", "≥ 0"),
        ("p3,s3,A,5,2", "line 4", "is not 0 or 1"),
        ("p3,s3,A,5,", "line 4", "is not 0 or 1"),
        ("p3,s3,A,5,yes", "line 4", "is not 0 or 1"),
    ];
    for (row, line, expected) in cases {
        let d = tempfile::tempdir().unwrap();
        let csv = format!(
            "case_id,slide_id,label,survival_months,censorship\np1,s1,A,1,0\np2,s2,B,3,1\n{row}\np4,s4,B,7,0\n"
        );
        let e = cohort(d.path(), &csv, "[survival]\n").unwrap_err();
        assert_eq!(e.location.as_deref(), Some(line), "{row}: {e}");
        assert!(e.message.contains(expected), "{row}: {e}");
        assert!(e.path.ends_with("dataset.csv"), "{row}: {e}");
    }
    // Two slides of a patient that disagree.
    let d = tempfile::tempdir().unwrap();
    let csv = "case_id,slide_id,label,survival_months,censorship\np1,s1a,A,1,0\np1,s1b,A,2,0\np2,s2,B,3,1\np3,s3,A,4,0\np4,s4,B,7,0\n";
    let e = cohort(d.path(), csv, "[survival]\n").unwrap_err();
    assert_eq!(e.location.as_deref(), Some("line 3"), "{e}");
    assert!(e.message.contains("on line 2"), "{e}");
    // A missing column; both conventions at once.
    let d = tempfile::tempdir().unwrap();
    let e = cohort(d.path(), MCAT, "[survival]\ntime_column = \"os\"\n").unwrap_err();
    assert!(e.message.contains("no 'os' column"), "{e}");
    let d = tempfile::tempdir().unwrap();
    let both = "[survival]\nevent_column = \"e\"\ncensorship_column = \"censorship\"\n";
    let e = cohort(d.path(), MCAT, both).unwrap_err();
    assert!(e.message.contains("both"), "{e}");
    let d = tempfile::tempdir().unwrap();
    let e = cohort(d.path(), MCAT, "[survival]\nunit = \"weeks\"\n").unwrap_err();
    assert!(e.to_string().contains("weeks"), "{e}");
}

#[derive(serde::Deserialize)]
struct BinsCase {
    time: Vec<f64>,
    censorship: Vec<u8>,
    train: Vec<bool>,
    edges: Vec<f64>,
    bins: Vec<usize>,
}

/// MCAT's binning (pandas qcut/cut) with the quantiles over the training part.
#[test]
fn time_bins_match_mcat_binning() {
    #[derive(serde::Deserialize)]
    struct Fixture {
        cases: Vec<BinsCase>,
    }
    let f: Fixture = serde_json::from_str(include_str!("fixtures/survival_bins.json")).unwrap();
    for case in f.cases {
        let outcomes: Vec<Outcome> = case
            .time
            .iter()
            .zip(&case.censorship)
            .map(|(&time, &c)| Outcome {
                time,
                event: c == 0,
            })
            .collect();
        let train: Vec<usize> = (0..outcomes.len()).filter(|&i| case.train[i]).collect();
        let bins = TimeBins::fit(&outcomes, &train, 4).unwrap();
        for (got, want) in bins.edges.iter().zip(&case.edges) {
            assert!(
                (got - want).abs() < 1e-9,
                "{:?} vs pandas {:?}",
                bins.edges,
                case.edges
            );
        }
        let got: Vec<usize> = outcomes.iter().map(|o| bins.bin(o.time)).collect();
        assert_eq!(got, case.bins);
        // Strata for split: 2 × bin + event, over everyone.
        let s = strata(&outcomes, 4).unwrap();
        assert!(s.iter().all(|&k| k < 8));
        assert!(s
            .iter()
            .zip(&outcomes)
            .all(|(k, o)| (k % 2 == 1) == o.event));
    }
}
