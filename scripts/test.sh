#!/usr/bin/env bash
# Runs Herald's whole test suite on a Debian/Ubuntu machine, installing what it needs first
# (Rust via rustup, nats-server, prometheus, npm, chromium from Debian, cargo-fuzz from
# crates.io) when missing. Safe to run again: installed pieces
# are detected and skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# --- system packages -------------------------------------------------------------------
apt_missing=()
[ -x /usr/sbin/nats-server ] || command -v nats-server >/dev/null 2>&1 || apt_missing+=(nats-server)
command -v cc >/dev/null 2>&1 || apt_missing+=(build-essential)
command -v curl >/dev/null 2>&1 || apt_missing+=(curl ca-certificates)
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || apt_missing+=(prometheus)
command -v npm >/dev/null 2>&1 || apt_missing+=(npm)
[ -x /usr/bin/chromium ] || apt_missing+=(chromium)
# The hardening tests: prlimit, unshare and nsenter (util-linux), ip (iproute2).
command -v prlimit >/dev/null 2>&1 && command -v unshare >/dev/null 2>&1 && command -v nsenter >/dev/null 2>&1 || apt_missing+=(util-linux)
command -v ip >/dev/null 2>&1 || apt_missing+=(iproute2)
if [ "${#apt_missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${apt_missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${apt_missing[@]}"
fi

# --- Rust toolchain ---------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    log "installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# --- checks -----------------------------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo build (the end-to-end tests run the real herald binary)"
cargo build --workspace --bins --locked
log "cargo test (unit, conformance, real nats-server, end-to-end)"
cargo test --workspace --locked
scripts/check-observability.sh
scripts/check-helm.sh
scripts/check-browser.sh
log "fuzzing: every untrusted-input parser for FUZZ_SECONDS (default 30) each"
scripts/check-fuzz.sh
log "all checks passed"
