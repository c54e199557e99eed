#!/usr/bin/env bash
# Runs one Herald node on the embedded broker (no NATS needed), installing a C compiler and
# Rust (rustup) first when they are missing on a Debian/Ubuntu machine. Extra arguments go to
# `herald serve` (see `herald serve --help`), e.g. scripts/run.sh --http-addr 127.0.0.1:8080
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v curl >/dev/null 2>&1 || missing+=(curl ca-certificates)
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
  if [ ! -x "$HOME/.cargo/bin/cargo" ]; then
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  fi
  export PATH="$HOME/.cargo/bin:$PATH"
fi
exec cargo run --release --locked -p herald -- serve "$@"
