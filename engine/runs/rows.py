"""One row per run for the Runs table and `python -m engine runs`."""

from __future__ import annotations

from engine.runs.files import RunError, keras_archive_problem, mtime, read_json
from engine.runs.folder import Run, is_imported, planned_epochs


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _list(value) -> list:
    return value if isinstance(value, list) else []


def summary(run: Run) -> dict:
    """One row for run tables and `python -m engine runs`.

    Never raises for a broken folder: an unreadable file makes the row's status failed, with the reason.
    """
    problems: list[str] = []

    def read(name: str, default):
        try:
            value = read_json(run.path / name, default)
        except RunError as exc:
            problems.append(str(exc))
            return default
        if not isinstance(value, type(default)):
            problems.append(f"{run.path / name}: expected a JSON {type(default).__name__}")
            return default
        return value

    config = read("config.json", {})
    history = read("history.json", {})
    metrics = read("metrics.json", {})
    try:
        status = run.status()
        if not isinstance(status, dict):
            raise RunError(f"{run.path / 'status.json'}: expected a JSON dict")
    except (RunError, AttributeError, TypeError, ValueError) as exc:
        problems.append(str(exc))
        status = {}
    has_model = run.model_path.is_file()
    broken = keras_archive_problem(run.model_file) if run.model_file.is_file() else ""
    if broken:  # a model that cannot load: the run is not finished, whatever its status says
        problems.append(f"{run.path / 'model.keras'}: {broken}")
        has_model = False
    if problems:
        status = {"status": "failed", "reason": "; ".join(problems), "detail": "the run folder is damaged"}
    try:
        display_name = run.display_name()
    except (RunError, AttributeError):
        display_name = ""  # only a label: a damaged meta.json does not fail the run
    try:
        latency = _number(read_json(run.path / "latency.json", {}).get("ms_per_image"))
    except (RunError, AttributeError):
        latency = None
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    finetune = config.get("finetune") if isinstance(config.get("finetune"), dict) else {}
    first = int(_number(finetune.get("parent_epochs")) or 0)  # a fine-tune's history starts with its parent's
    val_history = [v for v in _list(history.get("val_accuracy"))[first:] if _number(v) is not None]
    imported = config.get("imported") if isinstance(config.get("imported"), dict) else {}
    try:
        planned = None if is_imported(config) else planned_epochs(config)  # brought in, not trained
    except (TypeError, ValueError, AttributeError):
        planned = None
    params = metrics.get("params")
    train_seconds = _number(metrics.get("train_seconds"))
    if train_seconds is None and not problems:
        train_seconds = _number(status.get("seconds"))  # a stopped or failed run: its time so far
    return {
        "name": run.name,
        "display_name": display_name,
        "path": str(run.path),
        "status": status.get("status"),
        "reason": status.get("reason", ""),
        "detail": status.get("detail", ""),
        # an imported model has no backbone of ConvScope's: its file says what it is
        "backbone": config.get("backbone") or (f"imported: {imported.get('file', '?')}" if imported else ""),
        "mode": config.get("mode", ""),
        "imported": imported,  # engine.config.ImportConfig's fields for an imported model, else {}
        "source": data.get("source", ""),
        "image_size": data.get("image_size"),
        "epochs_run": len(_list(history.get("loss"))),
        "epochs": planned,
        "parent": config.get("parent", ""),
        "val_accuracy": metrics.get("val_accuracy", val_history[-1] if val_history else None),
        # the saved model's (early stopping keeps the lowest validation loss's weights): None until saved
        "kept_val_accuracy": _number(metrics.get("val_accuracy")),
        # over the run's own epochs (a fine-tune's, not its parent's)
        "best_val_accuracy": max(val_history) if val_history else None,
        "final_val_accuracy": val_history[-1] if val_history else None,
        "test_accuracy": metrics.get("test_accuracy"),
        "params": params if isinstance(params, dict) else None,
        "train_seconds": train_seconds,
        "latency_ms": latency,
        "created": _number(config.get("created")) or mtime(run.path) or None,
        # what engine.data.corrections changed in the data it trained on (relabelled, excluded...), else None
        "corrections": config.get("corrections") if isinstance(config.get("corrections"), dict) else None,
        "has_model": has_model,
        "resumable": not problems and status.get("status") in ("failed", "stopped") and run.checkpoint.is_file(),
    }
