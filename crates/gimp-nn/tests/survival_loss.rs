//! Survival losses against PyTorch running MCAT's/PORPOISE's NLL formula and MCAT's Cox formula
//! (fixture written by tools/make_survival_loss_fixture.py), against finite differences, and
//! against values computed by hand.

use candle_core::{DType, Device, Tensor, Var};
use gimp_nn::survival::{cox_partial_likelihood, discrete_risk, nll_survival, REFERENCE_ALPHA};
use std::collections::HashMap;
use std::path::Path;

fn fixture() -> HashMap<String, Tensor> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/survival_loss.safetensors");
    candle_core::safetensors::load(&p, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn nll_inputs(f: &HashMap<String, Tensor>) -> (Vec<usize>, Vec<bool>) {
    let bins = values(&f["nll_bins"]).iter().map(|&b| b as usize).collect();
    let censored = values(&f["nll_censorship"])
        .iter()
        .map(|&c| c == 1.0)
        .collect();
    (bins, censored)
}

#[test]
fn nll_matches_the_references_formula_in_torch() {
    let f = fixture();
    let (bins, censored) = nll_inputs(&f);
    for (name, alpha) in [("0", 0.0), ("015", 0.15), ("04", 0.4)] {
        let x = Var::from_tensor(&f["nll_logits"]).unwrap();
        let loss = nll_survival(x.as_tensor(), &bins, &censored, alpha).unwrap();
        let want = values(&f[&format!("nll_loss_alpha{name}")])[0];
        assert!(
            (scalar(&loss) - want).abs() < 1e-12,
            "alpha {alpha}: {} vs {want}",
            scalar(&loss)
        );
        let grads = loss.backward().unwrap();
        let got = values(grads.get(x.as_tensor()).unwrap());
        let want = values(&f[&format!("nll_grad_alpha{name}")]);
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() < 1e-12,
                "alpha {alpha}: gradient {g} vs torch {w}"
            );
        }
    }
    // In f32, as models train: the same to single precision.
    let x32 = f["nll_logits"].to_dtype(DType::F32).unwrap();
    let loss = nll_survival(&x32, &bins, &censored, REFERENCE_ALPHA).unwrap();
    let want = values(&f["nll_loss_alpha0"])[0];
    assert!(
        (scalar(&loss) - want).abs() < 1e-5 * want,
        "f32 {}",
        scalar(&loss)
    );
}

type LossOf<'a> = &'a dyn Fn(&Tensor) -> candle_core::Result<Tensor>;

/// Central differences of the losses against autograd, away from the clamps (where the NLL has a
/// kink).
#[test]
fn nll_and_cox_gradients_match_finite_differences() {
    let dev = Device::Cpu;
    let bins = [0, 2, 1, 1, 2];
    let censored = [false, true, false, true, false];
    let nll = |t: &Tensor| nll_survival(&t.reshape((5, 3)).unwrap(), &bins, &censored, 0.3);
    let time = [4.0, 2.0, 2.0, 7.0, 1.0];
    let event = [true, true, false, true, false];
    let cox = |t: &Tensor| cox_partial_likelihood(t, &time, &event);
    let losses: [(&str, LossOf, usize); 2] = [("nll", &nll, 15), ("cox", &cox, 5)];
    for (name, loss_of, n) in losses {
        let x: Vec<f64> = (0..n).map(|i| ((i * 37 % 11) as f64 - 5.0) * 0.4).collect();
        let var = Var::from_vec(x.clone(), n, &dev).unwrap();
        let loss = loss_of(var.as_tensor()).unwrap();
        let grad = values(loss.backward().unwrap().get(var.as_tensor()).unwrap());
        let at = |v: Vec<f64>| scalar(&loss_of(&Tensor::from_vec(v, n, &dev).unwrap()).unwrap());
        let h = 1e-6;
        for i in 0..n {
            let (mut up, mut down) = (x.clone(), x.clone());
            up[i] += h;
            down[i] -= h;
            let numeric = (at(up) - at(down)) / (2.0 * h);
            assert!(
                (numeric - grad[i]).abs() < 1e-7,
                "{name} input {i}: autograd {} vs finite difference {numeric}",
                grad[i]
            );
        }
    }
}

#[test]
fn nll_by_hand() {
    let dev = Device::Cpu;
    // Hazards ½ in both bins: S_0 = ½, S_1 = ¼.
    let logits = Tensor::zeros((3, 2), DType::F64, &dev).unwrap();
    let ln2 = std::f64::consts::LN_2;
    // Event in bin 1: −log S_0 − log h_1 = 2 ln 2. Censored in bin 1: −log S_1 = 2 ln 2.
    // Censored in bin 0: −log S_0 = ln 2.
    let loss = nll_survival(&logits, &[1, 1, 0], &[false, true, true], 0.0).unwrap();
    assert!((scalar(&loss) - 5.0 * ln2 / 3.0).abs() < 1e-15);
    // α = 0.5 keeps the uncensored term whole and halves the censored ones:
    // (2 ln 2 + ½·2 ln 2 + ½·ln 2) / 3.
    let loss = nll_survival(&logits, &[1, 1, 0], &[false, true, true], 0.5).unwrap();
    assert!((scalar(&loss) - 3.5 * ln2 / 3.0).abs() < 1e-15);
    // Risk −(S_0 + S_1) = −¾.
    let risk = values(&discrete_risk(&logits).unwrap());
    assert!(risk.iter().all(|&r| (r + 0.75).abs() < 1e-15), "{risk:?}");
    assert!(nll_survival(&logits, &[2, 0, 0], &[false; 3], 0.0).is_err());
}

#[test]
fn cox_matches_the_references_formula_in_torch_and_by_hand() {
    let f = fixture();
    let time = values(&f["cox_time"]);
    let event: Vec<bool> = values(&f["cox_event"]).iter().map(|&e| e == 1.0).collect();
    let x = Var::from_tensor(&f["cox_risk"]).unwrap();
    let loss = cox_partial_likelihood(x.as_tensor(), &time, &event).unwrap();
    let want = values(&f["cox_loss"])[0];
    assert!(
        (scalar(&loss) - want).abs() < 1e-12,
        "{} vs {want}",
        scalar(&loss)
    );
    let got = values(loss.backward().unwrap().get(x.as_tensor()).unwrap());
    for (g, w) in got.iter().zip(values(&f["cox_grad"])) {
        assert!((g - w).abs() < 1e-12, "gradient {g} vs torch {w}");
    }

    let dev = Device::Cpu;
    let theta = Tensor::new(&[0.0f64, std::f64::consts::LN_2], &dev).unwrap();
    // Distinct times: −(−log 3 + (ln 2 − ln 2)) / 2.
    let l = cox_partial_likelihood(&theta, &[1.0, 2.0], &[true, true]).unwrap();
    assert!((scalar(&l) - 3f64.ln() / 2.0).abs() < 1e-15);
    // Tied times (Breslow): both risk sets hold both patients.
    let l = cox_partial_likelihood(&theta, &[1.0, 1.0], &[true, true]).unwrap();
    let want = (2.0 * 3f64.ln() - std::f64::consts::LN_2) / 2.0;
    assert!((scalar(&l) - want).abs() < 1e-15);
    // Censored patients only widen risk sets.
    let l = cox_partial_likelihood(&theta, &[1.0, 2.0], &[true, false]).unwrap();
    assert!((scalar(&l) - 3f64.ln() / 2.0).abs() < 1e-15);
    assert!(cox_partial_likelihood(&theta, &[1.0], &[true]).is_err());
}
