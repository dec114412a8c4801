"""Helpers shared by the benchmark scripts: environment record and timing.

The scripts run as ``python benchmarks/bench_<name>.py``, so this directory is
on ``sys.path`` and they import this module as ``_common``.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from collections.abc import Sequence

import jax
import jaxlib
import numpy as np

import jaxkl


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo (or ``platform.processor()``)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def environment(versions: dict | None = None, extra: dict | None = None) -> dict:
  """Date, platform, library versions and machine facts for a result file.

  Args:
    versions: ``{name: version}`` of the script's peers (torch, optax, ...),
      listed after jaxkl's.
    extra: further entries, listed last (e.g. torch's thread count).
  """
  return {
    "date": datetime.datetime.now().isoformat(timespec="seconds"),
    "python": platform.python_version(),
    "platform": platform.platform(),
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "jaxkl": jaxkl.__version__,
    **(versions or {}),
    "numpy": np.__version__,
    "jax.devices()": str(jax.devices()),
    "jax.default_backend()": jax.default_backend(),
    "cpu_count": os.cpu_count(),
    "cpu_model": cpu_model(),
    "memory_gib": round(
      os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
    ),
    "load_average_at_start": load_average(),
    **(extra or {}),
  }


def load_average() -> str:
  """The 1-, 5- and 15-minute load averages, as ``"1.23 0.98 0.75"``: the
  other tenants' share of the CPUs ("n/a" where the platform has none)."""
  try:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
  except OSError:
    return "n/a"


def summarize(
  times: dict, implementations: Sequence[str], modes: Sequence[str]
) -> dict:
  """``{impl: {mode: {"median", "min", "times_ms"}}}`` from ``time_blocks``."""
  return {
    impl: {
      mode: {
        "median": statistics.median(times[(impl, mode)]),
        "min": min(times[(impl, mode)]),
        "times_ms": times[(impl, mode)],
      }
      for mode in modes
    }
    for impl in implementations
  }


def time_blocks(
  runners: dict[str, dict[str, Callable[[], object]]],
  implementations: Sequence[str],
  modes: Sequence[str],
  repeats: int,
  rounds: int = 3,
) -> dict:
  """Times (ms) per (implementation, mode), in contiguous blocks.

  Each (implementation, mode) runs one untimed call, then ``repeats //
  rounds`` timed calls back to back, like ``timeit``; the set of blocks is
  repeated ``rounds`` times, reversing the order every other round, so slow
  drift of the machine affects every candidate alike. Single calls are not
  interleaved: on a 2-core machine, alternating a memory-bound kernel with
  another (and PyTorch's OpenMP threads, which keep spinning after each call)
  slowed the memory-bound candidates by 1.3-2x and made ratios depend on the
  order. PyTorch's blocks ("torch") are surrounded by short sleeps so that
  XLA's pool and OpenMP's spinning threads do not overlap the next block.
  """
  keys = [(impl, mode) for mode in modes for impl in implementations]
  times = {k: [] for k in keys}
  per_round = max(1, repeats // rounds)
  for r in range(rounds):
    for impl, mode in keys if r % 2 == 0 else keys[::-1]:
      fn = runners[impl][mode]
      if impl == "torch":
        time.sleep(0.5)  # after JAX: let XLA's pool go idle
      fn()
      for _ in range(per_round):
        start = time.perf_counter()
        fn()
        times[(impl, mode)].append((time.perf_counter() - start) * 1e3)
      if impl == "torch":
        time.sleep(0.5)  # let OpenMP's spinning threads go to sleep
  return times
