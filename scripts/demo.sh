#!/usr/bin/env bash
# make demo: the core at work on a synthetic model (synth, evict, status, prewarm, status).
set -euo pipefail
model="${1:?model directory}"
size="${2:-2GiB}"
bin="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [[ ! -f "$model/model.safetensors.index.json" ]]; then
    step "pagewarm synth $model --size $size"
    "$bin/pagewarm" synth "$model" --size "$size" --shards 4
fi
step "pagewarm evict $model"
"$bin/pagewarm" evict "$model"
step "pagewarm status $model   (cold)"
"$bin/pagewarm" status "$model"
step "pagewarm prewarm $model"
"$bin/pagewarm" prewarm "$model"
step "pagewarm status $model   (warm)"
"$bin/pagewarm" status "$model"
