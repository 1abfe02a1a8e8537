"""Reference fits for gimp-linear's L2-penalised Cox model (crates/gimp-linear/tests/fixtures/cox.json).

Three fixed random data sets (numpy seed 17), each with its covariates, times and events:

  lifelines_untied  80 patients, 5 covariates on different scales, distinct times: lifelines
                    CoxPHFitter(penalizer=0.1, l1_ratio=0). lifelines standardises the covariates
                    itself (mean, sample standard deviation), penalises
                    n * penalizer * 1/2 * ||beta||^2 on that scale and returns coefficients on the
                    original scale (params_) and the penalised log-likelihood (log_likelihood_).
                    It handles ties by Efron's method; with distinct times Efron is Breslow.
  lifelines_wide    30 patients, 60 covariates (more covariates than patients, the regime of
                    genes), penalizer=0.5.
  sksurv_ties       60 patients, 4 covariates, integer times with many ties:
                    scikit-survival CoxPHSurvivalAnalysis(alpha, ties="breslow"), whose objective
                    is (-l + alpha/2 ||beta||^2) / n on the covariates as given; alpha = 0.6 * n.
                    Also Breslow's partial log-likelihood at its coefficients, computed here from
                    the definition.

Run once (needs numpy, pandas, lifelines, scikit-survival); the output is committed:
    python3 tools/make_cox_fixture.py [OUT]
"""
import json
import sys

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.util import Surv

out = sys.argv[1] if len(sys.argv) > 1 else "crates/gimp-linear/tests/fixtures/cox.json"
rng = np.random.default_rng(17)


def simulate(n, p, integer_times):
    scales = rng.uniform(0.5, 4.0, size=p)
    x = rng.normal(size=(n, p)) * scales + rng.normal(size=p)
    beta = rng.normal(size=p) * 0.6 / scales
    beta[p // 2:] = 0.0  # some covariates carry nothing
    event_time = rng.exponential(scale=10.0 * np.exp(-(x - x.mean(0)) @ beta))
    censor_time = rng.exponential(scale=15.0, size=n)
    time = np.minimum(event_time, censor_time)
    event = event_time <= censor_time
    time = np.ceil(time) if integer_times else np.round(time, 6) + 1e-6 * np.arange(n)
    return x, time, event


def breslow_log_likelihood(eta, time, event):
    return float(sum(eta[i] - np.log(np.exp(eta[time >= time[i]]).sum())
                     for i in range(len(time)) if event[i]))


def lifelines_case(n, p, penalizer):
    x, time, event = simulate(n, p, integer_times=False)
    assert len(np.unique(time[event])) == event.sum(), "event times must be distinct"
    df = pd.DataFrame(x, columns=[f"x{j}" for j in range(p)])
    df["time"], df["event"] = time, event.astype(int)
    cph = CoxPHFitter(penalizer=penalizer, l1_ratio=0.0)
    cph.fit(df, duration_col="time", event_col="event",
            fit_options={"precision": 1e-14, "r_precision": 1e-16, "max_steps": 500})
    return {
        "x": x.tolist(), "time": time.tolist(), "event": event.tolist(),
        "penalizer": penalizer,
        "params": cph.params_.values.tolist(),
        "log_likelihood": float(cph.log_likelihood_),
    }


def sksurv_case(n, p, penalty):
    x, time, event = simulate(n, p, integer_times=True)
    assert len(np.unique(time[event])) < event.sum(), "want tied event times"
    model = CoxPHSurvivalAnalysis(alpha=penalty * n, ties="breslow", n_iter=500, tol=1e-14)
    model.fit(x, Surv.from_arrays(event=event, time=time))
    return {
        "x": x.tolist(), "time": time.tolist(), "event": event.tolist(),
        "penalty": penalty,
        "coef": model.coef_.tolist(),
        "log_likelihood": breslow_log_likelihood(x @ model.coef_, time, event),
    }


fixture = {
    "lifelines_untied": lifelines_case(80, 5, 0.1),
    "lifelines_wide": lifelines_case(30, 60, 0.5),
    "sksurv_ties": sksurv_case(60, 4, 0.6),
}
with open(out, "w") as f:
    json.dump(fixture, f)
print(f"wrote {out}")
