#!/usr/bin/env bash
# Runs one fuzz target for SECONDS (default 600) with bounded memory and time per input.
#   usage: fuzz/run.sh TARGET [SECONDS] [extra libFuzzer flags...]
#   e.g.   fuzz/run.sh json_audit 600 & fuzz/run.sh yaml_rules 600 & wait   # 2 at a time on 2 cores
# Uses the nightly toolchain with AddressSanitizer when rustup has one; otherwise the stable
# toolchain with RUSTC_BOOTSTRAP=1 and no sanitizer (Rust code is memory safe without it; the
# run still finds panics, hangs and runaway allocation). Crashes land in fuzz/artifacts/TARGET/;
# keep each one as a regression test in the module's unit tests.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
target=${1:?usage: fuzz/run.sh TARGET [SECONDS] [libFuzzer flags]}
secs=${2:-600}
shift $(( $# >= 2 ? 2 : 1 ))
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# FUZZ_TOOLCHAIN=nightly|stable forces a toolchain; FUZZ_SANITIZER=address|none a sanitizer.
tc=${FUZZ_TOOLCHAIN:-}
if [ -z "$tc" ]; then
  if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then tc=nightly; else tc=stable; fi
fi
if [ "$tc" = nightly ]; then
  sanitizer=${FUZZ_SANITIZER:-address}
else
  export RUSTC_BOOTSTRAP=1 # cargo-fuzz passes -Z flags; stable accepts them with this
  sanitizer=${FUZZ_SANITIZER:-none}
fi
if command -v rustup >/dev/null; then cargo_cmd=(cargo "+$tc" fuzz); else cargo_cmd=(cargo fuzz); fi
case "$target" in
  json_audit) max_len=262144 ;;   # real audit lines reach ~460 KB; most are 1-10 KB
  prune) max_len=262144 ;;
  cloud) max_len=65536 ;;
  yaml_rules) max_len=65536 ;;
  *) max_len=8192 ;;
esac
./seed.sh "$target"
mkdir -p "seeds/$target"
# -rss_limit_mb / -malloc_limit_mb: "unbounded allocation" is a failure, not a slow run.
# -timeout: one input taking 10 s is a hang.
exec "${cargo_cmd[@]}" run -O --sanitizer "$sanitizer" "$target" "corpus/$target" -- \
  -max_total_time="$secs" -rss_limit_mb=1024 -malloc_limit_mb=512 -timeout=10 \
  -max_len="$max_len" -print_final_stats=1 "$@"
