import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Two cores in CI: keep torch from oversubscribing them, and make runs reproducible. POSENC_TEST_THREADS overrides it
# (scripts/mutate.py: one thread per mutmut worker, as OpenMP's pool does not survive the fork of a worker).
torch.set_num_threads(int(os.environ.get("POSENC_TEST_THREADS") or min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def fresh_python():
    """``run(code) -> stdout``: Python source in a fresh interpreter with this checkout's ``src`` first on the path
    (to see what a module imports on its own: nothing is loaded there yet). Fails the test on a non-zero exit."""
    def run(code: str) -> str:
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    return run


try:  # property-based fuzzing: a fast profile in `make test`, a long one in `make test-slow`
    from hypothesis import HealthCheck, settings

    settings.register_profile("fast", max_examples=25, deadline=None, derandomize=True,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("long", max_examples=6000, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))
except ImportError:  # hypothesis comes with the dev extra; the fuzz tests importorskip it
    pass
