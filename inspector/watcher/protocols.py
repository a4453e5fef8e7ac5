"""What the watch loop needs of a scorer and of a frame source, as Protocols.

They live here, with their one consumer, rather than in `runtime` or `io`: the loop states the interface it
relies on, and the implementations (the ONNX `inspector.runtime.Scorer`, the tests' scorer double, the hot
folder and the camera adapters in `watcher.sources`) satisfy it structurally without importing it. Putting
`FrameSource` lower would drag the loop's notion of an input (ledger key, replayable or not) into `io`, and
`runtime` must not know about watchers at all.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from inspector.types import FrameResult


class Scorer(Protocol):
    """Scores BGR frames with one model version at a time; `inspector.runtime.Scorer` is the real one."""

    @property
    def version(self) -> str: ...

    @property
    def threshold(self) -> float:
        """The calibrated threshold in raw model units."""

    @property
    def latent(self) -> dict | None:
        """The version's latent map from its manifest (projection, good cloud); None when it has none."""

    def score(self, frame: np.ndarray, overlay: bool = False, threshold: float | None = None) -> FrameResult: ...

    def score_batch(
        self, frames: Sequence[np.ndarray], overlay: bool = False, threshold: float | None = None
    ) -> list[FrameResult]: ...

    def reload_if_changed(self) -> bool:
        """Swap to a newer version when the model folder's `current` moved; True when it did."""


@dataclass
class Input:
    """One thing to score, whatever its source: what the loop decides on and the writer records."""

    key: str  # idempotency key (the store's ledger for replayable inputs)
    origin: str  # what a person knows it by: the file's relative path, the camera's URI
    ext: str  # how a flagged one's original is saved (".png", ".jpg")
    path: str | None  # the input file, recorded in the ledger; None for a frame that exists only in memory
    maybe_done: bool  # found by a scan (a backlog after a crash): the ledger may know it already
    handle: Any  # the io layer's item (FileItem, FrameItem), for the source's own use


class FrameSource(Protocol):
    """A source of inputs: a hot folder, a camera. `poll()` never blocks; `wake` is set when one may be ready."""

    name: str
    kind: str  # "folder", "camera": for logs and /health
    # True: an input that is not recorded stays where it was and is offered again (a file in its folder), so it
    # waits while the store is down; False: it exists only in memory (a camera frame) and is held by the writer.
    replayable: bool

    def start(self, wake: threading.Event) -> None: ...

    def stop(self) -> None: ...

    def poll(self) -> Input | None: ...

    def read(self, inp: Input) -> tuple[np.ndarray, bytes | np.ndarray]:
        """(BGR image, original as received); raises ImageError for an input that cannot be scored."""

    def recorded(self, inp: Input, status: str, reason: str | None) -> Input | None:
        """The ledger already holds this input (found again after a crash): finish it and return None, or return
        the input to be read again (a file back from quarantine)."""

    def defer(self, inp: Input, error: Exception) -> bool:
        """An input that could not be read: True when it is put back to wait (a file maybe still being written),
        False when it is to be quarantined."""

    def depth(self) -> int:
        """Inputs waiting (a gauge)."""

    def take_dropped(self) -> int:
        """Inputs skipped since the last call because scoring was busy (cameras)."""

    def health(self) -> dict:
        """This source's entry in /health."""

    def finish(self, inp: Input) -> None:
        """After its result is committed (a file moves to processed/)."""

    def release(self, inp: Input) -> None:
        """Not recorded (the store was down): offered again later."""

    def quarantine(self, inp: Input, reason: str) -> None:
        """Set aside an input that cannot be scored, and say so in the log."""
