"""The default progress display of gimp_rs's long calls: one line per stage and epoch on
``sys.stderr``, rewritten in place (``\\r``), which terminals and Jupyter notebooks both show."""

from __future__ import annotations

import sys
import time
from typing import IO, Optional, TypedDict


class Progress(TypedDict):
    """One progress report of a long call."""

    #: "genes", "pretrain", "finetune" (GiMP's stages; "pretrain" is also the image-omic
    #: adaptations' self-supervised stage), "train" (a compared system),
    #: "extract" or "synth".
    stage: str
    #: 0-based epoch and the stage's epochs (None outside training).
    epoch: Optional[int]
    epochs: Optional[int]
    #: Units done in this epoch (patients or batches; patches for "extract", slides for
    #: "synth") and units in all.
    step: int
    steps: int
    #: The last unit's training loss (None outside training).
    loss: Optional[float]


class TextProgress:
    """Writes a report at most every ``interval`` seconds, plus the last one of each line.

    A long call (``train``, ``experiment``, ``extract``, ``synth``) creates one when its
    ``progress`` argument is ``None`` or ``True``; pass ``progress=False`` for silence or any
    callable that takes a :class:`Progress` dict for your own display (e.g. a tqdm bar).
    """

    def __init__(self, stream: Optional[IO[str]] = None, interval: float = 0.1) -> None:
        self.stream = stream
        self.interval = interval
        self._line: Optional[tuple[str, Optional[int]]] = None
        self._last = 0.0
        self._open = False

    def __call__(self, p: Progress) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        line = (p["stage"], p["epoch"])
        now = time.monotonic()
        new_line = line != self._line
        last_step = p["step"] >= p["steps"]
        if not (new_line or last_step or now - self._last >= self.interval):
            return
        if new_line and self._open:
            stream.write("\n")
        self._line, self._last, self._open = line, now, True
        width = 30
        done = int(width * p["step"] / p["steps"]) if p["steps"] else width
        bar = "=" * done + " " * (width - done)
        text = p["stage"]
        if p["epoch"] is not None:
            text += f" epoch {p['epoch'] + 1}/{p['epochs']}"
        text += f" [{bar}] {p['step']}/{p['steps']}"
        if p["loss"] is not None:
            text += f" loss {p['loss']:.4f}"
        stream.write("\r" + text)
        stream.flush()

    def close(self) -> None:
        """Ends the current line (called when the long call returns)."""
        if self._open:
            stream = self.stream if self.stream is not None else sys.stderr
            stream.write("\n")
            stream.flush()
        self._line, self._open = None, False
