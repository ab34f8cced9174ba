"""Samples/s of one label step on the bundled model: in-process (no Ray), then on a local Ray cluster with
`replicas: 1` and `replicas: 2`, each a whole `datagen run` process (engine starts included) on a fresh store, in
alternating order over the repeats. Prints each side's median wall time and samples/s and the ratios against the
in-process run measured in the same run.

Runs inside `unshare --net --pid --fork --mount-proc` (as tests/test_ray.py does), so the cluster listens on loopback
only and ends with the benchmark. On 2 CPUs expect little gain from a second replica: both engines share the same
two cores, and each gets one.

Run: .venv/bin/python tests/bench/replicas.py [--rows 160] [--tokens 64] [--repeats 2]   (run it alone on the machine)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPEC = """\
name: {name}
teachers:
  small:
    backend: vllm
    model: bundled:smollm2-135m-instruct
    replicas: {replicas}
    sampling: {{temperature: 0, max_tokens: {tokens}}}
    engine: {{enforce_eager: true, max_model_len: 1024, kv_cache_gb: 1}}
sources:
  problems: {{path: problems.jsonl}}
steps:
  - {{name: solve, strategy: label, teacher: small, input: problems, prompt: "{{{{ question }}}}", output: solution}}
"""


def inside(args) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench_replicas_"))
    lines = (ROOT / "specs/data/gsm8k_train_500.jsonl").read_text().splitlines()[: args.rows]
    (folder / "problems.jsonl").write_text("\n".join(lines) + "\n")
    subprocess.run(["ray", "start", "--head", "--num-cpus", "2", "--disable-usage-stats", "--include-dashboard=false"],
                   check=True, capture_output=True)
    sides = {"in-process": (1, False), "ray, 1 replica": (1, True), "ray, 2 replicas": (2, True)}
    seconds: dict[str, list[float]] = {s: [] for s in sides}
    for repeat in range(args.repeats):
        order = list(sides) if repeat % 2 == 0 else list(reversed(sides))
        for side in order:
            replicas, ray = sides[side]
            name = f"r{repeat}_{replicas}_{int(ray)}"
            spec = folder / f"{name}.yaml"
            spec.write_text(SPEC.format(name=name, replicas=replicas, tokens=args.tokens))
            cmd = [sys.executable, "-m", "datagen.cli", "run", "-q", str(spec)] + (["--ray", "auto"] if ray else [])
            start = time.monotonic()
            subprocess.run(cmd, check=True, capture_output=True)
            seconds[side].append(time.monotonic() - start)
    base = statistics.median(seconds["in-process"])
    report = {}
    for side, times in seconds.items():
        wall = statistics.median(times)
        report[side] = {"seconds": round(wall, 1), "samples_per_s": round(args.rows / wall, 2),
                        "ratio_vs_in_process": round(base / wall, 2)}
    print(json.dumps(report), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--inside", action="store_true")
    args = parser.parse_args()
    if args.inside:
        return inside(args)
    script = (f"ip link set lo up && PATH={Path(sys.executable).parent}:$PATH {sys.executable} {__file__} --inside "
              f"--rows {args.rows} --tokens {args.tokens} --repeats {args.repeats}")
    out = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "bash", "-c", script],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if out.returncode:
        raise SystemExit(out.stdout[-3000:] + out.stderr[-3000:])
    report = json.loads(out.stdout.strip().splitlines()[-1])
    for side, r in report.items():
        print(f"{side:18} {r['seconds']:7.1f} s  {r['samples_per_s']:6.2f} samples/s  "
              f"ratio vs in-process {r['ratio_vs_in_process']:.2f}")


if __name__ == "__main__":
    main()
