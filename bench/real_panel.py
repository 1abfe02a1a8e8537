"""Runs the real-data panel (docs/REAL_DATA.md) and writes its table; bench/real_panel.sh calls
it after building the cohorts with tools/build_real_panel.py.

    python3 bench/real_panel.py PANEL_DIR --gimp target/release/gimp-rs [--seeds 1,2,3]
                                [--only NAME,...] [--out PANEL_DIR/results]

For every cohort of PANEL_DIR/panel.json and every seed S: five stratified folds
(`gimp-rs split --scheme kfold --k 5 --val 0.2 --seed S`, into NAME/splits-seedS, named by
NAME/seedS.toml), then on those split files

* the linear baseline: `gimp-rs baseline logreg` (classification; its test predictions come
  from the same model as the `logreg` row of `experiment table1`) or `gimp-rs baseline cox
  --scores` (survival);
* SNN and GroupMSA with every default: `gimp-rs experiment table1 --rows snn,group_msa
  [--task survival] --folds 5 --transform none` (fresh experiment folder, so the time is the
  training time; `PANEL_DEEP_FLAGS`, e.g. "--select-lr 1e-3,1e-4", adds flags to these two
  commands when a default is being compared on the tuning cohorts);
* the scikit-learn / scikit-survival reference (bench/real_panel_reference.py).

Figures: the test metric of each fold; mean ± std over the seeds (the mean of each seed's five
folds, then mean and standard deviation of the three); the pooled metric (every patient once per
seed, its probabilities or risk averaged over the seeds) with a bootstrap 95% interval; the
paired sign-flip test of a model's 15 fold-and-seed figures against the linear baseline's (exact,
two-sided; the folds share training patients, so p is optimistic); the wall time. Tuning and
held-out cohorts are reported apart (roles fixed in tools/build_real_panel.py).
"""
import argparse
import shlex
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import time

# One BLAS thread: the fits are small, and the machine's two cores are shared.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_panel_reference as reference  # noqa: E402

BOOTSTRAP = 1000
LABELS = {"logreg": "logistic regression (`baseline logreg`, C = 0.1)",
          "sklearn": "scikit-learn LogisticRegression (C = 0.1, train + val)",
          "cox": "Cox, L2 (`baseline cox`, λ by inner 5-fold CV)",
          "sksurv": "scikit-survival ridge Cox (α by inner 5-fold CV)",
          "snn": "SNN", "group_msa": "GroupMSA"}


# Extra flags for the deep models' experiments (e.g. a selection grid being compared on the
# tuning cohorts): PANEL_DEEP_FLAGS="--select-lr 1e-3,1e-4". Empty: every default.
DEEP_FLAGS = shlex.split(os.environ.get("PANEL_DEEP_FLAGS", ""))

# The deep models' runs (rows × folds) are independent: they run as PANEL_JOBS concurrent shards
# of one experiment (`--shard I/N`), each process with its share of the cores (`--threads`).
# The gene models' results do not depend on the thread count (the same predictions, byte for byte,
# with one thread or two; every figure of the panel the same both ways), so this changes the time
# and nothing else; on two cores two one-thread
# shards of these small models run more than twice as fast as one two-thread process.
JOBS = max(1, int(os.environ.get("PANEL_JOBS", os.cpu_count() or 1)))


def sh_sharded(gimp, args):
    """`gimp-rs ARGS` (an experiment) as JOBS concurrent shards, then once more unsharded, which
    runs nothing left and writes the complete tables; returns the wall seconds of it all."""
    if JOBS == 1:
        return sh([gimp] + args)[1]
    start = time.monotonic()
    threads = str(max(1, (os.cpu_count() or 1) // JOBS))
    procs = [subprocess.Popen([gimp, "--threads", threads] + args + ["--shard", f"{i}/{JOBS}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(JOBS)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            sys.exit(f"failed ({p.returncode}): {' '.join(p.args)}\n{err[-4000:]}")
    sh([gimp] + args)
    return time.monotonic() - start


def sh(cmd):
    """Runs a command; returns (stdout, seconds). A failure stops the panel with its stderr."""
    start = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-4000:]}")
    return r.stdout, time.monotonic() - start


def seed_cohort(folder, seed):
    """NAME/seedS.toml: the cohort file with its splits in NAME/splits-seedS."""
    with open(os.path.join(folder, "cohort.toml")) as f:
        text = f.read()
    path = os.path.join(folder, f"seed{seed}.toml")
    with open(path, "w") as f:
        f.write(text.replace('dir = "splits"', f'dir = "splits-seed{seed}"'))
    return path


def finished(exp, rows, folds):
    """Whether an experiment folder holds every fold's metrics.json of `rows`."""
    return all(os.path.isfile(os.path.join(exp, row, f"fold{k}", "seed0", "metrics.json"))
               for row in rows for k in range(folds))


def seed_seconds(folder, seed, seconds=None):
    """Reads (or, given `seconds`, writes) NAME/seconds-seedS.json: the wall time of the split,
    the linear baseline and the deep models of one seed, which --reuse reports again."""
    path = os.path.join(folder, f"seconds-seed{seed}.json")
    if seconds is not None:
        with open(path, "w") as f:
            json.dump(seconds, f)
        return seconds
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"split": float("nan"), "linear": float("nan"), "deep": float("nan")}


def run_metrics(exp, row, folds):
    """The metrics.json of each fold of an experiment row (seed 0 of the experiment)."""
    out = []
    for k in range(folds):
        with open(os.path.join(exp, row, f"fold{k}", "seed0", "metrics.json")) as f:
            out.append(json.load(f))
    return out


# ---------------------------------------------------------------------------------------------
# Statistics


def cindex(time_, event, risk):
    """Harrell's c-index: a pair is comparable when the earlier time is an event (at equal
    times, an event before a censoring); ties in risk count one half."""
    e = event.astype(bool)
    comparable = ((time_[:, None] < time_[None, :]) & e[:, None]) | (
        (time_[:, None] == time_[None, :]) & e[:, None] & ~e[None, :])
    concordant = (risk[:, None] > risk[None, :]) + 0.5 * (risk[:, None] == risk[None, :])
    n = comparable.sum()
    return float((concordant * comparable).sum() / n) if n else float("nan")


def auc(labels, score):
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, score)) if len(set(labels.tolist())) == 2 else float("nan")


def bootstrap(metric, n, seed=0):
    """95% percentile interval of metric(indices) over BOOTSTRAP resamples of n patients."""
    rng = np.random.default_rng(seed)
    values = [metric(rng.integers(0, n, n)) for _ in range(BOOTSTRAP)]
    values = [v for v in values if np.isfinite(v)]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def sign_flip(diffs):
    """Exact two-sided paired sign-flip test of mean(diffs) = 0."""
    d = np.asarray(diffs, dtype=float)
    if len(d) == 0 or np.allclose(d, 0):
        return 1.0
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    null = np.abs((signs * d).mean(axis=1))
    return float((null >= abs(d.mean()) - 1e-12).mean())


def over_seeds(per_run, seeds):
    """(mean, std) over the seeds of each seed's mean over its folds."""
    means = [np.mean([v for (s, _), v in per_run.items() if s == seed]) for seed in seeds]
    return float(np.mean(means)), float(np.std(means, ddof=1)) if len(means) > 1 else 0.0


# ---------------------------------------------------------------------------------------------
# One cohort


def classification(c, gimp, seeds, folds, reuse=False):
    folder = os.path.dirname(c["cohort"])
    table, expression = reference.read_cohort(folder)
    runs = {m: {"acc": {}, "auc": {}, "pooled": {}} for m in ("logreg", "sklearn", "snn", "group_msa")}
    seconds = {"split": 0.0, "linear": 0.0, "deep": 0.0, "reference": 0.0}
    mismatches = 0
    for seed in seeds:
        toml = seed_cohort(folder, seed)
        splits = os.path.join(folder, f"splits-seed{seed}")
        exp = os.path.join(folder, f"exp-seed{seed}")
        if reuse and finished(exp, ("logreg", "snn", "group_msa"), folds):
            took = seed_seconds(folder, seed)
            text = sh([gimp, "baseline", "logreg", toml, "--transform", "none", "--json"])[0]
        else:
            shutil.rmtree(splits, ignore_errors=True)
            shutil.rmtree(exp, ignore_errors=True)
            took = {"split": sh([gimp, "split", toml, "--scheme", "kfold", "--k", str(folds),
                                 "--val", "0.2", "--seed", str(seed), "--out", splits])[1]}
            text, t1 = sh([gimp, "baseline", "logreg", toml, "--transform", "none", "--json"])
            _, t2 = sh([gimp, "experiment", "table1", toml, "--rows", "logreg", "--folds",
                        str(folds), "--transform", "none", "--out", exp])
            took["linear"] = t1 + t2
            took["deep"] = sh_sharded(gimp, ["experiment", "table1", toml, "--rows",
                                              "snn,group_msa", "--folds", str(folds),
                                              "--transform", "none", "--out", exp] + DEEP_FLAGS)
            seed_seconds(folder, seed, took)
        for k, v in took.items():
            seconds[k] += v
        baseline = json.loads(text)["folds"]
        for row in ("logreg", "snn", "group_msa"):
            for k, m in enumerate(run_metrics(exp, row, folds)):
                runs[row]["acc"][(seed, k)] = m["test"]["accuracy"]["value"]
                runs[row]["auc"][(seed, k)] = (m["test"]["roc_auc"] or {}).get("value", np.nan)
                p = m["test_predictions"]
                for i, label, probs in zip(p["patients"], p["labels"], p["probs"]):
                    runs[row]["pooled"].setdefault(i, (label, []))[1].append(probs)
        for k, f in enumerate(baseline):
            # `baseline logreg` and the experiment's logreg row are one model on one split.
            if abs(f["test"]["accuracy"]["value"] - runs["logreg"]["acc"][(seed, k)]) > 1e-9:
                mismatches += 1
        start = time.monotonic()
        classes = sorted(table["label"].unique())
        for k, r in enumerate(reference.logistic(table, expression, reference.read_splits(splits))):
            runs["sklearn"]["acc"][(seed, k)] = r["accuracy"]
            runs["sklearn"]["auc"][(seed, k)] = r["roc_auc"]
            for case, probs in r["predictions"].items():
                label = classes.index(table.loc[case, "label"])
                runs["sklearn"]["pooled"].setdefault(case, (label, []))[1].append(probs)
        seconds["reference"] += time.monotonic() - start
    models = {}
    for name, r in runs.items():
        pooled = list(r["pooled"].values())
        labels = np.array([lab for lab, _ in pooled])
        probs = np.array([np.mean(ps, axis=0) for _, ps in pooled])
        binary = probs.shape[1] == 2

        def acc(idx):
            return float((probs[idx].argmax(axis=1) == labels[idx]).mean())

        def roc(idx):
            return auc(labels[idx], probs[idx, 1]) if binary else float("nan")

        everyone = np.arange(len(labels))
        models[name] = {
            "accuracy": over_seeds(r["acc"], seeds), "roc_auc": over_seeds(r["auc"], seeds),
            "pooled_accuracy": (acc(everyone), *bootstrap(acc, len(labels))),
            "pooled_roc_auc": (roc(everyone), *bootstrap(roc, len(labels))) if binary else None,
            "runs": {"accuracy": {f"{s}/{k}": v for (s, k), v in r["acc"].items()},
                     "roc_auc": {f"{s}/{k}": v for (s, k), v in r["auc"].items()}},
        }
        if name != "logreg":
            for metric, key in (("accuracy", "acc"), ("roc_auc", "auc")):
                diffs = [r[key][k] - runs["logreg"][key][k] for k in sorted(r[key])]
                models[name][f"{metric}_vs_linear"] = (float(np.mean(diffs)), sign_flip(diffs))
    return models, seconds, {"logreg_mismatched_folds": mismatches}


def survival(c, gimp, seeds, folds, reuse=False):
    folder = os.path.dirname(c["cohort"])
    table, expression = reference.read_cohort(folder)
    time_column = "time_days" if "time_days" in table else "time"
    runs = {m: {"cindex": {}, "pooled": {}} for m in ("cox", "sksurv", "snn", "group_msa")}
    seconds = {"split": 0.0, "linear": 0.0, "deep": 0.0, "reference": 0.0}
    alphas = []
    for seed in seeds:
        toml = seed_cohort(folder, seed)
        splits = os.path.join(folder, f"splits-seed{seed}")
        exp = os.path.join(folder, f"exp-seed{seed}")
        scores = os.path.join(folder, f"cox-seed{seed}")
        cox_command = [gimp, "baseline", "cox", toml, "--transform", "none", "--scores", scores,
                       "--json"]
        if reuse and finished(exp, ("snn", "group_msa"), folds):
            took = seed_seconds(folder, seed)
            text = sh(cox_command)[0]
        else:
            for d in (splits, exp, scores):
                shutil.rmtree(d, ignore_errors=True)
            os.makedirs(scores)
            took = {"split": sh([gimp, "split", toml, "--scheme", "kfold", "--k", str(folds),
                                 "--val", "0.2", "--seed", str(seed), "--out", splits])[1]}
            text, took["linear"] = sh(cox_command)
            took["deep"] = sh_sharded(gimp, ["experiment", "table1", toml, "--task", "survival",
                                              "--rows", "snn,group_msa", "--folds", str(folds),
                                              "--transform", "none", "--out", exp] + DEEP_FLAGS)
            seed_seconds(folder, seed, took)
        for k, v in took.items():
            seconds[k] += v
        cox = json.loads(text)
        for f in cox["folds"]:
            k = f["fold"]
            runs["cox"]["cindex"][(seed, k)] = f["test"]["cindex"]
            rows = reference.pd.read_csv(os.path.join(scores, f"split{k}_test.csv"),
                                         dtype={"case_id": str})
            for case, t_, e, risk in rows[["case_id", "time", "event", "risk"]].itertuples(index=False):
                runs["cox"]["pooled"].setdefault(case, (t_, e, []))[2].append(risk)
        for row in ("snn", "group_msa"):
            for k, m in enumerate(run_metrics(exp, row, folds)):
                runs[row]["cindex"][(seed, k)] = m["test_survival"]["cindex"]["value"]
                p = m["test_predictions"]
                for i, t_, e, risk in zip(p["patients"], p["time"], p["event"], p["risk"]):
                    runs[row]["pooled"].setdefault(i, (t_, e, []))[2].append(risk)
        start = time.monotonic()
        ref = reference.ridge_cox(table, expression, reference.read_splits(splits), time_column)
        for k, r in enumerate(ref):
            runs["sksurv"]["cindex"][(seed, k)] = r["cindex"]
            alphas.append(r["alpha"])
            for case, risk in r["risk"].items():
                t_, e = table.loc[case, time_column], table.loc[case, "event"]
                runs["sksurv"]["pooled"].setdefault(case, (t_, e, []))[2].append(risk)
        seconds["reference"] += time.monotonic() - start
    models = {}
    for name, r in runs.items():
        pooled = list(r["pooled"].values())
        t_ = np.array([p[0] for p in pooled], dtype=float)
        e = np.array([p[1] for p in pooled], dtype=int)
        risk = np.array([np.mean(p[2]) for p in pooled])

        def ci(idx):
            return cindex(t_[idx], e[idx], risk[idx])

        models[name] = {"cindex": over_seeds(r["cindex"], seeds),
                        "pooled_cindex": (ci(np.arange(len(t_))), *bootstrap(ci, len(t_))),
                        "runs": {"cindex": {f"{s}/{k}": v for (s, k), v in r["cindex"].items()}}}
        if name != "cox":
            diffs = [r["cindex"][k] - runs["cox"]["cindex"][k] for k in sorted(r["cindex"])]
            models[name]["cindex_vs_linear"] = (float(np.mean(diffs)), sign_flip(diffs))
    return models, seconds, {"ridge_alphas": alphas}


# ---------------------------------------------------------------------------------------------
# The table


def fmt_ms(ms, scale=1.0):
    return f"{ms[0] * scale:.3f} ± {ms[1] * scale:.3f}"


def fmt_pooled(p):
    return "–" if p is None else f"{p[0]:.3f} [{p[1]:.3f}–{p[2]:.3f}]"


def fmt_vs(v, points):
    if v is None:
        return "–"
    d = v[0] * 100 if points else v[0]
    return f"{d:+.1f} (p {v[1]:.3f})" if points else f"{d:+.3f} (p {v[1]:.3f})"


def markdown(results, header, runs):
    lines = [header, ""]
    for role in ("tuning", "held-out"):
        cohorts = [r for r in results if r["role"] == role]
        if not cohorts:
            continue
        title = {"tuning": "Tuning cohorts (defaults may be chosen on these)",
                 "held-out": "Held-out cohorts (defaults are judged on these only)"}[role]
        lines += [f"### {title}", ""]
        cls = [r for r in cohorts if r["task"] == "classification"]
        if cls:
            lines += ["| cohort (patients × genes) | model | accuracy | pooled accuracy [95% CI] | "
                      "Δ accuracy vs linear, points (p) | ROC-AUC | pooled ROC-AUC [95% CI] | "
                      "Δ ROC-AUC vs linear (p) |", "|---|---|---|---|---|---|---|---|"]
            for r in cls:
                for i, (m, v) in enumerate(r["models"].items()):
                    name = f"{r['name']} ({r['patients']} × {r['genes']:,})" if i == 0 else ""
                    lines.append(f"| {name} | {LABELS[m]} | {fmt_ms(v['accuracy'])} | "
                                 f"{fmt_pooled(v['pooled_accuracy'])} | "
                                 f"{fmt_vs(v.get('accuracy_vs_linear'), True)} | "
                                 f"{fmt_ms(v['roc_auc'])} | {fmt_pooled(v['pooled_roc_auc'])} | "
                                 f"{fmt_vs(v.get('roc_auc_vs_linear'), False)} |")
            lines.append("")
        surv = [r for r in cohorts if r["task"] == "survival"]
        if surv:
            lines += ["| cohort (patients × genes, events) | model | Harrell c-index | "
                      "pooled c-index [95% CI] | Δ c-index vs linear (p) |",
                      "|---|---|---|---|---|"]
            for r in surv:
                for i, (m, v) in enumerate(r["models"].items()):
                    name = (f"{r['name']} ({r['patients']} × {r['genes']:,}, {r['events']})"
                            if i == 0 else "")
                    lines.append(f"| {name} | {LABELS[m]} | {fmt_ms(v['cindex'])} | "
                                 f"{fmt_pooled(v['pooled_cindex'])} | "
                                 f"{fmt_vs(v.get('cindex_vs_linear'), False)} |")
            lines.append("")
        # Average deficit of each deep model against the linear baseline over the role's cohorts.
        for task, metric, points in (("classification", "accuracy", True),
                                     ("classification", "roc_auc", False),
                                     ("survival", "cindex", False)):
            rs = [r for r in cohorts if r["task"] == task]
            if not rs:
                continue
            parts = []
            for m in ("snn", "group_msa"):
                d = np.mean([r["models"][m][f"{metric}_vs_linear"][0] for r in rs])
                worst = min(r["models"][m][f"{metric}_vs_linear"][0] for r in rs)
                scale = 100 if points else 1
                unit = " points" if points else ""
                parts.append(f"{LABELS[m]} {d * scale:+.{1 if points else 3}f}{unit} on average "
                             f"(worst {worst * scale:+.{1 if points else 3}f})")
            lines.append(f"- {metric.replace('_', '-')} vs the linear baseline over the "
                         f"{len(rs)} {role} {task} cohorts: " + "; ".join(parts) + ".")
        lines.append("")
    lines += ["### Time per cohort (seconds, all seeds)", "",
              f"| cohort | role | splits | linear baseline | SNN + GroupMSA (2 × {runs} runs) | "
              "reference (Python) | total |", "|---|---|---|---|---|---|---|"]
    def secs(x):
        return "–" if not np.isfinite(x) else f"{x:.1f}"

    for r in results:
        s = r["seconds"]
        lines.append(f"| {r['name']} | {r['role']} | {secs(s['split'])} | {secs(s['linear'])} | "
                     f"{secs(s['deep'])} | {secs(s['reference'])} | {secs(sum(s.values()))} |")
    return "\n".join(lines) + "\n"


def write(out, results, a, seeds, load_before, start, version):
    """Writes the table of the cohorts finished so far (after each one, so an interrupted run
    leaves its figures); returns the Markdown."""
    total = time.monotonic() - start
    header = (f"Measured by `bash bench/real_panel.sh` ({version}), seeds {a.seeds}, {a.folds} folds; "
              f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), the deep models "
              f"as {JOBS} concurrent shard(s), load average "
              f"{load_before} before and {loadavg()} after; {len(results)} cohort(s) in "
              f"{total / 60:.1f} min.")
    md = markdown(results, header, a.folds * len(seeds))
    with open(os.path.join(out, "real_panel.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out, "real_panel.json"), "w") as f:
        json.dump({"header": header, "results": results}, f, indent=1, default=str)
    return md


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("panel")
    ap.add_argument("--gimp", required=True)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--only", default="")
    ap.add_argument("--out")
    ap.add_argument("--reuse", action="store_true",
                    help="keep the splits and experiments a run finished (their times are read "
                         "from NAME/seconds-seedS.json); only the baselines and the reference "
                         "are run again")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    out = a.out or os.path.join(a.panel, "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(a.panel, "panel.json")) as f:
        panel = json.load(f)
    only = [n for n in a.only.split(",") if n]
    unknown = [n for n in only if n not in {c["name"] for c in panel}]
    if unknown:
        sys.exit(f"no cohort {unknown} in {a.panel}/panel.json")
    load_before, start, results = loadavg(), time.monotonic(), []
    version = sh([a.gimp, "--version"])[0].strip()
    for c in panel:
        if only and c["name"] not in only:
            continue
        print(f"{c['name']} ({c['role']}, {c['task']}: {c['patients']} patients × {c['genes']} genes)",
              flush=True)
        run = classification if c["task"] == "classification" else survival
        models, seconds, notes = run(c, a.gimp, seeds, a.folds, a.reuse)
        results.append({**c, "models": models, "seconds": seconds, "notes": notes})
        write(out, results, a, seeds, load_before, start, version)
        for m, v in models.items():
            key = "accuracy" if "accuracy" in v else "cindex"
            print(f"    {m:10} {key} {fmt_ms(v[key])}", flush=True)
        print(f"    {', '.join(f'{k} {s:.1f} s' for k, s in seconds.items())}", flush=True)
    md = write(out, results, a, seeds, load_before, start, version)
    print("\n" + md)
    print(f"(written to {out}/real_panel.md and .json)")


if __name__ == "__main__":
    main()
