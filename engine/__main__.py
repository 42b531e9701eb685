"""`python -m engine COMMAND ... [--json]`: the ConvScope command line, engine/cli/.

TensorFlow is imported first, quietly: the commands' modules import the engine, and so
TensorFlow, whose start-up lines on stderr are only noise on a machine without a GPU.
"""

import sys

from engine.cli import common

_has_gpu_device = common.has_gpu_device  # a name here, so a test can pretend a GPU exists


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with its known start-up noise filtered out (the CUDA lines kept where a GPU exists)."""
    common.import_tensorflow_quietly(gpu=_has_gpu_device())


if __name__ == "__main__":
    _import_tensorflow_quietly()
    from engine.cli.main import main  # after TensorFlow's quiet import: this loads the engine

    sys.exit(main())
