#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Clang's thread-safety analysis over the files whose locks are annotated.

Usage: thread_safety.py COMPILE_COMMANDS_JSON SOURCE_ROOT

Each src/node/*.cc and src/base/*.cc is compiled by clang++ with -fsyntax-only
-Wthread-safety -Werror=thread-safety and exactly the flags, include directories and
defines CMake uses for it (taken from compile_commands.json), whatever compiler the
build itself uses. Exit 0 clean, 1 on any finding, 77 (skipped) without clang++.
"""
import json
import os
import shlex
import shutil
import subprocess
import sys

ANALYSED_DIRS = ("src/node/", "src/base/")
# Flags that make sense only for the real build (outputs, dependency files, gcc-only
# warnings clang would reject) are dropped.
DROP_WITH_ARGUMENT = {"-o", "-MF", "-MT", "-MQ"}
DROP = {"-c", "-MD", "-MMD"}


def clang_command(entry, clang, root):
    arguments = entry.get("arguments") or shlex.split(entry["command"])
    # Skip launchers (ccache) and the compiler itself: everything up to the first flag.
    start = next(i for i, argument in enumerate(arguments) if argument.startswith("-"))
    command = [clang]
    skip_next = False
    source = os.path.normpath(os.path.join(entry["directory"], entry["file"]))
    for argument in arguments[start:]:
        if skip_next:
            skip_next = False
            continue
        if argument in DROP_WITH_ARGUMENT:
            skip_next = True
            continue
        if argument in DROP or os.path.normpath(os.path.join(entry["directory"], argument)) == source:
            continue
        command.append(argument)
    command += ["-fsyntax-only", "-Wthread-safety", "-Werror=thread-safety", source]
    return command


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    clang = shutil.which("clang++")
    if clang is None:
        print("clang++ is not installed: thread-safety analysis skipped", file=sys.stderr)
        return 77
    compile_commands, root = sys.argv[1], os.path.realpath(sys.argv[2])
    with open(compile_commands) as f:
        entries = json.load(f)
    checked = 0
    failed = []
    for entry in entries:
        path = os.path.relpath(os.path.realpath(os.path.join(entry["directory"], entry["file"])), root)
        if not path.startswith(ANALYSED_DIRS):
            continue
        result = subprocess.run(clang_command(entry, clang, root), cwd=entry["directory"], capture_output=True, text=True)
        checked += 1
        if result.returncode != 0:
            failed.append(path)
            sys.stderr.write(result.stderr)
    if checked == 0:
        print(f"no file under {', '.join(ANALYSED_DIRS)} in {compile_commands}", file=sys.stderr)
        return 1
    if failed:
        print(f"thread-safety analysis failed in {len(failed)} of {checked} files: {' '.join(failed)}", file=sys.stderr)
        return 1
    print(f"thread-safety analysis clean in {checked} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
