"""The ConvScope command line, `python -m engine COMMAND ... [--json]` (engine/__main__.py runs it)."""
