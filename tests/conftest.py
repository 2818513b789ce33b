import os

import pytest
import torch

# Two cores in CI: keep torch from oversubscribing them, and make runs reproducible.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


try:  # property-based fuzzing: a fast profile in `make test`, a long one in `make test-slow`
    from hypothesis import HealthCheck, settings

    settings.register_profile("fast", max_examples=25, deadline=None, derandomize=True,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("long", max_examples=6000, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))
except ImportError:  # hypothesis comes with the dev extra; the fuzz tests importorskip it
    pass
