"""The scikit-learn / scikit-survival reference of the real-data panel (bench/real_panel.sh), on
the split files gimp-rs wrote:

* classification: scikit-learn's LogisticRegression (L2, C = 0.1, lbfgs) on genes z-scored on the
  training part, fitted on train + validation (nothing is chosen, so the validation part is
  training data), predicting the test part;
* survival: scikit-survival's ridge Cox model (CoxPHSurvivalAnalysis(alpha), Breslow ties), its
  penalty alpha chosen from ALPHAS by 5-fold cross-validation (Harrell's c-index) inside train +
  validation, then refitted on all of it. With more genes than patients the ridge solution lies
  in the span of the training patients, so each fit works on the training patients' coordinates
  (z = x V from the SVD of the training matrix): the same model, exactly. scikit-survival's
  optimiser loops over patients in Python (seconds a fit at 300 patients), too slow for the
  ~450 fits of a cohort's inner cross-validation, so the fits are made by `ridge_cox_newton`
  (the same objective, Newton's method, vectorised); `main` below refits the first split with
  scikit-survival itself and prints the largest difference of the test risks.

Used by bench/real_panel.py; `python3 bench/real_panel_reference.py COHORT_DIR SPLITS_DIR` prints
one cohort's test figures per split.
"""
import glob
import os
import sys

# One BLAS thread: the fits are small, and the machine's two cores are shared.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd

ALPHAS = [1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0]


def read_cohort(folder):
    """(label table indexed by case id, expression indexed by case id) of a panel cohort."""
    table = pd.read_csv(os.path.join(folder, "dataset.csv"), dtype={"case_id": str})
    table = table.set_index("case_id")
    expression = pd.read_csv(os.path.join(folder, "expression.csv"), dtype={"case_id": str})
    return table, expression.set_index("case_id").astype(float)


def read_splits(splits_dir):
    """[(train + val ids, test ids)] of `gimp-rs split`'s splits_{k}.csv files, in k order."""
    files = sorted(glob.glob(os.path.join(splits_dir, "splits_[0-9]*.csv")),
                   key=lambda p: int(os.path.basename(p)[len("splits_"):].split(".")[0].split("_")[0]))
    out = []
    for path in files:
        if path.endswith(("_bool.csv", "_descriptor.csv")):
            continue
        s = pd.read_csv(path, dtype=str)
        ids = lambda col: [v for v in s[col].dropna().tolist() if v != ""]  # noqa: E731
        out.append((ids("train") + ids("val"), ids("test")))
    return out


def zscore(fit, *others):
    mean, std = fit.mean(axis=0), fit.std(axis=0)
    std[std == 0] = 1.0
    return [(m - mean) / std for m in (fit, *others)]


def logistic(table, expression, splits):
    """Per split: {"accuracy", "roc_auc", "predictions": {case: probabilities}}."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, roc_auc_score

    classes = sorted(table["label"].unique())
    y = table["label"].map({c: i for i, c in enumerate(classes)})
    out = []
    for fit_ids, test_ids in splits:
        xf, xt = zscore(expression.loc[fit_ids].values, expression.loc[test_ids].values)
        model = LogisticRegression(C=0.1, max_iter=5000).fit(xf, y.loc[fit_ids].values)
        probs = model.predict_proba(xt)
        yt = y.loc[test_ids].values
        auc = (roc_auc_score(yt, probs[:, 1]) if len(classes) == 2
               else roc_auc_score(yt, probs, multi_class="ovr"))
        out.append({"accuracy": float(accuracy_score(yt, probs.argmax(axis=1))),
                    "roc_auc": float(auc),
                    "predictions": {c: p.tolist() for c, p in zip(test_ids, probs)}})
    return out


def _coordinates(x):
    """An orthonormal basis V of the row space of x (x @ beta = (x @ V) @ (V.T @ beta)), from
    the eigenvectors of the patients' Gram matrix x x' (n x n; cheaper than an SVD of x)."""
    lam, u = np.linalg.eigh(x @ x.T)
    keep = lam > lam.max() * 1e-12
    return x.T @ (u[:, keep] / np.sqrt(lam[keep]))


def ridge_cox_newton(z, time, event, alpha, tol=1e-9, max_iter=100):
    """Coefficients minimising -log partial likelihood (Breslow ties) + alpha/2 |beta|^2 on z,
    the objective of scikit-survival's CoxPHSurvivalAnalysis(alpha) times the patient count, by
    Newton's method with step halving. The risk-set sums are cumulative sums over the patients
    in time order, and the Hessian's sum over risk sets is one weighted product z' W z."""
    order = np.argsort(time, kind="stable")
    z, t, e = z[order], time[order], event[order].astype(bool)
    first = np.searchsorted(t, t, side="left")   # a patient's risk set starts at its time
    last = np.searchsorted(t, t, side="right") - 1
    n, r = z.shape

    def parts(beta):
        eta = z @ beta
        shift = eta.max()
        w = np.exp(eta - shift)
        s0 = np.cumsum(w[::-1])[::-1][first]
        s1 = np.cumsum((w[:, None] * z)[::-1], axis=0)[::-1][first]
        loglik = np.sum(eta[e] - shift - np.log(s0[e]))
        return w, s0, s1, loglik

    def objective(beta):
        f = -parts(beta)[3] + 0.5 * alpha * beta @ beta
        return f if np.isfinite(f) else np.inf

    beta = np.zeros(r)
    f = objective(beta)
    for _ in range(max_iter):
        w, s0, s1, loglik = parts(beta)
        mu = s1[e] / s0[e][:, None]
        grad = -(z[e].sum(axis=0) - mu.sum(axis=0)) + alpha * beta
        c = np.cumsum(np.where(e, 1.0 / s0, 0.0))[last]
        hess = (z * (w * c)[:, None]).T @ z - mu.T @ mu + alpha * np.eye(r)
        step = np.linalg.solve(hess, grad)
        size, fc = 1.0, np.inf
        while size >= 1e-10:
            candidate = beta - size * step
            fc = objective(candidate)
            if fc <= f:
                break
            size /= 2
        if fc > f:  # no step lowers the objective: beta is the minimum to working precision
            break
        done = f - fc <= tol * max(1.0, abs(f))
        beta, f = candidate, fc
        if done:
            break
    return beta


def _cox_fit(x, time, event, alpha):
    basis = _coordinates(x)
    return basis @ ridge_cox_newton(x @ basis, time, event, alpha)


def sksurv_cox_fit(x, time, event, alpha):
    """The same fit by scikit-survival itself (slower; the panel checks one fit per cohort)."""
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    basis = _coordinates(x)
    model = CoxPHSurvivalAnalysis(alpha=alpha, ties="breslow")
    model.fit(x @ basis, Surv.from_arrays(event=event.astype(bool), time=time))
    return basis @ model.coef_


def _cindex(time, event, risk):
    from sksurv.metrics import concordance_index_censored

    return concordance_index_censored(event.astype(bool), time, risk)[0]


def _inner_folds(event, k, rng):
    """k folds dealt within events and censorings."""
    fold = np.empty(len(event), dtype=int)
    for e in (0, 1):
        idx = np.flatnonzero(event == e)
        rng.shuffle(idx)
        fold[idx] = np.arange(len(idx)) % k
    return fold


def ridge_cox(table, expression, splits, time_column, seed=0, check=False):
    """Per split: {"cindex", "alpha", "risk": {case: risk}}; with `check`, the first split is
    also fitted by scikit-survival and the largest difference of the test risks recorded."""
    out = []
    for fit_ids, test_ids in splits:
        xf, xt = zscore(expression.loc[fit_ids].values, expression.loc[test_ids].values)
        tf = table.loc[fit_ids, time_column].values.astype(float)
        ef = table.loc[fit_ids, "event"].values.astype(int)
        folds = _inner_folds(ef, 5, np.random.default_rng(seed))
        scores = []
        for alpha in ALPHAS:
            cs = []
            for k in range(5):
                tr, va = folds != k, folds == k
                if ef[va].sum() == 0:
                    continue
                beta = _cox_fit(xf[tr], tf[tr], ef[tr], alpha)
                cs.append(_cindex(tf[va], ef[va], xf[va] @ beta))
            scores.append(np.mean(cs))
        alpha = ALPHAS[int(np.argmax(scores))]
        beta = _cox_fit(xf, tf, ef, alpha)
        risk = xt @ beta
        tt = table.loc[test_ids, time_column].values.astype(float)
        et = table.loc[test_ids, "event"].values.astype(int)
        result = {"cindex": float(_cindex(tt, et, risk)), "alpha": alpha,
                  "risk": dict(zip(test_ids, risk.tolist()))}
        if check and not out:
            # scikit-survival's own fit of the first split: the largest risk difference.
            other = xt @ sksurv_cox_fit(xf, tf, ef, alpha)
            result["sksurv_max_risk_difference"] = float(np.abs(other - risk).max())
            result["risk_range"] = float(np.ptp(risk))
        out.append(result)
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    table, expression = read_cohort(sys.argv[1])
    splits = read_splits(sys.argv[2])
    if "event" in table:
        time_column = "time_days" if "time_days" in table else "time"
        for k, r in enumerate(ridge_cox(table, expression, splits, time_column, check=True)):
            print(f"split {k}: ridge Cox c-index {r['cindex']:.3f} (alpha {r['alpha']:g})")
            if "sksurv_max_risk_difference" in r:
                print(f"  scikit-survival's own fit: test risks differ by at most "
                      f"{r['sksurv_max_risk_difference']:.2e} (range {r['risk_range']:.2f})")
    else:
        for k, r in enumerate(logistic(table, expression, splits)):
            print(f"split {k}: accuracy {r['accuracy']:.3f}, ROC-AUC {r['roc_auc']:.3f}")


if __name__ == "__main__":
    main()
