"""The README's performance table, generated from the JSON that the loss benchmark writes.

    python -m bench.perf_table bench/results/loss_<machine>_<date>.json            # print it
    python -m bench.perf_table bench/results/loss_<machine>_<date>.json --readme README.md

With --readme, the block between `<!-- perf-table: FILE.json -->` and `<!-- /perf-table -->` that
names this file is replaced (tests/test_bench_harness.py checks that the README's blocks equal what
this script makes of their files, so the table cannot drift from the measurement).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from bench._loss_impls import ratio_table

BLOCK = re.compile(r"(<!-- perf-table: (?P<file>\S+) -->\n)(?P<body>.*?)(<!-- /perf-table -->)", re.S)


def describe(machine: dict) -> str:
    """One line naming where and on what the numbers were measured."""
    if machine.get("gpu"):
        where = f"{machine['gpu']}, driver {machine.get('driver')}, CUDA {machine.get('cuda')}"
    else:
        where = f"CPU: {machine.get('cpu')}, {machine.get('cpu_count')} cores, {machine.get('threads')} thread(s)"
        if machine.get("load_avg_1min_at_start") is not None:
            where += f", load average {machine['load_avg_1min_at_start']:.1f} at the start (other work running)"
    libs = f"torch {machine.get('torch')}, triton {machine.get('triton')}"
    if machine.get("lightly"):
        libs += f", lightly {machine['lightly']}"
    return f"Measured on {where}; {libs}; commit {machine.get('commit')}, {machine.get('date', '')[:10]}."


def table(path: str | Path) -> str:
    data = json.loads(Path(path).read_text())
    if data.get("format") != 2:
        raise ValueError(f"{path}: not written by this benchmark version (format 2); older files keep their own "
                         "tables in bench/results/README.md")
    return describe(data["machine"]) + "\n\n" + ratio_table(data["results"]) + "\n"


def update_readme(readme: str | Path, path: str | Path) -> bool:
    """Replace the block naming `path`; False when the README has none."""
    readme = Path(readme)
    text = readme.read_text()
    name = str(path)
    found = False

    def sub(m):
        nonlocal found
        if m.group("file") != name:
            return m.group(0)
        found = True
        return m.group(1) + table(path) + m.group(4)

    new = BLOCK.sub(sub, text)
    if found:
        readme.write_text(new)
    return found


def blocks(readme_text: str) -> list[tuple[str, str]]:
    """[(json path, block body)] of every generated table in a README."""
    return [(m.group("file"), m.group("body")) for m in BLOCK.finditer(readme_text)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.perf_table", description=__doc__.split("\n\n")[0])
    ap.add_argument("json", help="a results file written by bench/test_loss_bench.py")
    ap.add_argument("--readme", help="replace this file's block for JSON instead of printing")
    args = ap.parse_args(argv)
    try:
        if args.readme:
            if not update_readme(args.readme, args.json):
                print(f"error: {args.readme} has no '<!-- perf-table: {args.json} -->' block", file=sys.stderr)
                return 2
            return 0
        print(table(args.json), end="")
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
