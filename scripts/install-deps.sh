#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages dkv needs to build, test, run and benchmark, skipping what is
# already installed. Works as root or through sudo.
# Usage: scripts/install-deps.sh [--test] [--bench] [--fuzz]
# Without options: what `make build` / `make run` need (compiler, libraries, curl).
set -euo pipefail

pkgs=(build-essential cmake pkg-config libuv1-dev node-llhttp librocksdb-dev libxxhash-dev
      libsodium-dev libcurl4-openssl-dev python3 curl)
for opt in "$@"; do
  case "$opt" in
    --test) pkgs+=(libcmocka-dev python3-pytest faketime
                   python3-prometheus-client prometheus  # metrics tests: parser, promtool, a scrape
                   chromium) ;;  # the status page test: headless Chromium renders GET /
    --bench) pkgs+=(wrk nginx-light gnuplot-nox linux-perf heaptrack) ;;
    --fuzz) pkgs+=(clang libclang-rt-dev) ;;
    *) echo "install-deps: unknown option $opt (use --test, --bench, --fuzz)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: apt-get not found; install these yourself: ${missing[*]}" >&2
  exit 1
fi
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "install-deps: need root or sudo to install: ${missing[*]}" >&2
    exit 1
  fi
  sudo=(sudo)
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
