"""jaxkl on 8 devices: GSPMD sharding, vocabulary-parallel KL, sharded MC.

The checks live in ``tests/_sharding_checks.py`` and run in child processes
with 8 virtual CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count
=8``), so this process keeps its single device; each child runs one group of
checks (compiling is the cost: few processes, many checks each) and reports
one JSON line. The groups run concurrently. Every check compares with the
one-device result on the same numbers, values and gradients, to float32
rounding; see the checks module for what each one asserts.
"""

import json
import os
import pathlib
import subprocess
import sys

import _sharding_checks as checks  # only reads the check names: no devices
import jax
import pytest

SCRIPT = pathlib.Path(__file__).with_name("_sharding_checks.py")
FLAG = f"--xla_force_host_platform_device_count={checks.DEVICES}"
CHECKS = [(group, name) for group, make in checks.GROUPS.items() for name in make()]
PARENT_XLA_FLAGS = os.environ.get("XLA_FLAGS")
PARENT_DEVICES = jax.device_count()


@pytest.fixture(scope="module")
def reports():
  """{group: (results or None, exit status, stderr)}, children in parallel."""
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {FLAG}".strip(),
  )
  children = {
    group: subprocess.Popen(
      [sys.executable, str(SCRIPT), group],
      env=env,
      text=True,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
    )
    for group in checks.GROUPS
  }
  out = {}
  for group, child in children.items():
    try:
      stdout, stderr = child.communicate(timeout=900)
    except subprocess.TimeoutExpired:
      child.kill()
      stdout, stderr = child.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    results = json.loads(lines[-1]) if lines else None
    out[group] = (results, child.returncode, stderr)
  return out


@pytest.mark.parametrize("group,name", CHECKS, ids=[n for _, n in CHECKS])
def test_on_eight_devices(reports, group, name):
  results, _, stderr = reports[group]
  assert results is not None, f"the {group!r} child crashed:\n{stderr[-4000:]}"
  assert name in results, f"{name!r} not run; child stderr:\n{stderr[-2000:]}"
  failures = results[name]
  assert not failures, "\n".join(failures)


def test_children_report_every_check_and_exit_status(reports):
  for group, (results, status, stderr) in reports.items():
    assert results is not None, stderr[-4000:]
    assert sorted(results) == sorted(checks.GROUPS[group]())
    assert status == (1 if any(results.values()) else 0), (group, status)


def test_this_process_keeps_its_devices(reports):
  """The 8 devices stay in the children: this process' setup is untouched."""
  del reports
  assert os.environ.get("XLA_FLAGS") == PARENT_XLA_FLAGS
  assert jax.device_count() == PARENT_DEVICES
