#!/usr/bin/env bash
# The GPU cold-start benchmark (issue 8), as run on the lent H200 machine. Reproducible on any
# Linux GPU box with PyTorch + safetensors: see docs/benchmarks/h200.md.
#
#   bench/gpu/h200.sh setup|core|schedulers|startup|diag [OUT_DIR]
#
# setup       install pagewarm (and the wheels in .whl/ that the box lacks), record the machine
# core        synth a 16 GiB Llama-shaped model (timed), the O_DIRECT reference, then
#             `pagewarm bench --loader torch-cuda` with pre-warm variants, 3 runs per mode
# schedulers  the I/O scheduler experiment (none vs mq-deadline; restored afterwards)
# sidecar     (issue 8's sleeping stand-in: replaced by startup)
# startup     the realistic engine (torch + transformers imported for real, CUDA initialised,
#             from_pretrained(device_map="cuda")): its start-up recorded from an all-cold
#             cache (drop_caches), then 3 cache states x {alone, weights pre-warm, profile
#             replay + weights} (issue 15); RUNS rounds, PROFILE keeps the recording between
#             calls (a later call reuses it)
# diag        where an all-cold start spends its time (bench/gpu/startup_diag.py: the disk,
#             the weights' residency, the engine's main thread, per scenario)
set -euo pipefail
phase="${1:?setup|core|schedulers|startup|diag}"
out="${2:-${OUT:-/tmp/pagewarm-out}}"
repo="$(cd "$(dirname "$0")/../.." && pwd)"
model="${MODEL_DIR:-/var/tmp/pagewarm-h200/model}"
size="${MODEL_SIZE:-16GiB}"
runs="${RUNS:-3}"
variants="${PREWARM_VARIANTS:-populate:8,read:8,read:16}"
loader="${LOADER:-torch-cuda}"
device="${DEVICE:-cuda}"
framework="${FRAMEWORK:-transformers}"
profile="${PROFILE:-/var/tmp/pagewarm-h200/startup-profile.json.gz}"
drop_caches="${DROP_CACHES:-1}"
site=/tmp/pagewarm-site
export PYTHONPATH="$site:$repo" PATH="$site/bin:$PATH" PYTHONUNBUFFERED=1
export PAGEWARM_SAMPLES="$out/samples.jsonl" PAGEWARM_LOG_FORMAT=json
mkdir -p "$out"
# One log for every phase: it comes back with the samples and the report.
exec > >(tee -a "$out/log.txt") 2>&1
log() { printf '\n== %s  %s\n' "$(date -u +%H:%M:%S)" "$*"; }

ensure_model() {
    mkdir -p "$model"
    local fstype
    fstype="$(findmnt -no FSTYPE -T "$model")"
    case "$fstype" in
        tmpfs | overlay | ramfs) echo "model dir on $fstype: no block device; set MODEL_DIR on a disk" >&2; exit 2 ;;
    esac
    if [[ ! -f "$model/model.safetensors.index.json" ]]; then
        log "synth $size on $fstype"
        pagewarm synth "$model" --size "$size" --shards 4 --threads "$(nproc)" --json
    fi
}

case "$phase" in
setup)
    if [[ -d "$repo/.whl" && -z "${NO_WHEELS:-}" ]]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$site" "$repo"/.whl/*.whl
    fi
    mkdir -p "$site/bin"
    printf '#!/bin/sh\nexec python3 -m controller.cli "$@"\n' > "$site/bin/pagewarm"
    chmod +x "$site/bin/pagewarm"
    {
        log "machine (setup)"
        uname -r; nproc; free -g; df -h /var/tmp; findmnt -T /var/tmp
        for q in /sys/block/*/queue; do echo "$q: $(cat "$q/scheduler") ra=$(cat "$q/read_ahead_kb")KiB rot=$(cat "$q/rotational")"; done
        nvidia-smi -L || true
        python3 -c 'import torch, safetensors; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "safetensors", safetensors.__version__)'
        echo "damon: $(cat /sys/kernel/mm/damon/admin/kdamonds/nr_kdamonds 2>/dev/null || echo none)"
        grep -o 'page_reporting[^ ]*' /proc/cmdline || echo "no page_reporting on the kernel command line"
        pagewarm --version
    }
    ;;
core)
    ensure_model
    log "O_DIRECT reference"
    for t in 8 16 32; do python3 "$repo/bench/odirect.py" "$model" --threads "$t"; done
    log "bench: $loader, $runs runs per mode, variants $variants"
    pagewarm bench "$model" --loader "$loader" --runs "$runs" --prewarm-variants "$variants" \
        --seed 8 --out "$out/report"
    ;;
schedulers)
    ensure_model
    log "scheduler experiment"
    pagewarm bench "$model" --loader "$loader" --runs "$runs" --schedulers none,mq-deadline \
        --seed 9 --out "$out/report"
    pagewarm scheduler show || true
    ;;
sidecar)
    echo "the sidecar phase (issue 8's sleeping stand-in) is gone: run the startup phase" >&2
    exit 2
    ;;
startup)
    ensure_model
    log "start-up bench: $framework engine on $device, $runs round(s), profile $profile"
    drop=()
    [[ "$drop_caches" == 1 ]] && drop=(--drop-caches)
    python3 "$repo/bench/sidecar_bench.py" "$model" --framework "$framework" --device "$device" \
        "${drop[@]}" --runs "$runs" ${BENCH_ARGS:-} --profile "$profile" --seed "${SEED:-15}" \
        --out "$out/startup_bench${ROUND:+_$ROUND}.json"
    ;;
diag)
    ensure_model
    log "start-up diagnosis: $framework engine on $device, profile $profile"
    python3 "$repo/bench/gpu/startup_diag.py" "$model" --framework "$framework" \
        --device "$device" --drop-caches --profile "$profile" ${DIAG_ARGS:-} \
        --out "$out/startup_diag${ROUND:+_$ROUND}.json"
    ;;
*)
    echo "unknown phase $phase" >&2
    exit 2
    ;;
esac
# The report keeps its own copy of the samples; $OUT brings back at most 8 files.
mv -f "$out/report/storage_load_bench.jsonl" /tmp/ 2>/dev/null || true
