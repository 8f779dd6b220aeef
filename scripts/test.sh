#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds (if needed) and runs the whole test suite. AMIRROR_LONG=1 for long modes.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d build ] || bash scripts/bootstrap.sh
cmake --build build -j "$(nproc)"
cd build
ctest --output-on-failure -j 2 "$@"
