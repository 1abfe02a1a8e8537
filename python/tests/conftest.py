"""Shared fixtures: a small synthetic cohort and a GiMP model trained on it for a few epochs,
made once per test session (about ten seconds on two cores)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import gimp_rs

REPO = Path(__file__).resolve().parents[2]

# A GiMP run file small enough for the test cohort (16-d features, 200 genes), as the CLI's
# tests use.
TINY_GIMP = {
    "preset": "demo",
    "model": {"dim": 16, "heads": 2, "landmarks": 8, "fragment": 10, "groups": 4},
    "genes": {"epochs": 2},
    "pretrain": {"epochs": 1, "window": 32, "batch": 4},
    "finetune": {"epochs": 2},
}


def gimp_rs_binary() -> Path:
    """The `gimp-rs` binary cargo built (GIMP_RS_BIN, else the release build of the target
    folder): the tests compare the package with it."""
    candidates = []
    if os.environ.get("GIMP_RS_BIN"):
        candidates.append(Path(os.environ["GIMP_RS_BIN"]))
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    candidates.append(target / "release" / "gimp-rs")
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        "no gimp-rs binary: run `cargo build --release --bin gimp-rs` or set GIMP_RS_BIN "
        f"(looked at {', '.join(map(str, candidates))})"
    )


@pytest.fixture(scope="session")
def cohort_toml(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    r = gimp_rs.synth(
        out, seed=4, patients=30, patches=(20, 80), dim=16, genes=200, force=True, progress=False
    )
    return Path(r["cohort"])


@pytest.fixture()
def cohort_copy(cohort_toml, tmp_path) -> Path:
    """A private copy of the cohort folder a test may break."""
    dst = tmp_path / "cohort"
    shutil.copytree(cohort_toml.parent, dst, ignore=shutil.ignore_patterns(".gimp-cache"))
    return dst / "cohort.toml"


@pytest.fixture(scope="session")
def gimp_checkpoint(cohort_toml, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gimp-run")
    r = gimp_rs.train(cohort_toml, out, "gimp", config=TINY_GIMP, progress=False)
    return Path(r["checkpoint"])
