#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds the amirror binary in Release into build-mbench/ (only what changed; quiet
# unless the build fails) and prints its path. Used by run-mirror.sh and run-all.sh.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$repo/build-mbench"
[[ -f "$build/build.ninja" ]] || cmake -S "$repo" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
if ! log="$(cmake --build "$build" --target amirror 2>&1)"; then
  printf '%s\n' "$log" >&2
  exit 1
fi
echo "$build/amirror"
