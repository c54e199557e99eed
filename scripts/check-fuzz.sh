#!/usr/bin/env bash
# Bounded fuzzing of every parser that sees untrusted input (fuzz/README.md): builds the
# cargo-fuzz targets once, runs each for FUZZ_SECONDS (default 30) from its committed seeds,
# and fails on any crash, printing the artifact. New corpus entries go to a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-30}
TARGETS=(ws_command client_query cursor channel_payload token)
CARGO_FUZZ_VERSION=0.13.2

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" >/dev/null
fi
# libFuzzer with AddressSanitizer needs a nightly toolchain; without one, fuzz on stable
# without a sanitizer (still coverage-guided; panics and aborts are still caught).
if rustup run nightly rustc --version >/dev/null 2>&1; then
  FUZZ=(cargo +nightly fuzz)
  SAN=()
  echo "==> fuzzing with $(rustup run nightly rustc --version) and AddressSanitizer"
else
  FUZZ=(cargo fuzz)
  SAN=(--sanitizer none)
  echo "==> no nightly toolchain: fuzzing on $(rustc --version) without a sanitizer"
fi
"${FUZZ[@]}" build -O "${SAN[@]}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in "${TARGETS[@]}"; do
  mkdir -p "$work/$t"
  log="$work/$t.log"
  if ! timeout $((SECONDS_EACH + 120)) "${FUZZ[@]}" run -O "${SAN[@]}" "$t" "$work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    echo "FAIL $t: the fuzzer found a crash (or could not run); its log:"
    tail -40 "$log"
    ls fuzz/artifacts/"$t"/ 2>/dev/null | sed "s|^|  artifact: fuzz/artifacts/$t/|"
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
  echo "ok   $t: $runs runs in ${SECONDS_EACH}s, $cov, corpus $(ls "$work/$t" | wc -l) new + $(ls "fuzz/corpus/$t" | wc -l) seeds"
done
echo "==> fuzzing: no crash in ${#TARGETS[@]} targets"
