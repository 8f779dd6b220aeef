#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes the example node config that packages install: the README's minimal config
(the first ```toml block under "## Running nodes"), so the two never drift apart.
tests/e2e/test-package-install.sh starts a node on the installed copy.

usage: readme-config.py README.md OUTPUT
"""
import sys


def main() -> int:
    readme, output = sys.argv[1], sys.argv[2]
    lines = open(readme, encoding="utf-8").read().splitlines()
    try:
        start = lines.index("## Running nodes")
        start = lines.index("```toml", start) + 1
        end = lines.index("```", start)
    except ValueError:
        print(f"{readme}: no ```toml block under '## Running nodes' to make the example config from",
              file=sys.stderr)
        return 1
    header = [
        "# amirror node config: copy to /etc/amirror/NAME.toml, edit, then",
        "#   systemctl enable --now amirror@NAME",
        "# Every key is explained in README.md (\"Running nodes\").",
        "",
    ]
    text = "\n".join(header + lines[start:end]) + "\n"
    with open(output, "w", encoding="utf-8") as out:
        out.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
