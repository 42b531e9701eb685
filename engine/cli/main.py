"""ConvScope command line: `python -m engine COMMAND ... [--json]`.

With --json, exactly one JSON object goes to stdout; logs go to stderr.
Exit codes: 0 success, 1 a training run that failed (its JSON says why),
2 bad input (with {"error": "..."} under --json).

One module per group of commands (data, health, models, inside, concepts, train, runs); each adds its commands'
arguments next to the code that runs them. Here they are put together in the order of the help.
"""

from __future__ import annotations

import argparse
import logging
import sys

from engine.cli import concepts, data, health, inside, models, runs, train
from engine.cli.common import Parser, run
from engine.cli.timeline import add_timeline

COMMANDS = (
    models.add_backbones,
    models.add_predict,
    models.add_import_model,
    data.add_make_shapes,
    data.add_inspect_data,
    health.add_data_issues,
    health.add_data_fix,
    inside.add_activations,
    inside.add_explain,
    inside.add_visualize,
    inside.add_top_examples,
    concepts.add_tcav,
    runs.add_export,
    runs.add_report,
    add_timeline,
    train.add_train,
    train.add_finetune,
    train.add_lr_find,
    runs.add_evaluate,
    runs.add_runs,
    train.add_worker,
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m engine", description="ConvScope engine: transfer learning and CNN insight.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default: the command line), run the command, print its result; the exit code."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    return run(build_parser().parse_args(argv))
