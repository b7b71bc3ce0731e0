"""Seconds and peak memory of one phase (training, unlearning, ...), for report.json.

On CUDA the peak is ``torch.cuda.max_memory_allocated`` over the phase. On CPU it is the process's peak
resident set size during the phase, sampled by a background thread (``psutil``); ``peak_memory_delta_mib``
is that peak minus the resident size when the phase began, i.e. what the phase itself added.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import TracebackType

import psutil
import torch

MIB = 1024.0 * 1024.0


@dataclass
class PhaseCost:
    seconds: float = 0.0
    peak_memory_mib: float = 0.0
    peak_memory_delta_mib: float = 0.0
    device: str = "cpu"

    def plus(self, other: PhaseCost) -> PhaseCost:
        """Two phases run one after the other: seconds add, peaks are the larger one."""
        return PhaseCost(
            seconds=self.seconds + other.seconds,
            peak_memory_mib=max(self.peak_memory_mib, other.peak_memory_mib),
            peak_memory_delta_mib=max(self.peak_memory_delta_mib, other.peak_memory_delta_mib),
            device=other.device,
        )

    def as_dict(self) -> dict[str, float | str]:
        return {
            "seconds": self.seconds,
            "peak_memory_mib": self.peak_memory_mib,
            "peak_memory_delta_mib": self.peak_memory_delta_mib,
            "memory_device": self.device,
        }


class PhaseMeter:
    """``with PhaseMeter() as meter: ...`` then ``meter.cost``. Sampling every ``interval`` seconds on CPU."""

    def __init__(self, interval: float = 0.005, cuda: bool | None = None) -> None:
        self.interval = interval
        self.cuda = torch.cuda.is_available() if cuda is None else cuda
        self.cost = PhaseCost(device="cuda" if self.cuda else "cpu")
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak = 0
        self._start_rss = 0
        self._start_cuda = 0

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def __enter__(self) -> PhaseMeter:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start_cuda = torch.cuda.memory_allocated()
        self._start_rss = self._peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._started = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.cost.seconds = time.perf_counter() - self._started
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self._peak = max(self._peak, self._process.memory_info().rss)
        if self.cuda:
            peak = torch.cuda.max_memory_allocated()
            self.cost.peak_memory_mib = peak / MIB
            self.cost.peak_memory_delta_mib = (peak - self._start_cuda) / MIB
        else:
            self.cost.peak_memory_mib = self._peak / MIB
            self.cost.peak_memory_delta_mib = (self._peak - self._start_rss) / MIB
