"""GiMP-rs from Python, notebook style: generate the demo cohort, look at it as arrays, train
GiMP (the demo preset: its three stages in about twenty seconds on two cores), evaluate it, run it
on one test patient and draw the patch attention over the slide's coordinates.

    pip install ./python matplotlib        # from the repository root
    python docs/python_example.py [WORKDIR]   # default: python-demo/

Each block below can be pasted into a notebook cell. Without matplotlib the example says so and
skips only the figure.
"""

import sys
from pathlib import Path

import numpy as np

import gimp_rs

work = Path(sys.argv[1] if len(sys.argv) > 1 else "python-demo")

# 1. The demo's synthetic cohort (160 patients, LUAD vs LUSC, CLAM feature files, GDC and
#    matrix expression, a 60/20/20 split); the same seed writes the same bytes.
made = gimp_rs.synth(work / "cohort", seed=0, force=True)
cohort = gimp_rs.Cohort.load(made["cohort"])
print(cohort)
summary = cohort.check()  # raises gimp_rs.CohortError listing every problem, if any
print(f"{summary['patients']} patients, {summary['feature_dim']}-d features, "
      f"{summary['expression']['genes']} genes")

# 2. The cohort as arrays.
split = cohort.split(0)
print({part: len(idx) for part, idx in split.items()}, "patients per part of split 0")
print("class balance of the training part:", np.bincount(cohort.labels[split["train"]]))
features, coords = cohort.bag(int(split["test"][0]))
assert coords is not None  # CLAM feature files store each patch's coordinates
print("first test patient's bag:", features.shape, features.dtype, "coords", coords.shape)

# 3. GiMP's three stages with the demo preset (progress on stderr; Ctrl-C stops it and
#    resume=True continues from the last finished epoch).
run = gimp_rs.train(cohort, work / "runs" / "gimp", "gimp", preset="demo")
test = run["test"]
assert test is not None and test["roc_auc"] is not None  # a test split, both classes in it
print(f"GiMP test accuracy {test['accuracy']['value']:.3f} "
      f"[{test['accuracy']['low']:.3f}–{test['accuracy']['high']:.3f}], "
      f"ROC-AUC {test['roc_auc']['value']:.3f}")

# 4. The checkpoint on the whole test split, and the same metrics recomputed from predictions.
model = gimp_rs.Model.load(run["checkpoint"])
expression_table = cohort.expression()
assert expression_table is not None  # the cohort has expression
genes, expression = expression_table
labels, probabilities = [], []
for i in split["test"]:
    has_slides = any(p is not None for _, p in cohort.slides[i])
    has_expression = not np.isnan(expression[i]).any()
    if not (has_slides and has_expression):
        continue
    bag, _ = cohort.bag(int(i))
    p = model.predict(features=bag, expression=expression[i], genes=genes)
    labels.append(cohort.labels[i])
    probabilities.append(p.probabilities)
metrics = gimp_rs.report(np.array(labels), np.array(probabilities))
print(f"{metrics['n']} test patients with both modalities: accuracy "
      f"{metrics['accuracy']['value']:.3f}, confusion {metrics['confusion']}")

# 5. One patient's attention over its patches (CLS attention of GiMP's aggregator).
i = int(split["test"][0])
bag, coords = cohort.bag(i)
p = model.predict(features=bag, expression=expression[i], genes=genes)
assert coords is not None and p.attention is not None  # GiMP scores every patch
print(f"patient {cohort.patients[i]}: {p.predicted_class} "
      f"(p = {p.probabilities.max():.3f}; true class {cohort.classes[cohort.labels[i]]})")
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib is not installed: `pip install matplotlib` to draw the heatmap")
else:
    fig, ax = plt.subplots(figsize=(6, 5))
    points = ax.scatter(coords[:, 0], coords[:, 1], c=p.attention, s=18, marker="s", cmap="inferno")
    ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.set_title(f"{cohort.patients[i]}: attention per patch ({p.predicted_class})")
    fig.colorbar(points, ax=ax, label="attention", shrink=0.6)
    out = work / "attention.png"
    fig.savefig(out, dpi=120, bbox_inches="tight")
    print(f"heatmap written to {out}")
