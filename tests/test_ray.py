"""`datagen run --ray` on a real local Ray cluster (2 CPUs, loopback only): engine replicas share the work, a killed
replica's requests are handed out again and every sample is stored exactly once, a killed driver's replicas end,
and re-runs send nothing twice. The scenarios run in tests/ray_cluster.py inside a private network and PID namespace:
Ray never uses loopback as its node address while the machine has another interface, and every process of the
cluster ends with the namespace (no `ray stop`, which kills Ray processes machine-wide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(1500)
def test_replicas_faults_and_resume_on_a_local_cluster(tmp_path):
    script = (f"ip link set lo up && PATH={Path(sys.executable).parent}:$PATH "
              f"{sys.executable} {ROOT / 'tests' / 'ray_cluster.py'} {tmp_path} {ROOT / 'specs/data/gsm8k_train_500.jsonl'}")
    out = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "bash", "-c", script],
                         capture_output=True, text=True, timeout=1500, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(r))  # the figures, for `pytest -s`

    assert r["a_exit"] == 0
    assert r["a"]["rows"] == r["a"]["ids"] == r["a"]["inputs"] == r["a"]["outputs"] == 40
    assert set(r["a"]["workers"]) == {"replica-0", "replica-1"}, r["a"]["workers"]  # both replicas did work
    assert r["a_embedded_on_ray"]  # semantic dedup's vectors came from Ray Data actors, and were stored
    assert 0 < r["a_embeddings"] <= r["a_distinct_solutions"] and r["a_rerun_embeddings"] == r["a_embeddings"]
    assert r["a_rerun_exit"] == 0 and r["a_rerun"] == r["a"]  # the re-run sent nothing

    assert r["b_exit"] == 0  # a replica killed mid-run: restarted, its requests handed out again
    assert r["b"]["rows"] == r["b"]["ids"] == r["b"]["inputs"] == r["b"]["outputs"] == 160
    assert r["b_done_at_kill"] < 160  # the replica died with work in hand
    assert r["b"]["attempts_over_1"] == 0

    assert r["c_replicas_left"] == []  # the driver killed -9: Ray ended its replicas
    assert 0 < r["c_done_before"] < 80 and r["c_rerun_exit"] == 0
    assert r["c"]["rows"] == r["c"]["ids"] == 80 and r["c"]["attempts_over_1"] == 0
