//! The generator's calibration is a test (`docs/DESIGN.md` §29): on the `paper` preset
//! (946 patients, 60,480 genes), a regularised logistic regression on the expression lands in
//! 0.93–0.97 test accuracy. One split of 190 test patients has a standard error of about 1.6
//! points, so the mean over three seeds is held to the band, and each seed to a wider one.

use gimp_synth::{calibration::expression_accuracy, Difficulty, Size, SynthConfig};

#[test]
fn paper_preset_expression_logistic_regression_lands_in_band() {
    let accs: Vec<f64> = (0..3)
        .map(|seed| expression_accuracy(&SynthConfig::new(Difficulty::Paper, Size::Paper, seed)))
        .collect();
    let mean = accs.iter().sum::<f64>() / accs.len() as f64;
    assert!(
        (0.93..=0.97).contains(&mean),
        "mean accuracy {mean:.4} over seeds: {accs:?}"
    );
    for a in &accs {
        assert!((0.90..=0.99).contains(a), "one seed far off: {accs:?}");
    }
}

#[test]
fn difficulty_presets_are_ordered() {
    let acc = |d| expression_accuracy(&SynthConfig::new(d, Size::Paper, 11));
    let (easy, hard) = (acc(Difficulty::Easy), acc(Difficulty::Hard));
    assert!(easy > 0.97, "easy {easy}");
    assert!(hard < 0.90 && hard > 0.6, "hard {hard}");
}
