#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs every dependency (Debian 12, as root or with sudo) and builds amirror into
# ./build. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  # build
  cmake ninja-build g++ pkg-config ccache clang libclang-rt-14-dev
  # libraries
  libfmt-dev libxxhash-dev libcli11-dev libtomlplusplus-dev nlohmann-json3-dev libssl-dev
  libgtest-dev libgmock-dev libbenchmark-dev libnbd-dev libsystemd-dev libzstd-dev
  # packaging: the .deb (cpack, dpkg-shlibdeps), unit check, man page rendering
  dpkg-dev file systemd man-db groff-base
  # logs (spdlog; journald via libsystemd) and metrics (prometheus-cpp; prometheus and promtool for tests)
  libspdlog-dev prometheus-cpp-dev prometheus
  # real NBD clients and peers used by tests and benchmarks
  qemu-utils libnbd-bin nbdkit nbdfuse fio rsync
  # test plumbing
  iproute2 procps util-linux python3 openssl jq diffutils
  # volume adopt e2e: an ext4 file system on a loop device (mkfs.ext4, fsck.ext4)
  e2fsprogs
)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done
if ((${#missing[@]})); then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  echo "bootstrap: installing ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}"
fi

build_type=${AMIRROR_BUILD_TYPE:-RelWithDebInfo}
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE="$build_type" ${AMIRROR_CMAKE_ARGS:-}
cmake --build build -j "$(nproc)"
echo "bootstrap: built build/amirror"
