"""Build the real-data panel of docs/REAL_DATA.md: eighteen real expression cohorts as gimp-rs
cohort folders, from the repository's ALL data and from packages installed from PyPI
(`pip install scikit-survival survset` and `pip install --no-deps ISLP`, whose data files alone
are read; bench/real_panel.sh installs them into a venv).

    python3 tools/build_real_panel.py OUT_DIR

writes OUT_DIR/NAME/{dataset.csv, expression.csv, cohort.toml} for every cohort of PANEL (the
format of tools/export_survival_cohort.py, which this reuses: a gene-only cohort, values on a log
scale as the source gives them, so gimp-rs reads them with --transform none) and
OUT_DIR/panel.json, the list the benchmark reads: name, task, role (tuning or held-out, fixed in
docs/REAL_DATA.md "How defaults are chosen" before any tuning), source, licence, patients, genes
and events.

Nothing is downloaded: every data set ships inside an installed package (or the repository).
"""
import json
import os
import sys

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_survival_cohort import sksurv_breast_cancer, survset_frame, write_cohort  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SURVSET = "SurvSet 0.2.11 (PyPI), GPL-3.0"


def all_bcrabl():
    """ALL (Chiaretti 2004), BCR/ABL vs NEG: data/all-leukemia of the repository."""
    d = os.path.join(REPO, "data", "all-leukemia")
    labels = pd.read_csv(os.path.join(d, "labels.csv"), dtype=str)
    labels = labels[labels["mol.biol"].isin(["BCR/ABL", "NEG"])]
    expression = pd.read_csv(os.path.join(d, "expression.csv.gz"), dtype={"sample": str})
    expression = expression.set_index("sample").astype(float)
    expression = expression.loc[labels["sample"]]
    table = pd.DataFrame({"case_id": labels["sample"].values, "slide_id": "",
                          "label": labels["mol.biol"].values})
    return table, expression


def survset_classes(name, factor, classes, keep=None):
    """A SurvSet expression set as a classification cohort: the label is `classes[value]` of
    the factor column (patients with another value are left out); `keep` filters rows first."""
    df, genes = survset_frame(name)
    if keep is not None:
        df = df[keep(df)]
    df = df[df[factor].astype(str).isin(classes)]
    ids = [f"{name}-{p}" for p in df["pid"]]
    table = pd.DataFrame({"case_id": ids, "slide_id": "",
                          "label": [classes[str(v)] for v in df[factor]]})
    expression = df[genes].astype(float)
    expression.columns = [g[len("num_"):] for g in genes]
    expression.index = ids
    return table, expression


def survset_survival(name):
    """A SurvSet expression set as a survival cohort (no class label: every patient is "all")."""
    df, genes = survset_frame(name)
    ids = [f"{name}-{p}" for p in df["pid"]]
    table = pd.DataFrame({"case_id": ids, "slide_id": "", "label": "all",
                          "time": df["time"].values, "event": df["event"].astype(int).values})
    expression = df[genes].astype(float)
    expression.columns = [g[len("num_"):] for g in genes]
    expression.index = ids
    return table, expression


def islp_khan():
    """Khan et al. 2001's small round blue cell tumours as ISLP ships them (training and test
    sets joined; the classes coded 1-4 in alphabetical order of the tumour types)."""
    from importlib.resources import files

    data = files("ISLP").joinpath("data")
    x = pd.concat([pd.read_csv(data / f"Khan_x{p}.csv") for p in ("train", "test")])
    y = pd.concat([pd.read_csv(data / f"Khan_y{p}.csv") for p in ("train", "test")])["x"]
    ids = [f"khan-{i + 1}" for i in range(len(x))]
    names = {1: "BL", 2: "EWS", 3: "NB", 4: "RMS"}
    table = pd.DataFrame({"case_id": ids, "slide_id": "",
                          "label": [names[int(v)] for v in y]})
    expression = x.astype(float)
    expression.index = ids
    return table, expression


def sksurv_breast_er():
    table, expression, _ = sksurv_breast_cancer()
    table = table.assign(label=table["label"].map({"positive": "ER+", "negative": "ER-"}))
    return table[["case_id", "slide_id", "label"]], expression


GRADE = {"1": "grade 1-2", "2": "grade 1-2", "3": "grade 3"}

# name, task, role, builder, time unit (survival), what it is, source and licence. The roles are
# fixed before any tuning (docs/REAL_DATA.md, "How defaults are chosen"): the defaults may be
# chosen on the tuning cohorts only, and are judged on the held-out ones.
PANEL = [
    ("all-bcrabl", "classification", "tuning", all_bcrabl, None,
     "acute lymphoblastic leukaemia, BCR/ABL vs NEG; Affymetrix HG-U95Av2, RMA",
     "Chiaretti et al. 2004; repository data/all-leukemia (Bioconductor ALL 1.40.0), Artistic-2.0"),
    ("gse1992-grade", "classification", "tuning",
     lambda: survset_classes("gse1992", "fac_grade", GRADE), None,
     "breast cancer, histological grade 3 vs 1-2; Agilent two-colour arrays, log ratios",
     f"Hu et al. 2006 (GEO GSE1992, via survJamda.data); {SURVSET}"),
    ("dlbcl", "survival", "tuning", lambda: survset_survival("DLBCL"), "years",
     "diffuse large B-cell lymphoma, overall survival; Lymphochip cDNA arrays, log ratios",
     f"Rosenwald et al. 2002; {SURVSET}"),
    ("aml-bull", "survival", "tuning", lambda: survset_survival("AML_Bull"), "days",
     "acute myeloid leukaemia, overall survival; cDNA arrays, log ratios",
     f"Bullinger et al. 2004; {SURVSET}"),
    ("gse4335-er", "classification", "held-out",
     lambda: survset_classes("gse4335", "fac_er_status", {"1": "ER+", "0": "ER-"}), None,
     "breast cancer, ER status; Stanford cDNA arrays, log ratios",
     f"Sørlie et al. 2003 (GEO GSE4335, via survJamda.data); {SURVSET}"),
    ("nki70-er", "classification", "held-out",
     lambda: survset_classes("nki70", "fac_ER", {"Positive": "ER+", "Negative": "ER-"}), None,
     "breast cancer, ER status; the 70 genes of the MammaPrint panel (Agilent), log ratios",
     f"van 't Veer 2002 / van de Vijver 2002 (R package penalized, nki70); {SURVSET}"),
    ("sksurv-breast-er", "classification", "held-out", sksurv_breast_er, None,
     "breast cancer, ER status; 76 Affymetrix HG-U133A probes (the GENE76 signature), log2",
     "Desmedt et al. 2007, TRANSBIG (GEO GSE7390); scikit-survival 0.28 (PyPI) "
     "load_breast_cancer, GPL-3.0"),
    ("ovarian-debulk", "classification", "held-out",
     lambda: survset_classes("dataOvarian1", "fac_debulk", {"1": "debulk 1", "0": "debulk 0"},
                             keep=lambda df: df["fac_group"] == 13), None,
     "ovarian cancer, debulking status (the data set's 0/1), one study (group 13); 158 genes, "
     "standardised microarray values",
     f"curatedOvarianData meta-analysis (R package joint.Cox, dataOvarian1); {SURVSET}"),
    ("chop", "survival", "held-out", lambda: survset_survival("chop"), "years",
     "diffuse large B-cell lymphoma treated with R-CHOP, overall survival; Affymetrix "
     "HG-U133 Plus 2.0 probes, log2",
     f"Lenz et al. 2008 (GEO GSE10846, via R package bujar); {SURVSET}"),
    ("dbcd", "survival", "held-out", lambda: survset_survival("DBCD"), "years",
     "breast cancer, distant metastasis-free survival; Agilent arrays, log ratios",
     f"van de Vijver et al. 2002 (Dutch breast cancer data); {SURVSET}"),
    ("nki70-survival", "survival", "held-out", lambda: survset_survival("nki70"), "years",
     "breast cancer, metastasis-free survival; the 70 genes of the MammaPrint panel",
     f"van 't Veer 2002 / van de Vijver 2002 (R package penalized, nki70); {SURVSET}"),
    # Added on 5 December 2026 as the third run's held-out cohorts, before anything was run on
    # them; the seven above were looked at in the second run and are tuning cohorts since
    # (docs/REAL_DATA.md, "How defaults are chosen", rule 3; `ROLE_SINCE_THIRD_RUN`).
    ("gse3143-er", "classification", "held-out",
     lambda: survset_classes("gse3143", "fac_erlev", {"0": "ER level 0", "1": "ER level 1-3",
                                                      "2": "ER level 1-3", "3": "ER level 1-3"}),
     None, "breast cancer, ER expression level 0 vs 1-3; Affymetrix HG-U95Av2, log2",
     f"Bild et al. 2006 (GEO GSE3143, via survJamda.data); {SURVSET}"),
    ("gse3143-survival", "survival", "held-out", lambda: survset_survival("gse3143"), "months",
     "breast cancer, overall survival; Affymetrix HG-U95Av2, log2",
     f"Bild et al. 2006 (GEO GSE3143, via survJamda.data); {SURVSET}"),
    ("mcl", "survival", "held-out", lambda: survset_survival("MCLcleaned"), "years",
     "mantle cell lymphoma, overall survival; Lymphochip cDNA arrays, log ratios",
     f"Rosenwald et al. 2003 (R package AdapEnetClass, MCLcleaned); {SURVSET}"),
    ("nsbcd", "survival", "held-out", lambda: survset_survival("NSBCD"), "months",
     "breast cancer, overall survival (Norway/Stanford); cDNA arrays, log ratios",
     f"Sørlie et al. 2003 (Norway/Stanford breast cancer data, dmkd.cs.vt.edu survival data sets); {SURVSET}"),
    ("vdv", "survival", "held-out", lambda: survset_survival("vdv"), "years",
     "breast cancer, time to distant metastasis (lymph-node-negative, under 55); Agilent "
     "arrays, log ratios (many of these patients are also in dbcd)",
     f"van 't Veer et al. 2002 (R package randomForestSRC, vdv); {SURVSET}"),
    # Added on 5 December 2026 as the fourth run's held-out cohorts, before anything was run on
    # them; the five above were looked at in the third run and are tuning cohorts since.
    # gse4335-survival's expression matrix is gse4335-er's (a tuning cohort): the task is new,
    # the patients and genes are not.
    ("khan-srbct", "classification", "held-out", islp_khan, None,
     "small round blue cell tumours of childhood, four classes (Burkitt lymphoma, Ewing's "
     "sarcoma, neuroblastoma, rhabdomyosarcoma); cDNA arrays, 2,308 genes, log ratios",
     "Khan et al. 2001; ISLP 0.6.0 (PyPI) Khan data, BSD-2-Clause"),
    ("gse4335-survival", "survival", "held-out", lambda: survset_survival("gse4335"), "months",
     "breast cancer, overall survival; Stanford cDNA arrays, log ratios",
     f"Sørlie et al. 2003 (GEO GSE4335, via survJamda.data); {SURVSET}"),
]

# Rule 3 of docs/REAL_DATA.md: cohorts whose held-out figures were looked at before a default
# was chosen are tuning cohorts from then on (the second run's seven since the third run, the
# third run's five since the fourth).
TUNING_SINCE = {"gse4335-er", "nki70-er", "sksurv-breast-er", "ovarian-debulk", "chop", "dbcd",
                "nki70-survival", "gse3143-er", "gse3143-survival", "mcl", "nsbcd", "vdv"}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    manifest = []
    for name, task, role, build, unit, what, source in PANEL:
        role = "tuning" if name in TUNING_SINCE else role
        table, expression = build()
        folder = os.path.join(out, name)
        written = write_cohort(folder, f"real panel: {name}", table, expression, unit)
        entry = {"name": name, "task": task, "role": role, "what": what, "source": source,
                 "patients": len(table), "genes": int(written.shape[1]),
                 "cohort": os.path.join(folder, "cohort.toml"), "unit": unit}
        if task == "survival":
            entry["events"] = int(table["event"].sum())
        else:
            entry["classes"] = {k: int(v) for k, v in table["label"].value_counts().items()}
        manifest.append(entry)
        detail = entry.get("classes", f"{entry.get('events')} events")
        print(f"{name:18} {role:9} {task:15} {entry['patients']:4} patients x "
              f"{entry['genes']:6} genes  {detail}")
    with open(os.path.join(out, "panel.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
