//! Shapes, gradient flow and the documented behaviours of each model.

use candle_core::{DType, Device, Tensor, Var};
use gimp_models::aggregator::{AggregatorConfig, PatchAggregator};
use gimp_models::group_msa::{GroupMsa, GroupMsaConfig};
use gimp_models::registry::REGISTRY;
use gimp_models::snn::{Snn, SnnConfig};
use gimp_models::{BagInput, Input, InputKind, Model};
use gimp_nn::checkpoint::{Checkpoint, Preprocessing};
use gimp_nn::{loss, Mode, ParamStore};
use rand::SeedableRng;

fn rand_tensor(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// The registry's sizing rule (`docs/DESIGN.md` §38): about 64 tokens in at most 4 groups,
/// whatever the gene count; a small panel is cut into small fragments, not one padded one.
#[test]
fn group_msa_sizes_itself_from_the_gene_count() {
    let sized = |g: usize| {
        let c = GroupMsaConfig::for_cohort(g, 2);
        (c.fragment, c.groups, c.n_fragments())
    };
    assert_eq!(sized(2_000), (32, 4, 64));
    assert_eq!(sized(12_625), (198, 4, 64));
    assert_eq!(sized(60_480), (945, 4, 64));
    assert_eq!(sized(70), (2, 4, 36));
    assert_eq!(sized(3), (1, 3, 3));
    // A 70-gene panel runs: 35 two-gene tokens, one zero-padded fragment.
    let store = ParamStore::new(1);
    let m = GroupMsa::new(&store.root(), GroupMsaConfig::for_cohort(70, 2)).unwrap();
    let cls = m.encode(&rand_tensor(&[2, 70], 3), &Mode::eval()).unwrap();
    assert_eq!(cls.dims(), &[2, 64]);
}

#[test]
fn group_msa_fragments_and_trains() {
    assert_eq!(GroupMsaConfig::gimp(60_480, 2).n_fragments(), 240);
    assert_eq!(GroupMsaConfig::gimp(2_000, 2).n_fragments(), 16);
    let mut cfg = GroupMsaConfig::gimp(500, 3);
    cfg.dim = 32;
    cfg.heads = 4;
    cfg.fragment = 20;
    cfg.groups = 4; // 25 fragments → 28
    assert_eq!(cfg.n_fragments(), 28);
    let store = ParamStore::new(1);
    let m = GroupMsa::new(&store.root(), cfg).unwrap();
    let x = rand_tensor(&[3, 500], 2);
    let mode = Mode::train(rand_chacha::ChaCha8Rng::seed_from_u64(0));
    let cls = m.encode(&x, &mode).unwrap();
    assert_eq!(cls.dims(), &[3, 32]);
    let out = m
        .forward(&Input::Expression(&x.get(0).unwrap()), &mode)
        .unwrap();
    assert_eq!(out.logits.dims(), &[3]);
    let l = loss::cross_entropy(&out.logits.unsqueeze(0).unwrap(), &[1]).unwrap();
    let grads = l.backward().unwrap();
    // Every parameter receives a gradient (no fused op without backward on the path).
    for (name, p) in store.params() {
        assert!(
            grads.get(p.var.as_tensor()).is_some(),
            "no gradient for {name}"
        );
    }
    assert!(m.encode(&rand_tensor(&[1, 499], 3), &mode).is_err());
}

#[test]
fn snn_forward_backward_and_alpha_dropout_keeps_moments() {
    let store = ParamStore::new(4);
    let m = Snn::new(&store.root(), SnnConfig::small(100, 2)).unwrap();
    let x = rand_tensor(&[100], 5);
    let mode = Mode::train(rand_chacha::ChaCha8Rng::seed_from_u64(1));
    let out = m.forward(&Input::Expression(&x), &mode).unwrap();
    let l = loss::cross_entropy(&out.logits.unsqueeze(0).unwrap(), &[0]).unwrap();
    let g = l.backward().unwrap();
    assert_eq!(
        store
            .params()
            .values()
            .filter(|p| g.get(p.var.as_tensor()).is_some())
            .count(),
        store.params().len()
    );
    // AlphaDropout keeps zero mean and unit variance of standard-normal input.
    let n = 200_000;
    let z: Vec<f32> = {
        use rand_distr::{Distribution, StandardNormal};
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        (0..n).map(|_| StandardNormal.sample(&mut r)).collect()
    };
    let t = Tensor::from_vec(z, n, &Device::Cpu).unwrap();
    let d = gimp_nn::ops::alpha_dropout(&t, 0.25, &mode).unwrap();
    let mean = d.mean_all().unwrap().to_scalar::<f32>().unwrap();
    let var = d
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        - mean * mean;
    assert!(
        mean.abs() < 0.01 && (var - 1.0).abs() < 0.02,
        "mean {mean}, var {var}"
    );
}

#[test]
fn aggregator_pads_to_a_square_and_folds_attention_back() {
    let mut cfg = AggregatorConfig::transmil(16);
    cfg.dim = 32;
    cfg.attention = gimp_nn::nystrom::NystromConfig::transmil(32);
    let store = ParamStore::new(7);
    let agg = PatchAggregator::new(&store.root(), cfg).unwrap();
    let x = rand_tensor(&[23, 16], 8); // 23 → 5² = 25: two duplicates
    let enc = agg
        .encode(agg.embed(&x).unwrap(), &Mode::eval(), true)
        .unwrap();
    assert_eq!(enc.tokens.dims(), &[1, 26, 32]);
    let a = enc.attention.unwrap();
    assert_eq!(a.dims(), &[23]);
    let total = a.sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(total > 0.0 && total < 1.0 + 1e-4, "{total}");
    // Training mode backpropagates through PPEG and both layers.
    let xv = Var::from_tensor(&x).unwrap();
    let mode = Mode::train(rand_chacha::ChaCha8Rng::seed_from_u64(2));
    let cls = agg.cls(xv.as_tensor(), &mode).unwrap();
    let g = cls.sum_all().unwrap().backward().unwrap();
    assert!(g.get(xv.as_tensor()).is_some());
    for (name, p) in store.params() {
        assert!(g.get(p.var.as_tensor()).is_some(), "no gradient for {name}");
    }
}

#[test]
fn every_registered_architecture_builds_and_runs() {
    for arch in REGISTRY
        .iter()
        .filter(|a| !matches!(a.input, InputKind::Multimodal | InputKind::Paired))
    {
        let (input_dim, n_classes) = (64, 3);
        let mut cfg = (arch.default_config)(gimp_models::Dims::both(input_dim), n_classes);
        if arch.name == "group_msa" {
            cfg["dim"] = 32.into();
            cfg["fragment"] = 8.into();
            cfg["groups"] = 4.into();
        }
        let store = ParamStore::new(1);
        let m = (arch.build)(&store.root(), &cfg).unwrap();
        let x = match arch.input {
            InputKind::Slide => rand_tensor(&[40, input_dim], 3),
            _ => rand_tensor(&[input_dim], 3),
        };
        let input = match arch.input {
            InputKind::Slide => Input::bag(&x),
            _ => Input::Expression(&x),
        };
        let out = m.forward(&input, &Mode::eval()).unwrap();
        assert_eq!(out.logits.dims(), &[n_classes], "{}", arch.name);
        assert_eq!(
            out.attention.is_some(),
            arch.input == InputKind::Slide,
            "{}",
            arch.name
        );
    }
}

#[test]
fn checkpoint_round_trip_keeps_outputs_and_preprocessing() {
    let arch = gimp_models::registry::find("abmil").unwrap();
    let cfg = (arch.default_config)(gimp_models::Dims::both(16), 2);
    let store = ParamStore::new(5);
    let m = (arch.build)(&store.root(), &cfg).unwrap();
    let x = rand_tensor(&[12, 16], 1);
    let before = m.forward(&Input::bag(&x), &Mode::eval()).unwrap().logits;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let ck = Checkpoint {
        arch: "abmil".into(),
        config: cfg,
        classes: vec!["LUAD".into(), "LUSC".into()],
        weights: store.tensors(),
        preprocessing: Some(Preprocessing {
            transform: gimp_io::expression::ExpressionTransform::Log2p1,
            genes: vec!["G1".into(), "G2".into()],
            mean: vec![1.0, 2.0],
            std: vec![0.5, 0.0],
        }),
        info: [("seed".to_string(), "5".to_string())]
            .into_iter()
            .collect(),
    };
    ck.save(&path).unwrap();
    let back = Checkpoint::load(&path).unwrap();
    assert_eq!(back.classes, ck.classes);
    assert_eq!(back.preprocessing, ck.preprocessing);
    assert_eq!(back.info["seed"], "5");
    let m2 = gimp_models::registry::load(arch, back.weights, Some(back.config))
        .unwrap()
        .model;
    let after = m2.forward(&Input::bag(&x), &Mode::eval()).unwrap().logits;
    let d = (before - after)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0);
    // A reference state dict is not a checkpoint: the error says what to do instead.
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/abmil_weights.safetensors");
    let e = Checkpoint::load(&fixture).unwrap_err();
    assert!(e.to_string().contains("model run --arch"), "{e}");
    let _ = DType::F32;
}

#[test]
fn gimp_runs_with_either_modality_missing() {
    use gimp_models::gimp::{ExpressionAlone, GeneEncoderConfig, Gimp, GimpConfig};
    let mut agg = AggregatorConfig::gimp(16);
    agg.dim = 32;
    agg.attention = gimp_nn::nystrom::NystromConfig {
        landmarks: 8,
        heads: 4,
        dim_head: 8,
        ..gimp_nn::nystrom::NystromConfig::transmil(32)
    };
    let mut g = GroupMsaConfig::gimp(50, 2);
    g.dim = 32;
    g.heads = 4;
    g.fragment = 10;
    g.groups = 5;
    let cfg = GimpConfig {
        aggregator: agg,
        genes: GeneEncoderConfig::GroupMsa(g),
        n_classes: 2,
        head_dropout: 0.25,
        expression_alone: ExpressionAlone::FusionHead,
    };
    let m = Gimp::new(&ParamStore::new(1).root(), cfg).unwrap();
    let bag = rand_tensor(&[30, 16], 1);
    let expr = rand_tensor(&[50], 2);
    for (b, e) in [
        (Some(&bag), Some(&expr)),
        (Some(&bag), None),
        (None, Some(&expr)),
    ] {
        let out = m
            .forward(
                &Input::Patient {
                    bag: b.map(BagInput::from),
                    expression: e,
                },
                &Mode::inference(),
            )
            .unwrap();
        assert_eq!(out.logits.dims(), &[2]);
        assert_eq!(out.embedding.dims(), &[64]);
        assert_eq!(out.attention.is_some(), b.is_some());
    }
}

/// The fusion baselines take both modalities, refuse one alone, return per-patch scores, and
/// every parameter gets a gradient (so the trainer updates all of them).
#[test]
fn paired_models_run_and_every_parameter_gets_a_gradient() {
    for arch in REGISTRY
        .iter()
        .filter(|a| a.input == InputKind::Paired && !a.self_supervised())
    {
        let dims = gimp_models::Dims {
            features: 24,
            genes: 30,
        };
        let cfg = (arch.default_config)(dims, 3);
        let store = ParamStore::new(4);
        let m = (arch.build)(&store.root(), &cfg).unwrap();
        let x = rand_tensor(&[17, 24], 5);
        let g = rand_tensor(&[30], 6);
        let both = Input::Patient {
            bag: Some((&x).into()),
            expression: Some(&g),
        };
        let out = m.forward(&both, &Mode::eval()).unwrap();
        assert_eq!(out.logits.dims(), &[3], "{}", arch.name);
        assert_eq!(out.attention.unwrap().dims(), &[17], "{}", arch.name);
        assert!(
            m.forward(&Input::bag(&x), &Mode::eval()).is_err(),
            "{}",
            arch.name
        );
        let mode = Mode::train(rand_chacha::ChaCha8Rng::seed_from_u64(1));
        let (out, _) = m.training_forward(&both, 1, &mode).unwrap();
        let l = m.classification_loss(&out.logits, 1).unwrap();
        let grads = l.backward().unwrap();
        for (name, p) in store.params() {
            // MMP's PANTHER prior is frozen (the reference's `--fix_proto`), and its
            // `FeedForwardEnsemble` builds a LayerNorm its forward never uses.
            let unused = arch.name == "mmp"
                && (name.starts_with("panther.priors.") || name.starts_with("coattn.1.norm."));
            assert_eq!(
                grads.get(p.var.as_tensor()).is_some(),
                !unused,
                "{}: gradient for {name}",
                arch.name
            );
        }
    }
}

/// MGCA, BioViL and REFERS: a finite pre-training loss on a batch whose gradient reaches every
/// parameter but the fine-tuning classifier, and a fine-tuning forward with per-patch scores.
#[test]
fn image_omic_adaptations_pretrain_and_classify() {
    for arch in REGISTRY.iter().filter(|a| a.self_supervised()) {
        let dims = gimp_models::Dims {
            features: 24,
            genes: 40,
        };
        let mut cfg = (arch.default_config)(dims, 2);
        cfg["encoders"]["dim"] = 16.into();
        cfg["encoders"]["fragment"] = 8.into();
        cfg["encoders"]["patches"] = 20.into();
        if arch.name == "mgca" {
            cfg["proj_hidden"] = 32.into();
            cfg["prototypes"] = 4.into();
        }
        let store = ParamStore::new(7);
        let m = (arch.build)(&store.root(), &cfg).unwrap();
        let batch: Vec<(Tensor, Tensor)> = (0..3)
            .map(|i| {
                (
                    rand_tensor(&[30 + 5 * i, 24], 10 + i as u64),
                    rand_tensor(&[40], 20 + i as u64),
                )
            })
            .collect();
        let mode = Mode::train(rand_chacha::ChaCha8Rng::seed_from_u64(3));
        let l = m
            .pretrain_loss(&batch, &mode)
            .unwrap()
            .expect("a pre-training loss");
        let v = l.to_scalar::<f32>().unwrap();
        assert!(v.is_finite() && v > 0.0, "{}: loss {v}", arch.name);
        let grads = l.backward().unwrap();
        for (name, p) in store.params() {
            if name.starts_with("classifier") {
                continue;
            }
            assert!(
                grads.get(p.var.as_tensor()).is_some(),
                "{}: no gradient for {name}",
                arch.name
            );
        }
        let (x, g) = &batch[0];
        let input = Input::Patient {
            bag: Some(x.into()),
            expression: Some(g),
        };
        let out = m.forward(&input, &Mode::inference()).unwrap();
        assert_eq!(out.logits.dims(), &[2], "{}", arch.name);
        assert_eq!(out.attention.unwrap().dims(), &[30], "{}", arch.name);
    }
}

/// GiMP's aggregator at inference (raw buffers updated in place) gives the CLS token of the
/// evaluation-mode graph path, across padding cases and with a bag larger than one chunk.
#[test]
fn aggregator_in_place_inference_matches_the_graph_path() {
    for (n, d_in) in [(1usize, 16usize), (255, 16), (700, 24), (5000, 8)] {
        let cfg = AggregatorConfig::gimp(d_in);
        let store = ParamStore::new(11);
        let agg = PatchAggregator::new(&store.root(), cfg).unwrap();
        let x = rand_tensor(&[n, d_in], 3);
        let fast = agg.cls(&x, &Mode::inference()).unwrap();
        let slow = agg.cls(&x, &Mode::eval()).unwrap();
        let diff = (&fast - &slow)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(fast.dims(), &[512]);
        assert!(diff < 1e-4, "{n} patches: max difference {diff}");
    }
}

/// ABMIL's and CLAM's pooling: the fused CPU op (what training and inference run here) and the
/// graph formulation (what other devices run) agree on the pooled vectors, the scores, the
/// instances chosen for clustering and every parameter's gradient.
#[test]
fn gated_pooling_fused_and_graph_paths_agree() {
    use gimp_models::gated_attention::GatedAttention;
    use gimp_nn::Linear;
    let store = ParamStore::new(9);
    let s = store.root();
    let fc = Linear::xavier(&s.pp("fc"), 32, 16).unwrap();
    let att = GatedAttention::new(&s.pp("att"), 16, 8, 2, 0.25).unwrap();
    let x = rand_tensor(&[300, 32], 4);
    let k = 5;
    let mode = Mode::eval();
    let fused = att.pool(&fc, &x, k, &mode).unwrap();
    let graph = att.pool_graph(&fc, &x, k, &mode).unwrap();
    let close = |a: &Tensor, b: &Tensor, what: &str| {
        let d: f32 = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        let m: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        // An absolute floor for the score bias, whose gradient is zero in exact arithmetic
        // (softmax ignores a shift): both sides give rounding noise there.
        assert!(d <= 1e-4 * m.max(0.05), "{what}: {d} against {m}");
    };
    close(&fused.pooled, &graph.pooled, "pooled");
    close(&fused.scores, &graph.scores, "scores");
    let (fe, ge) = (fused.extremes.unwrap(), graph.extremes.unwrap());
    assert_eq!(fe.dims(), &[2 * 2 * k, 16]);
    close(&fe, &ge, "extremes");
    let w = rand_tensor(&[2 * 2 * k, 16], 5);
    let loss = |p: &Tensor, e: &Tensor| {
        (p.sum_all().unwrap() + (e * &w).unwrap().sum_all().unwrap()).unwrap()
    };
    let gf = loss(&fused.pooled, &fe).backward().unwrap();
    let gg = loss(&graph.pooled, &ge).backward().unwrap();
    for (name, p) in store.params() {
        let t = p.var.as_tensor();
        close(gf.get(t).unwrap(), gg.get(t).unwrap(), &name);
    }
}
