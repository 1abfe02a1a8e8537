#!/usr/bin/env python3
"""Adds survival columns to a synthetic cohort (bench/survival_triplets.sh).

Each patient's event time is exponential with a hazard three times higher in the second class
than in the first, so the class signal the synthetic slides and expression carry is the
known truth a survival model can recover; censoring times are uniform on [0, 4 × the
median event time] (`--horizon 4`, the default: about a third of patients censored; 1.5:
about two thirds, as in TCGA). Times in months. The label table gains
`survival_months` and `censorship` (1 = censored, MCAT's convention) and the cohort file a
`[survival]` section. Deterministic for --seed.
"""
import argparse
import csv
import random
import statistics
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cohort", type=Path, help="folder with dataset.csv and cohort.toml")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--horizon", type=float, default=4.0, help="censoring horizon / median event time")
    a = ap.parse_args()
    table = a.cohort / "dataset.csv"
    with table.open() as f:
        rows = list(csv.DictReader(f))
    if not rows or "survival_months" in rows[0]:
        raise SystemExit(f"{table}: empty, or it has survival columns already")
    classes = sorted({r["label"] for r in rows})
    rng = random.Random(a.seed)
    cases = sorted({r["case_id"] for r in rows})
    event = {}
    for c in cases:
        label = next(r["label"] for r in rows if r["case_id"] == c)
        hazard = 1 / 30 * (3.0 if label == classes[-1] else 1.0)
        event[c] = rng.expovariate(hazard)
    horizon = a.horizon * statistics.median(event.values())
    outcome = {}
    for c in cases:
        censor = rng.uniform(0, horizon)
        outcome[c] = (min(event[c], censor), int(censor < event[c]))
    fields = list(rows[0].keys()) + ["survival_months", "censorship"]
    tmp = table.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            t, cens = outcome[r["case_id"]]
            w.writerow({**r, "survival_months": f"{t:.3f}", "censorship": cens})
    tmp.replace(table)
    toml = a.cohort / "cohort.toml"
    text = toml.read_text()
    text += '\n[survival]\ntime_column = "survival_months"\ncensorship_column = "censorship"\nunit = "months"\nbins = 4\n'
    toml.write_text(text)
    censored = sum(c for _, c in outcome.values())
    print(f"{len(cases)} patients, {censored} censored, horizon {horizon:.1f} months")


if __name__ == "__main__":
    main()
