# SPDX-License-Identifier: Apache-2.0
# cmake -DSOURCE_DIR=... -DOUTPUT=... -DPROJECT_VERSION=... -P version.cmake
# Writes OUTPUT (src/cli/version.h's generated twin): the project's version, plus
# `git describe` when SOURCE_DIR is itself a git checkout (a source tarball has none).
# Runs at every build; file(CONFIGURE) rewrites OUTPUT only when the text changes, so
# a commit recompiles main.cc alone and `amirror --version` never lags the tree.
set(version "${PROJECT_VERSION}")
execute_process(COMMAND git -C "${SOURCE_DIR}" rev-parse --show-toplevel
                OUTPUT_VARIABLE toplevel RESULT_VARIABLE toplevel_status
                OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
# Only our own checkout: a tarball unpacked inside some other repository is not.
if(toplevel_status EQUAL 0 AND toplevel STREQUAL SOURCE_DIR)
  execute_process(COMMAND git -C "${SOURCE_DIR}" describe --tags --always --dirty
                  OUTPUT_VARIABLE describe RESULT_VARIABLE describe_status
                  OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(describe_status EQUAL 0 AND NOT describe STREQUAL "")
    set(version "${version} (git ${describe})")
  endif()
endif()
file(CONFIGURE OUTPUT "${OUTPUT}" CONTENT [=[
// Generated at build time by dist/cmake/version.cmake; do not edit.
#pragma once

namespace amirror::cli {
inline constexpr const char kVersion[] = "@version@";
}  // namespace amirror::cli
]=] @ONLY)
