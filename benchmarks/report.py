"""The frame of a study's results file: its title, the date and the command that wrote it on top,
the file under benchmarks/results/ named by the study and the CPU unless the command names another,
so that every committed number says where and how it was measured."""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def arguments(description: str, layers: str | None = None,
              layers_help: str = "comma-separated layer names") -> argparse.ArgumentParser:
    """A study's command line, to which the study adds its own options: `--layers` (default
    `layers`) and `--output` (default: results/<study>-<mcpu>.md, as `write` names it)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default=layers, help=layers_help)
    parser.add_argument("--output", type=Path, default=None, help="the results file")
    return parser


def header(title: str) -> list[str]:
    """The first lines of a results file: `title` (which names the CPU), the date and the command."""
    command = " ".join([f"python benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    return [f"# {title}", "", f"- date: {datetime.date.today()}", f"- command: `{command}`"]


def write(lines: list[str], study: str, mcpu: str, output: Path | None) -> int:
    """Write `lines` to `output`, or else to results/<study>-<mcpu>.md; say where. The exit status."""
    output = output or RESULTS / f"{study}-{mcpu}.md"
    output.write_text("\n".join(lines) + "\n")
    print(f"wrote {output}")
    return 0
