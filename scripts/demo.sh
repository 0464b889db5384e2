#!/usr/bin/env bash
# make demo: the bench end to end on a synthetic model.
#   synthesise a Llama-shaped safetensors model (2 GiB unless told otherwise), run
#   `pagewarm bench` with the safetensors loader (cold, warm, prewarm_cold, prewarm_warm,
#   interleaved), write the report to ./out/ and print the headline.
# usage: scripts/demo.sh [MODEL_DIR] [SIZE] [RUNS]     (env: DEMO_OUT, PAGEWARM_SAMPLES)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${DEMO_OUT:-$root/out}"
model="${1:-$out/model}"
size="${2:-2GiB}"
runs="${3:-5}"
bin="$root/.venv/bin"
# The demo keeps its samples beside its report, apart from the user's own store.
export PAGEWARM_SAMPLES="${PAGEWARM_SAMPLES:-$out/samples.jsonl}"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
started=$SECONDS

if [[ ! -f "$model/model.safetensors.index.json" ]]; then
    step "pagewarm synth $model --size $size"
    "$bin/pagewarm" synth "$model" --size "$size" --shards 4
fi
step "pagewarm bench $model --loader safetensors --runs $runs --out $out"
summary="$(mktemp)"
trap 'rm -f "$summary"' EXIT
"$bin/pagewarm" bench "$model" --loader safetensors --runs "$runs" --out "$out" | tee "$summary"

step "result"
echo "report:  $out/storage_load_bench.md"
echo "csv:     $out/storage_load_bench.csv"
echo "plot:    $out/storage_load_bench.png"
echo "samples: $PAGEWARM_SAMPLES"
grep '^median load:' "$summary" || true
echo
# The conclusion the report computed from the numbers.
sed -n '/^\*\*Conclusion\*\*/,/^## /p' "$out/storage_load_bench.md" | grep -E '^ *[0-9]\.' || true
echo "demo took $((SECONDS - started)) s"
