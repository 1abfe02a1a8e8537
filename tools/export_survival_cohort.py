"""Write a real survival cohort with gene expression, installed from PyPI, as a gimp-rs cohort.

Sources (neither is in the repository; see docs/REAL_DATA.md):
  sksurv-breast-cancer  scikit-survival's GSE7390 (TRANSBIG): 198 patients, 76 probes, distant
                        metastasis in days; the class label is ER status.
  survset:NAME UNIT     a SurvSet data set with expression (DLBCL, chop, DBCD, gse1992, ...;
                        `pip install survset`); no class label, every patient is "all".
                        SurvSet does not record the time unit: give it (days, months or years)
                        from the data set's source.

Output folder: dataset.csv (case_id, slide_id empty, label, time, event), expression.csv
(patients x genes, values as the source gives them: already on a log scale, so gimp-rs reads
them with --transform none) and cohort.toml with a [survival] section naming the columns and the
unit and a [splits] section naming OUT_DIR/splits, which `gimp-rs split` then fills:

    python3 tools/export_survival_cohort.py survset:DLBCL OUT_DIR years
    gimp-rs split OUT_DIR/cohort.toml --scheme kfold --k 5 --val 0.2 --seed 1 --out OUT_DIR/splits
    gimp-rs cohort check OUT_DIR/cohort.toml
    gimp-rs baseline cox OUT_DIR/cohort.toml --transform none
"""
import os
import sys

import pandas as pd


def sksurv_breast_cancer():
    from sksurv.datasets import load_breast_cancer

    x, y = load_breast_cancer()
    genes = [c for c in x.columns if c.startswith("X")]
    ids = [f"GSE7390-{i:03d}" for i in range(len(x))]
    table = pd.DataFrame({
        "case_id": ids,
        "slide_id": "",
        "label": x["er"].astype(str).values,
        "time_days": y["t.tdm"],
        "event": y["e.tdm"].astype(int),
    })
    expression = x[genes].astype(float)
    expression.index = ids
    return table, expression, "days"


# Numeric columns of SurvSet's expression sets that are clinical variables, not genes.
SURVSET_CLINICAL = {"num_age", "num_Age", "num_size", "num_grade", "num_erlev"}


def survset_frame(name):
    """A SurvSet data set's table (pid, event, time, fac_* factors, num_* numbers) and its
    gene columns (the num_* columns less the clinical ones)."""
    from SurvSet.data import SurvLoader

    df = SurvLoader().load_dataset(ds_name=name)["df"]
    genes = [c for c in df.columns if c.startswith("num_") and c not in SURVSET_CLINICAL]
    return df, genes


def survset(name, unit):
    df, genes = survset_frame(name)
    ids = [f"{name}-{p}" for p in df["pid"]]
    table = pd.DataFrame({
        "case_id": ids,
        "slide_id": "",
        "label": "all",
        "time": df["time"].values,
        "event": df["event"].astype(int).values,
    })
    expression = df[genes].astype(float)
    expression.columns = [g[len("num_"):] for g in genes]
    expression.index = ids
    return table, expression, unit


def write_cohort(out, source, table, expression, unit=None, splits="splits"):
    """Writes OUT/dataset.csv, OUT/expression.csv and OUT/cohort.toml (with a [survival] section
    when `unit` is given, naming the table's time_days or time column); genes with a missing
    value are left out. Returns the expression written."""
    expression = expression.loc[:, expression.notna().all()]
    os.makedirs(out, exist_ok=True)
    table.to_csv(os.path.join(out, "dataset.csv"), index=False)
    expression.index.name = "case_id"
    expression.to_csv(os.path.join(out, "expression.csv"))
    with open(os.path.join(out, "cohort.toml"), "w") as f:
        f.write(cohort_toml(source, table, unit, splits))
    return expression


def cohort_toml(source, table, unit=None, splits="splits"):
    """The cohort file of a folder written by `write_cohort`, its splits in OUT/`splits`."""
    text = (f"# {source}, written by tools/{os.path.basename(sys.argv[0])}\n"
            "[labels]\ncsv = \"dataset.csv\"\n"
            "[expression]\nmatrix = \"expression.csv\"\norientation = \"samples_by_genes\"\n")
    if unit is not None:
        time_column = "time_days" if "time_days" in table else "time"
        text += (f"[survival]\ntime_column = \"{time_column}\"\nevent_column = \"event\"\n"
                 f"unit = \"{unit}\"\n")
    return text + f"[splits]\ndir = \"{splits}\"\n"


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    source, out = sys.argv[1], sys.argv[2]
    if source == "sksurv-breast-cancer":
        table, expression, unit = sksurv_breast_cancer()
    elif source.startswith("survset:") and len(sys.argv) == 4 and sys.argv[3] in ("days", "months", "years"):
        table, expression, unit = survset(source.split(":", 1)[1], sys.argv[3])
    else:
        sys.exit(f"unknown source {source!r}\n{__doc__}")
    expression = write_cohort(out, source, table, expression, unit)
    print(f"{out}: {len(table)} patients, {int(table['event'].sum())} events, "
          f"{expression.shape[1]} genes")


if __name__ == "__main__":
    main()
