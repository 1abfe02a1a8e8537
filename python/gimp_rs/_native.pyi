"""Type stubs of gimp_rs's native module (the docstrings are on the objects themselves)."""

import os
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Sequence, TypedDict, Union

import numpy as np
import numpy.typing as npt

from ._progress import Progress

__version__: str

_Path = Union[str, "os.PathLike[str]"]
_ProgressArg = Union[Callable[[Progress], object], bool, None]
_F32 = npt.NDArray[np.float32]
_I64 = npt.NDArray[np.int64]

class GimpError(Exception): ...

class DataError(GimpError):
    path: str
    location: Optional[str]
    line: Optional[int]
    field: Optional[str]
    kind: str

class CohortError(DataError):
    errors: list[str]
    warnings: list[str]

class ModelError(GimpError): ...
class InternalError(GimpError): ...

class Estimate(TypedDict):
    value: float
    low: float
    high: float

class Report(TypedDict):
    n: int
    accuracy: Estimate
    balanced_accuracy: float
    roc_auc: Optional[Estimate]
    macro_f1: float
    confusion: list[list[int]]

class TrainResult(TypedDict):
    arch: str
    checkpoint: str
    best_epoch: int
    val: Optional[Report]
    test: Optional[Report]
    stages: dict[str, dict[str, Any]]

def read_features(path: _Path) -> tuple[_F32, Optional[_I64]]: ...
def read_expression(
    path: _Path,
    orientation: Literal["auto", "samples_by_genes", "genes_by_samples"] = "auto",
) -> tuple[list[str], list[str], _F32]: ...
def read_gdc_folder(
    dir: _Path, sample_sheet: _Path, star_column: str = "fpkm_unstranded"
) -> tuple[list[str], list[str], _F32, list[str]]: ...
def read_mcat_table(
    path: _Path, types: Sequence[Literal["rnaseq", "cnv", "mut"]] = ["rnaseq"]
) -> tuple[list[str], list[str], _F32]: ...

class Cohort:
    @staticmethod
    def load(path: _Path, deep: bool = False) -> "Cohort": ...
    @property
    def path(self) -> Path: ...
    @property
    def classes(self) -> list[str]: ...
    @property
    def patients(self) -> list[str]: ...
    @property
    def labels(self) -> _I64: ...
    @property
    def slides(self) -> list[list[tuple[str, Optional[Path]]]]: ...
    @property
    def feature_dim(self) -> Optional[int]: ...
    @property
    def n_folds(self) -> int: ...
    @property
    def errors(self) -> list[str]: ...
    @property
    def warnings(self) -> list[str]: ...
    def split(self, fold: int = 0) -> dict[Literal["train", "val", "test"], _I64]: ...
    def bag(self, patient: Union[int, str]) -> tuple[_F32, Optional[_I64]]: ...
    def expression(self) -> Optional[tuple[list[str], _F32]]: ...
    def summary(self) -> dict[str, Any]: ...
    def check(self) -> dict[str, Any]: ...
    def __len__(self) -> int: ...

class Prediction:
    @property
    def probabilities(self) -> _F32: ...
    @property
    def logits(self) -> _F32: ...
    @property
    def predicted(self) -> int: ...
    @property
    def predicted_class(self) -> Optional[str]: ...
    @property
    def attention(self) -> Optional[_F32]: ...
    @property
    def embedding(self) -> _F32: ...
    @property
    def modalities(self) -> list[str]: ...
    @property
    def warning(self) -> Optional[str]: ...
    @property
    def risk(self) -> Optional[float]: ...
    @property
    def survival(self) -> Optional[npt.NDArray[np.float64]]: ...

class Model:
    @staticmethod
    def load(path: _Path) -> "Model": ...
    @staticmethod
    def from_weights(arch: str, path: _Path) -> "Model": ...
    @property
    def arch(self) -> str: ...
    @property
    def input(self) -> Literal["slide", "expression", "multimodal"]: ...
    @property
    def classes(self) -> Optional[list[str]]: ...
    @property
    def genes(self) -> Optional[list[str]]: ...
    @property
    def transform(self) -> Optional[str]: ...
    @property
    def config(self) -> Any: ...
    @property
    def info(self) -> dict[str, str]: ...
    def predict(
        self,
        features: Optional[_F32] = None,
        expression: Optional[_F32] = None,
        genes: Optional[Sequence[str]] = None,
    ) -> Prediction: ...

def synth(
    out: _Path,
    *,
    difficulty: Literal["easy", "paper", "hard"] = "paper",
    size: Literal["demo", "paper"] = "demo",
    seed: int = 0,
    patients: Optional[int] = None,
    patches: Optional[tuple[int, int]] = None,
    dim: Optional[int] = None,
    genes: Optional[int] = None,
    pt: bool = False,
    force: bool = False,
    progress: _ProgressArg = None,
) -> dict[str, Any]: ...
def train(
    cohort: Union[Cohort, _Path],
    out: _Path,
    arch: str = "gimp",
    *,
    preset: Literal["paper", "demo"] = "paper",
    config: Union[_Path, Mapping[str, Any], None] = None,
    seed: Optional[int] = None,
    fold: Optional[int] = None,
    resume: bool = False,
    transform: Optional[Literal["log2p1", "none"]] = None,
    epochs: Optional[int] = None,
    lr: Optional[float] = None,
    weight_decay: Optional[float] = None,
    patience: Optional[int] = None,
    stop_epoch: Optional[int] = None,
    max_patches: Optional[int] = None,
    accumulate: Optional[int] = None,
    progress: _ProgressArg = None,
) -> TrainResult: ...
def evaluate(
    cohort: Union[Cohort, _Path],
    checkpoint: _Path,
    *,
    split: Literal["train", "val", "test"] = "test",
    fold: Optional[int] = None,
    seed: int = 0,
) -> dict[str, Any]: ...
def experiment(
    table: Literal["table1", "table2"],
    cohort: Union[Cohort, _Path],
    out: _Path,
    *,
    folds: int = 1,
    seeds: int = 1,
    rows: Optional[Sequence[str]] = None,
    preset: Literal["paper", "demo"] = "paper",
    recipe: Literal["reference", "paper"] = "reference",
    epochs: Optional[int] = None,
    pretrain_epochs: Optional[int] = None,
    patience: Optional[int] = None,
    stop_epoch: Optional[int] = None,
    transform: Optional[Literal["log2p1", "none"]] = None,
    progress: _ProgressArg = None,
) -> dict[str, Any]: ...
def extract(
    slides: Sequence[_Path],
    patches: _Path,
    weights: _Path,
    out: _Path,
    *,
    encoder: str = "resnet50_trunc",
    batch: int = 32,
    target_patch_size: Optional[int] = None,
    pt: bool = False,
    overwrite: bool = False,
    progress: _ProgressArg = None,
) -> dict[str, Any]: ...
def architectures() -> list[dict[str, str]]: ...
def set_threads(n: int) -> None: ...
def accuracy(labels: npt.ArrayLike, predicted: npt.ArrayLike) -> Estimate: ...
def roc_auc(
    labels: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    *,
    seed: int = 0,
    resamples: int = 1000,
) -> Optional[Estimate]: ...
def report(labels: npt.ArrayLike, probabilities: npt.ArrayLike, *, seed: int = 0) -> Report: ...
def delong(
    positive: npt.ArrayLike, a: npt.ArrayLike, b: npt.ArrayLike
) -> Optional[dict[str, float]]: ...
def _panic_for_tests(message: str) -> None: ...
