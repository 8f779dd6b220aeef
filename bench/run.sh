#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds the store benchmark in Release (into build-bench/, only what changed) and runs
# it. Arguments go to store_bench, e.g.:
#   bench/run.sh                       # full run on /tmp (~ a few minutes)
#   bench/run.sh --dir /var/lib/x      # another file system
#   bench/run.sh --quick               # smoke run: small sizes, 1 repetition
#   bench/run.sh --filter "rand read"  # only the cases whose name contains the text
# See bench/README.md ("## Store") for what each case measures.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BENCH_BUILD_DIR:-$repo/build-bench}"  # another build directory: BENCH_BUILD_DIR
if [[ ! -f "$build/build.ninja" ]]; then
  cmake -S "$repo" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
# Quiet unless the build fails (ninja prints compiler errors on stdout).
if ! log="$(cmake --build "$build" --target store_bench 2>&1)"; then
  printf '%s\n' "$log" >&2
  exit 1
fi
exec "$build/bench/store_bench" "$@"
