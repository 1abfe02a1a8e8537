//! Heatmap scores against the synthetic cohort's per-patch ground truth: after training, the
//! attention of ABMIL and CLAM-SB must rank the patches of the class-specific tissue
//! (`truth/{slide}.tsv`, column `signal`) above the others on the test slides.

use gimp_cohort::{Cohort, CohortFile, LoadOptions};
use gimp_io::expression::ExpressionTransform;
use gimp_models::{registry, Input};
use gimp_nn::checkpoint::Checkpoint;
use gimp_nn::Mode;
use gimp_synth::{Difficulty, Size, SynthConfig};
use gimp_train::supervised::{train, SupervisedConfig};
use gimp_train::trainer::Control;
use gimp_train::Prepared;

#[test]
fn attention_finds_the_class_specific_patches() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("cohort");
    let mut s = SynthConfig::new(Difficulty::Easy, Size::Demo, 11);
    s.n_patients = 48;
    s.patches_min = 30;
    s.patches_max = 80;
    s.d_in = 32;
    s.n_genes = 50;
    gimp_synth::generate(&s, &dir, &|_, _| {}).unwrap();
    let cohort = Cohort::load(
        CohortFile::load(&dir.join("cohort.toml")).unwrap(),
        LoadOptions::default(),
    )
    .unwrap();
    let data = Prepared::new(&cohort, 0, ExpressionTransform::Log2p1).unwrap();
    for arch in ["abmil", "clam_sb"] {
        let mut cfg = SupervisedConfig::defaults(registry::find(arch).unwrap()).unwrap();
        cfg.epochs = 12;
        cfg.lr = 1e-3;
        let r = train(
            &data,
            &cfg,
            &d.path().join(arch),
            Control::default(),
            &|_| {},
        )
        .unwrap();
        let ck = Checkpoint::load(&r.checkpoint).unwrap();
        let model = registry::load_checkpoint(&ck).unwrap().model;
        let mut aucs = Vec::new();
        for &p in &data.test {
            let case = &cohort.patients[p];
            for slide in &case.slides {
                let h5 = slide.path.clone().unwrap();
                let slide = &slide.slide_id;
                let bag = gimp_io::h5::read_features(&h5, 1 << 30).unwrap();
                let x = candle_core::Tensor::from_vec(
                    bag.features.clone(),
                    (bag.n, bag.d),
                    &candle_core::Device::Cpu,
                )
                .unwrap();
                let out = model.forward(&Input::bag(&x), &Mode::inference()).unwrap();
                let scores: Vec<f64> = out
                    .attention
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .into_iter()
                    .map(f64::from)
                    .collect();
                let truth = std::fs::read_to_string(dir.join("truth").join(format!("{slide}.tsv")))
                    .unwrap();
                let signal: Vec<bool> = truth
                    .lines()
                    .skip(1)
                    .map(|l| l.split('\t').nth(4) == Some("1"))
                    .collect();
                assert_eq!(signal.len(), scores.len(), "{slide}: truth rows vs patches");
                if let Some(a) = gimp_metrics::roc_auc_binary(&signal, &scores) {
                    aucs.push(a);
                }
            }
        }
        let mean = aucs.iter().sum::<f64>() / aucs.len() as f64;
        eprintln!(
            "{arch}: attention vs per-patch truth, mean AUC {mean:.3} over {} test slides",
            aucs.len()
        );
        assert!(
            aucs.len() >= 5,
            "too few test slides with both kinds of patches"
        );
        assert!(mean > 0.75, "{arch}: mean AUC {mean}");
    }
}
