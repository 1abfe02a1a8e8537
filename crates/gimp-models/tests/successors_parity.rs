//! GiMP's successors against their reference modules on random weights at reduced widths
//! (fixtures written by tools/make_successor_fixtures.py): TANGLE's slide and expression
//! embeddings, its two pre-training losses (symmetric InfoNCE, TANGLE-Rec's MSE) and their
//! gradients with respect to every parameter, and its downstream logits and attention; SurvPath's
//! and MMP's logits, per-patch scores and the gradients of a weighted sum of their logits, and
//! MMP's PANTHER mixture (prototype tokens, patch posteriors). Every state dict loads by the
//! reference's names, with its config read from the shapes.

use candle_core::{Device, Tensor};
use gimp_models::mmp::{Mmp, MmpConfig, PrototypeFitting};
use gimp_models::registry::{self, find};
use gimp_models::survpath::{SurvPath, SurvPathConfig};
use gimp_models::tangle::{Tangle, TangleConfig};
use gimp_models::{Input, Model};
use gimp_nn::{Mode, ParamStore};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

const TOLERANCE: f32 = 1e-4;

fn load(name: &str) -> HashMap<String, Tensor> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

fn weights(name: &str) -> BTreeMap<String, Tensor> {
    load(&format!("{name}_weights.safetensors"))
        .into_iter()
        .collect()
}

/// Largest absolute difference over the largest absolute expected value.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (a.flatten_all().unwrap(), b.flatten_all().unwrap());
    assert_eq!(a.dims(), b.dims());
    max_abs(&(&a - &b).unwrap()) / max_abs(&b).max(1e-12)
}

fn assert_close(what: &str, got: &Tensor, expected: &Tensor) {
    let e = rel_err(got, expected);
    assert!(e < TOLERANCE, "{what}: relative error {e}");
    eprintln!("{what}: relative error {e:.1e}");
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Every parameter's gradient against `grad.{name}` of the fixture; a parameter the reference
/// gives no gradient must get none (or zeros) here. A gradient that is zero in exact arithmetic
/// (the bias of a score under a softmax: both sides hold rounding noise) is measured against
/// the largest gradient of the model instead of its own size.
fn check_gradients(
    what: &str,
    store: &ParamStore,
    grads: &candle_core::backprop::GradStore,
    io: &HashMap<String, Tensor>,
) {
    let scale = io
        .iter()
        .filter(|(k, _)| k.starts_with("grad."))
        .map(|(_, g)| max_abs(g))
        .fold(0f32, f32::max);
    let (mut compared, mut worst) = (0, 0f32);
    for (name, p) in store.params() {
        let got = grads.get(p.var.as_tensor());
        match (got, io.get(&format!("grad.{name}"))) {
            (Some(g), Some(expected)) => {
                let g = g.flatten_all().unwrap();
                let diff = max_abs(&(&g - &expected.flatten_all().unwrap()).unwrap());
                let e = diff / max_abs(expected).max(1e-3 * scale);
                assert!(
                    e < TOLERANCE,
                    "{what}: gradient of {name}: relative error {e}"
                );
                worst = worst.max(e);
                compared += 1;
            }
            (None, Some(_)) => panic!("{what}: no gradient for {name}"),
            (Some(g), None) => {
                assert!(
                    max_abs(g) == 0.0,
                    "{what}: {name} has a gradient the reference does not"
                );
            }
            (None, None) => {}
        }
    }
    assert!(compared > 10, "{what}: only {compared} gradients compared");
    eprintln!("{what}: {compared} parameter gradients, largest relative error {worst:.1e}");
}

fn tangle_objective(name: &str, reconstruction: bool) {
    let w = weights(name);
    let io = load(&format!("{name}_io.safetensors"));
    let cfg: TangleConfig =
        serde_json::from_value((find("tangle").unwrap().config_from_weights)(&w).unwrap()).unwrap();
    assert_eq!(cfg.reconstruction, reconstruction);
    assert_ne!(cfg.hidden, cfg.d_in, "the fixture exercises mean_projector");
    let store = ParamStore::with_preset(0, w);
    let model = Tangle::new(&store.root(), cfg).unwrap();
    assert!(store.fresh().is_empty() && store.unused().is_empty());
    let bags = &io["bags"];
    let bags: Vec<Tensor> = (0..bags.dim(0).unwrap())
        .map(|i| bags.get(i).unwrap())
        .collect();
    let mode = Mode::eval();
    assert_close(
        &format!("{name}: slide embeddings"),
        &model.slide_embeddings(&bags, &mode).unwrap(),
        &io["slide_embeddings"],
    );
    if let Some(e) = io.get("expression_embeddings") {
        assert_close(
            &format!("{name}: expression embeddings"),
            &model
                .expression_embeddings(&io["expression"], &mode)
                .unwrap(),
            e,
        );
    }
    let loss = model.objective(&bags, &io["expression"], &mode).unwrap();
    assert_close(
        &format!("{name}: loss"),
        &loss.reshape(1).unwrap(),
        &io["loss"],
    );
    let grads = loss.backward().unwrap();
    check_gradients(name, &store, &grads, &io);

    // The downstream head on a whole slide, loaded through the registry as a checkpoint would be.
    for arch in ["tangle", "tangle_probe"] {
        let loaded = registry::load(find(arch).unwrap(), weights(name), None).unwrap();
        let genes = Tensor::zeros(
            io["expression"].dim(1).unwrap(),
            candle_core::DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let input = Input::Patient {
            bag: Some((&io["slide"]).into()),
            expression: Some(&genes),
        };
        let out = loaded.model.forward(&input, &Mode::inference()).unwrap();
        assert_close(
            &format!("{arch} ({name}): logits"),
            &out.logits,
            &io["logits"],
        );
        assert_close(
            &format!("{arch} ({name}): attention"),
            &out.attention.unwrap(),
            &io["attention"],
        );
    }
}

#[test]
fn tangle_contrastive_loss_and_gradients_match_the_reference() {
    tangle_objective("tangle", false);
}

#[test]
fn tangle_rec_reconstruction_loss_and_gradients_match_the_reference() {
    tangle_objective("tangle_rec", true);
}

/// The linear probe learns only its classifier: the slide encoder gets no gradient from the
/// classification loss, while the fine-tuned variant trains it.
#[test]
fn tangle_probe_freezes_the_encoder_and_fine_tuning_does_not() {
    let io = load("tangle_io.safetensors");
    for (arch, encoder_learns) in [("tangle_probe", false), ("tangle", true)] {
        let w = weights("tangle");
        let cfg = (find(arch).unwrap().config_from_weights)(&w).unwrap();
        let store = ParamStore::with_preset(0, w);
        let model = (find(arch).unwrap().build)(&store.root(), &cfg).unwrap();
        let genes = io["expression"].get(0).unwrap();
        let input = Input::Patient {
            bag: Some((&io["slide"]).into()),
            expression: Some(&genes),
        };
        let out = model.forward(&input, &Mode::eval()).unwrap();
        let grads = model
            .classification_loss(&out.logits, 1)
            .unwrap()
            .backward()
            .unwrap();
        for (name, p) in store.params() {
            let has = grads.get(p.var.as_tensor()).is_some();
            if name.starts_with("classifier") {
                assert!(has, "{arch}: no gradient for {name}");
            } else if name.starts_with("wsi_embedder") {
                assert_eq!(has, encoder_learns, "{arch}: {name}");
            }
        }
    }
}

#[test]
fn survpath_matches_the_reference() {
    let w = weights("survpath");
    let io = load("survpath_io.safetensors");
    let arch = find("survpath").unwrap();
    let cfg: SurvPathConfig =
        serde_json::from_value((arch.config_from_weights)(&w).unwrap()).unwrap();
    assert_eq!(cfg.groups.len(), 7);
    assert_eq!(cfg.omic_hidden, vec![40, 32]);
    let store = ParamStore::with_preset(0, w);
    let model = SurvPath::new(&store.root(), cfg).unwrap();
    assert!(store.fresh().is_empty() && store.unused().is_empty());
    let input = Input::Patient {
        bag: Some((&io["bag"]).into()),
        expression: Some(&io["expression"]),
    };
    let out = model.forward(&input, &Mode::eval()).unwrap();
    assert_close("survpath: logits", &out.logits, &io["logits"]);
    assert_close(
        "survpath: attention",
        out.attention.as_ref().unwrap(),
        &io["attention"],
    );
    let objective = (&out.logits * &io["objective_weights"])
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = objective.backward().unwrap();
    check_gradients("survpath", &store, &grads, &io);
    // Through the registry, as `model run --arch survpath --weights` loads it.
    let loaded = registry::load(arch, weights("survpath"), None).unwrap();
    let out = loaded.model.forward(&input, &Mode::inference()).unwrap();
    assert_close("survpath (registry): logits", &out.logits, &io["logits"]);
}

/// SurvPath's training view: `num_patches` rows drawn without replacement, or the bag
/// zero-padded to `num_patches` rows; the output then carries no per-patch scores.
#[test]
fn survpath_training_reads_num_patches_rows() {
    let io = load("survpath_io.safetensors");
    let w = weights("survpath");
    let mut cfg: SurvPathConfig =
        serde_json::from_value((find("survpath").unwrap().config_from_weights)(&w).unwrap())
            .unwrap();
    let store = ParamStore::with_preset(0, w);
    for num_patches in [20, 80] {
        cfg.num_patches = num_patches;
        let model = SurvPath::new(&store.root(), cfg.clone()).unwrap();
        let input = Input::Patient {
            bag: Some((&io["bag"]).into()),
            expression: Some(&io["expression"]),
        };
        use rand::SeedableRng;
        let mode = Mode::train(rand_chacha::ChaCha8Rng::seed_from_u64(5));
        let (out, aux) = model.training_forward(&input, 0, &mode).unwrap();
        assert!(aux.is_none() && out.attention.is_none());
        assert_eq!(out.logits.dims(), &[4]);
        let x = gimp_models::survpath::sample_patches(&io["bag"], num_patches, &mode).unwrap();
        assert_eq!(x.dims(), &[num_patches, 32]);
        if num_patches > 50 {
            let padding = x.narrow(0, 50, num_patches - 50).unwrap();
            assert_eq!(
                padding
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
                0.0
            );
        }
    }
}

#[test]
fn mmp_matches_the_reference() {
    let w = weights("mmp");
    let io = load("mmp_io.safetensors");
    let arch = find("mmp").unwrap();
    let cfg: MmpConfig = serde_json::from_value((arch.config_from_weights)(&w).unwrap()).unwrap();
    assert_eq!(
        (cfg.n_proto, cfg.d, cfg.append_dim, cfg.groups.len()),
        (4, 24, 8, 4)
    );
    let store = ParamStore::with_preset(0, w);
    let model = Mmp::new(&store.root(), cfg).unwrap();
    assert!(store.fresh().is_empty() && store.unused().is_empty());
    let (mixture, tokens) = model.slide_tokens(&io["bag"]).unwrap();
    assert_close("mmp: prototype tokens", &tokens, &io["proto_tokens"]);
    assert_close("mmp: posteriors", &mixture.posterior, &io["posterior"]);
    let input = Input::Patient {
        bag: Some((&io["bag"]).into()),
        expression: Some(&io["expression"]),
    };
    let out = model.forward(&input, &Mode::eval()).unwrap();
    assert_close("mmp: logits", &out.logits, &io["logits"]);
    assert_close(
        "mmp: attention",
        out.attention.as_ref().unwrap(),
        &io["attention"],
    );
    let objective = (&out.logits * &io["objective_weights"])
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = objective.backward().unwrap();
    // The prior (prototypes, variances) is frozen, as `--fix_proto`: no gradient.
    check_gradients("mmp", &store, &grads, &io);
    let loaded = registry::load(arch, weights("mmp"), None).unwrap();
    let out = loaded.model.forward(&input, &Mode::inference()).unwrap();
    assert_close("mmp (registry): logits", &out.logits, &io["logits"]);
}

/// Seeded k-means recovers well-separated clusters from the first rows of each bag, the same
/// prototypes for the same seed, and installs them as PANTHER's prior means.
#[test]
fn mmp_prototypes_are_fitted_by_seeded_kmeans_and_installed() {
    use rand::{Rng, SeedableRng};
    let centres = [[5.0f32, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let bags: Vec<Tensor> = (0..4)
        .map(|_| {
            let rows: Vec<f32> = (0..90)
                .flat_map(|i| centres[i % 3].map(|c| c + rng.gen_range(-0.3f32..0.3)))
                .collect();
            Tensor::from_vec(rows, (90, 3), &Device::Cpu).unwrap()
        })
        .collect();
    let fit = PrototypeFitting {
        n_proto: 3,
        n_proto_patches: 40,
        n_init: 3,
        n_iter: 20,
    };
    // 120 rows in all: the first 30 of each of the four bags.
    let (rows, d) = gimp_models::mmp::prototype_patches(&bags, &fit).unwrap();
    assert_eq!((rows.len() / d, d), (120, 3));
    let p = gimp_models::mmp::fit_prototypes(&bags, &fit, 1).unwrap();
    let again = gimp_models::mmp::fit_prototypes(&bags, &fit, 1).unwrap();
    assert_eq!(p.to_vec2::<f32>().unwrap(), again.to_vec2::<f32>().unwrap());
    for c in centres {
        let best = p
            .to_vec2::<f32>()
            .unwrap()
            .iter()
            .map(|r| {
                r.iter()
                    .zip(c)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max)
            })
            .fold(f32::INFINITY, f32::min);
        assert!(best < 0.2, "no prototype near {c:?}: {best}");
    }
    let arch = find("mmp").unwrap();
    let mut cfg = (arch.default_config)(
        gimp_models::Dims {
            features: 3,
            genes: 12,
        },
        2,
    );
    cfg["n_proto"] = 3.into();
    cfg["d"] = 8.into();
    cfg["append_dim"] = 4.into();
    cfg["omic_hidden"] = serde_json::json!([8, 8]);
    let store = ParamStore::new(3);
    let model = (arch.build)(&store.root(), &cfg).unwrap();
    gimp_models::mmp::install_prototypes(&store, &p).unwrap();
    let got = store.params()[gimp_models::mmp::PROTOTYPES]
        .var
        .as_tensor()
        .clone();
    assert_close("installed prototypes", &got, &p);
    let genes = Tensor::ones(12, candle_core::DType::F32, &Device::Cpu).unwrap();
    let out = model
        .forward(
            &Input::Patient {
                bag: Some((&bags[0]).into()),
                expression: Some(&genes),
            },
            &Mode::inference(),
        )
        .unwrap();
    assert_eq!(out.attention.unwrap().dims(), &[90]);
    let wrong = Tensor::zeros((4, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(gimp_models::mmp::install_prototypes(&store, &wrong).is_err());
}
