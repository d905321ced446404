#!/usr/bin/env bash
# Fills fuzz/corpus/TARGET with seed inputs from the repository's real test material:
#   json_audit     every line of tests/data/**/*.{ndjson,jsonl,json,log} (the vendored real audit
#                  logs in tests/data/audit-samples included), plus fuzz/seeds/json_audit
#                  (escapes, invalid UTF-8, deep nesting, duplicates)
#   prune          the same lines as json_audit, each prefixed with a chunk size byte (the
#                  target feeds the pruner in chunks of that size)
#   yaml_rules     tests/data/**/*.yaml, plus ../shared/compat/*.yaml when ../shared is there
#   http_response  fuzz/seeds/http_response (hand-written responses: length, chunked, 429...)
#   checkpoint     tests/data/**/*checkpoint* files, fuzz/seeds/checkpoint (first byte: mode)
#   config_values  fuzz/seeds/config_values
#   cloud          tests/data/cloud/* (EKS, GKE, AKS, webhook shapes) and tests/data/sample/*,
#                  each prefixed with a read-size byte and a format byte
# Idempotent: names are derived from the source file, so re-running overwrites, never piles up.
# usage: fuzz/seed.sh TARGET
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
shared="$root/../shared"
target=${1:?usage: fuzz/seed.sh TARGET}
out="$here/corpus/$target"
mkdir -p "$out"
data_files() { # data_files PATTERN...: files under tests/data matching any pattern
  [ -d "$root/tests/data" ] || return 0
  local args=() p
  for p in "$@"; do args+=(-o -name "$p"); done
  find "$root/tests/data" -type f \( "${args[@]:1}" \) -print
}
case "$target" in
  json_audit)
    for f in $(data_files '*.ndjson' '*.jsonl' '*.json' '*.log'); do
      [ -f "$f" ] || continue
      split -l 1 -a 5 -d "$f" "$out/$(basename "$f")-"
    done ;;
  prune)
    for f in $(data_files '*.ndjson'); do
      [ -f "$f" ] || continue
      split -l 1 -a 5 -d "$f" "$out/$(basename "$f")-"
    done
    # A chunk size byte in front of each line (7: odd steps cross every boundary).
    for f in "$out"/*; do
      [ -f "$f" ] || continue
      { printf '\a'; cat "$f"; } >"$f.tmp" && mv "$f.tmp" "$f"
    done ;;
  yaml_rules)
    for f in "$shared"/compat/*.yaml $(data_files '*.yaml' '*.yml'); do
      [ -f "$f" ] || continue  # no ../shared in a fresh clone: the glob stays unexpanded
      cp "$f" "$out/$(basename "$(dirname "$f")")-$(basename "$f")"
    done ;;
  checkpoint)
    for f in $(data_files '*checkpoint*'); do
      cp "$f" "$out/$(basename "$(dirname "$f")")-$(basename "$f")"
    done ;;
  cloud)
    for f in "$root"/tests/data/cloud/* "$root"/tests/data/sample/*.ndjson; do
      [ -f "$f" ] || continue
      # Read size 7 (odd steps cross every boundary), format 0 (auto).
      { printf '\a\0'; cat "$f"; } >"$out/$(basename "$f")"
    done ;;
  http_response|config_values) ;;
  *) echo "seed.sh: unknown target '$target' (json_audit, prune, yaml_rules, http_response, checkpoint, config_values, cloud)" >&2; exit 2 ;;
esac
if [ -d "$here/seeds/$target" ]; then cp "$here/seeds/$target"/* "$out/" 2>/dev/null || true; fi
echo "seed.sh: $(find "$out" -type f | wc -l) inputs in fuzz/corpus/$target"
