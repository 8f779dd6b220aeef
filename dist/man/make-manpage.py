#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes amirror(8) from the built binary's own --help (every subcommand, recursively)
and --version, into the hand-written frame dist/man/amirror.8.in: the option lists
exist once, in src/cli/main.cc, and the man page cannot drift from them. The example
config (made from the README by dist/examples/readme-config.py) becomes its
CONFIGURATION section. Fails (no man page, build stops) on help text it cannot read,
rather than printing a wrong page.

usage: make-manpage.py AMIRROR_BINARY TEMPLATE EXAMPLE_CONFIG OUTPUT
"""
import re
import subprocess
import sys

# CLI11's help: "  NAME<spaces>DESCRIPTION", the description at this column (CLI11's
# default column width), or on the next lines when NAME is longer.
DESCRIPTION_COLUMN = 30


def roff(text: str) -> str:
    """Escapes text for a roff line (backslash, hyphens, a leading dot or quote)."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def run(binary: str, args: list[str]) -> str:
    result = subprocess.run([binary, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"make-manpage: '{binary} {' '.join(args)}' exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def is_continuation(line: str) -> bool:
    return line.startswith(" " * DESCRIPTION_COLUMN) and bool(line.strip())


def parse_help(text: str) -> dict:
    """{"about": str, "usage": str, "sections": [(title, [(name, description)])], "footer": [lines]}

    CLI11 pads "  NAME" to DESCRIPTION_COLUMN and writes the description there; a NAME
    that long gets the description on the next line, at that column. Descriptions in
    main.cc are one line each, so a continuation line always means the latter."""
    lines = text.rstrip("\n").split("\n")
    help_page = {"about": lines[0].strip(), "usage": "", "sections": [], "footer": []}
    items = None
    for index, line in enumerate(lines[1:], start=1):
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if line.startswith("Usage: "):
            help_page["usage"] = line[len("Usage: "):].strip()
        elif not line.strip():
            items = None
        elif not line.startswith(" ") and line[:-1] in ("Options", "Positionals", "Subcommands") and line.endswith(":"):
            items = []
            help_page["sections"].append((line[:-1], items))
        elif items is None:
            help_page["footer"].append(line)  # free text after the lists (the exit codes)
        elif is_continuation(line):
            if not items or items[-1][1]:
                sys.exit(f"make-manpage: a description of two lines (keep them one line in main.cc): {line!r}")
            items[-1] = (items[-1][0], line.strip())
        elif re.match(r"^  \S", line):
            if is_continuation(following):
                items.append((line.strip(), ""))
            elif len(line) > DESCRIPTION_COLUMN and line[DESCRIPTION_COLUMN - 1] == " ":
                items.append((line[:DESCRIPTION_COLUMN].strip(), line[DESCRIPTION_COLUMN:].strip()))
            else:
                sys.exit(f"make-manpage: cannot split this help line into name and description: {line!r}")
        else:
            sys.exit(f"make-manpage: cannot read this help line: {line!r}")
    for title, entries in help_page["sections"]:
        for name, description in entries:
            if not description:
                sys.exit(f"make-manpage: '{name}' in {title} has no description")
    return help_page


def items_roff(entries, bold_names: bool) -> list[str]:
    out = []
    for name, description in entries:
        if name.startswith("-h,--help"):
            continue  # every command has it; said once, in SYNOPSIS
        words = name.split(" ", 1)
        head = f"\\fB{roff(words[0])}\\fR" + (f" \\fI{roff(words[1])}\\fR" if len(words) > 1 else "")
        if not bold_names:
            head = roff(name)
        out += [".TP", head, roff(description)]
    return out


def command_roff(binary: str, path: list[str], out: list[str]) -> None:
    page = parse_help(run(binary, [*path, "--help"]))
    subcommands = []
    if path:
        out += [f'.SS "{roff(" ".join(["amirror", *path]))}"', roff(page["about"]), ".PP",
                f"Usage: \\fB{roff(page['usage'])}\\fR"]
        for title, entries in page["sections"]:
            if title == "Subcommands":
                subcommands = [name.split()[0] for name, _ in entries]
                continue
            shown = [entry for entry in entries if not entry[0].startswith("-h,--help")]
            if shown:
                out += [".PP", f"{title}:", ".RS"] + items_roff(shown, True) + [".RE"]
    else:
        for title, entries in page["sections"]:
            if title == "Subcommands":
                subcommands = [name.split()[0] for name, _ in entries]
    for subcommand in subcommands:
        command_roff(binary, [*path, subcommand], out)


def main() -> int:
    binary, template, example, output = sys.argv[1:5]
    top = parse_help(run(binary, ["--help"]))
    version = run(binary, ["--version"]).strip()
    global_options = []
    for title, entries in top["sections"]:
        if title == "Options":
            global_options = items_roff(entries, True)
    commands = []
    command_roff(binary, [], commands)
    # The footer's "Exit codes:" list: "  N  meaning" lines.
    exit_status = []
    for line in top["footer"]:
        match = re.match(r"^\s+(\d+)\s+(.*)$", line)
        if match:
            exit_status += [".TP", f"\\fB{match.group(1)}\\fR", roff(match.group(2))]
    if not exit_status:
        sys.exit("make-manpage: `amirror --help` lists no exit codes (its footer); the man page needs them")
    config = [roff(line) if line else "" for line in open(example, encoding="utf-8").read().rstrip("\n").split("\n")]
    text = open(template, encoding="utf-8").read()
    replacements = {
        "@VERSION@": roff(version),
        "@ABOUT@": roff(top["about"].split(": ", 1)[-1]),
        "@GLOBAL_OPTIONS@": "\n".join(global_options),
        "@COMMANDS@": "\n".join(commands),
        "@EXIT_STATUS@": "\n".join(exit_status),
        "@EXAMPLE_CONFIG@": "\n".join(config),
    }
    for key, value in replacements.items():
        if key not in text:
            sys.exit(f"make-manpage: {template} lacks {key}")
        text = text.replace(key, value)
    with open(output, "w", encoding="utf-8") as out:
        out.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
