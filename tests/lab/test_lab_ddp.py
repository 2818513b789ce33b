"""Two gloo processes under torchrun train like one process on the same global batch (same loss curve)."""

import json
import os
import subprocess
import sys

import pytest
import torch

ARGS = ["--task", "reverse_string", "--encoding", "rope", "--seed", "3", "--steps", "8", "--batch-size", "8",
        "--log-every", "1", "--dim", "16", "--n-layers", "1", "--n-heads", "2", "--train-max-length", "6",
        "--eval-lengths", "6", "--eval-batches", "1", "--eval-batch-size", "8", "--threads", "1"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_gloo_processes_follow_the_single_process_loss_curve(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, ddp = tmp_path / "single.json", tmp_path / "ddp.json"
    subprocess.run([sys.executable, "-m", "posenc.lab.train", *ARGS, "--out", str(single)], env=env, check=True,
                   timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "posenc.lab.train", *ARGS, "--out", str(ddp)], env=env, check=True, timeout=300)
    one, two = json.loads(single.read_text()), json.loads(ddp.read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert [s for s, _ in two["loss_curve"]] == list(range(1, 9))
    torch.testing.assert_close(torch.tensor(two["loss_curve"]), torch.tensor(one["loss_curve"]), rtol=1e-4,
                               atol=1e-5)
    assert one["run_id"] == two["run_id"]
