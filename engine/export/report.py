"""One self-contained HTML file about a run, to hand to a colleague: it opens offline.

Plotly's JavaScript is inlined once and each chart is a div; images are PNGs in data: URLs.
"""

from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image
from plotly.offline import get_plotlyjs

from engine import charts
from engine.backbones.conventions import TITLES
from engine.data.pipeline import load_resized
from engine.data.sources import source_title
from engine.errors import ConvScopeError
from engine.evaluate.evaluation import evaluate
from engine.explain import heatmaps, timeline
from engine.explain.overlay import overlay
from engine.export.formats import ExportError, checked_exports
from engine.model.explainable import run_model
from engine.runs import Run, is_imported, summary

TIMELINE = "Where it looked, epoch by epoch"
SECTIONS = (
    "Data",
    "Configuration",
    "Training curves",
    TIMELINE,
    "Metrics",
    "Per class",
    "Confusion matrix",
    "Calibration",
    "Most confident mistakes",
    "Exports",
)
# An imported model was trained elsewhere: no configuration or curves of ConvScope's, the file's facts instead.
IMPORTED_SECTIONS = tuple(
    "Imported model" if s == "Configuration" else s for s in SECTIONS if s not in ("Training curves", TIMELINE)
)
OUTPUT_WORDS = {  # engine.config.OUTPUT_KINDS, as the report says them
    "softmax": "softmax probabilities (the scores before the softmax are used as logits)",
    "logits": "raw logits (probabilities are their softmax)",
    "binary_logit": "one logit z for two classes (probability of the second class: sigmoid(z))",
    "sigmoid": "one sigmoid probability for two classes (the logit before it is used)",
}
MISTAKES = 8
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2rem auto;padding:0 1rem}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.3rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #ddd;padding:.3rem .6rem;text-align:left}
th{background:#f6f6f6} .muted{color:#777} .grid{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;width:250px} figure img{width:120px;height:120px;object-fit:cover} figcaption{font-size:.85rem}
.warn{color:#a15c00} .right{color:#2e7d32} .wrong{color:#c62828}
"""


def _table(rows: list[list], header: list[str] | None = None) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _png(rgb: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _figure(fig) -> str:
    # Plotly's own template, never the process default: inside the dashboard that is Streamlit's template, whose
    # colours are placeholders for its frontend and whose axes do not grow margins for their labels (with the
    # charts' 10 px margins, class names were clipped and "100%" showed as "%").
    fig.update_layout(template="plotly")
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def _pct(v) -> str:
    return "" if v is None else f"{v:.1%}"


def _params(params) -> str:
    if isinstance(params, dict):
        return f"{params.get('total', 0):,} ({params.get('trainable', 0):,} trainable)"
    return f"{params:,}" if params else ""


def _flatten(config: dict, prefix: str = "") -> list[list]:
    rows = []
    for key, value in config.items():
        if key in ("labels", "fingerprint", "created"):
            continue
        if isinstance(value, dict):
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append([f"{prefix}{key}", value])
    return rows


def _shown(config: dict) -> dict:
    """The configuration as a shared report shows it: no server paths (the data and a fine-tune's parent)."""
    shown = dict(config)
    if isinstance(config.get("data"), dict):
        shown["data"] = {**config["data"], "source": source_title(str(config["data"].get("source", "")))}
    ft = config.get("finetune")
    if isinstance(ft, dict) and ft.get("parent"):
        shown["finetune"] = {**ft, "parent": Run(Path(ft["parent"])).title()}
    return shown


def _imported_rows(config: dict, params) -> list[list]:
    """What an imported run is: the file, its hash, what its output was, the preprocessing and why."""
    facts = config.get("imported") or {}
    return [
        ["file", facts.get("file", "")],
        ["sha256", f"{str(facts.get('sha256', ''))[:16]}…"],
        ["format", facts.get("format", "")],
        ["output", OUTPUT_WORDS.get(str(facts.get("output")), str(facts.get("output", "")))],
        ["preprocessing", TITLES.get(str(facts.get("preprocess")), str(facts.get("preprocess", "")))],
        ["why this preprocessing", facts.get("preprocess_reason", "")],
        ["channels", "1 (grayscale: images are converted to luma first)" if facts.get("channels") == 1 else "3 (RGB)"],
        ["parameters", _params(params)],
        ["trained", "outside ConvScope: no training configuration or curves here"],
    ]


def _timeline(run: Run, history: dict) -> str:
    """The timeline's grid at its first, middle and last epochs, and the pointing game per epoch."""
    try:
        tl = timeline.load(run.path)
    except timeline.NoTimeline:
        return "<p class='muted'>No timeline: this run was trained with it off, or before timelines existed.</p>"
    out = [
        f"<p>Grad-CAM at {html.escape(tl.meta['layer'])} of the model being trained, after each epoch, for the same "
        "validation images, at the class it predicted then (green: right, red: wrong).</p>"
    ]
    best = run.metrics().get("best_epoch")
    if best is not None and best < int(tl.epochs[-1]):  # as the Train page says it
        out.append(f"<p class='muted'>Early stopping kept the weights of epoch {best}: the saved model looks as it "
                   "did then.</p>")  # fmt: skip
    for index in sorted({0, len(tl.epochs) // 2, len(tl.epochs) - 1}):
        cards = [
            f"<figure style='width:130px'><img src='{_png(tile)}' alt='epoch {tl.epochs[index]}'><figcaption>"
            f"<span class='{'right' if cell['right'] else 'wrong'}'>{html.escape(cell['predicted'])} "
            f"{cell['probability']:.0%}</span><br><span class='muted'>is {html.escape(cell['label'])}</span>"
            "</figcaption></figure>"
            for tile, cell in zip(timeline.tiles(run.path, tl, index), timeline.grid(tl, index), strict=True)
        ]
        out.append(f"<h3>Epoch {tl.epochs[index]}</h3><div class='grid'>{''.join(cards)}</div>")
    pointing = timeline.pointing_game(tl)
    if pointing is not None:
        out.append(_figure(charts.pointing_curve([int(e) for e in tl.epochs], pointing, history)))
    return "".join(out)


def write_report(run_dir: str | Path, out: str | Path | None = None, progress=None, source: str | None = None) -> dict:
    """Write the report of a finished run; returns {"path", "bytes", "sections", "seconds"}.

    Sections (SECTIONS): the data, the configuration, the curves of every phase (a fine-tune
    after its parent's epochs), the test metrics, per-class precision/recall/F1, the confusion
    matrix, calibration (reliability before and after temperature scaling), the most confident
    mistakes with Grad-CAM for the predicted and the true class, and the checked exports.
    An imported run (IMPORTED_SECTIONS) has no configuration or curves of its own: the report
    says what the file was instead, and scores all of `source` (default: the source given at import).
    """
    t0 = time.perf_counter()
    run = Run(Path(run_dir))
    config, history, row = run.config(), run.history(), summary(run)
    imported = is_imported(config)
    shown = _shown(config)
    model = run_model(run)
    target = Path(out).expanduser() if out else run.path / "report.html"
    if target.is_dir():
        raise ExportError(f"{target} is a folder; give the report a file name, such as report.html")
    result = None
    # a run trained without a test split is reported on validation; an imported one on all of its data
    for split in (None,) if imported or source else ("test", "validation"):
        try:
            result = evaluate(run, source, split=split, model=model, progress=progress)
            break
        except ConvScopeError as exc:
            why = str(exc)
    if result is None:
        raise ExportError(f"{run.name} cannot be reported: {why}")
    data_source = source_title(result.data.source)
    names, m = result.class_names, result.metrics
    parts: dict[str, str] = {}

    sizes = config.get("split_sizes", {})
    parts["Data"] = _table(
        [
            ["source", data_source],
            *([["images scored", f"{m['count']} ({result.data.split})"]] if imported else []),
            ["classes", ", ".join(names)],
            *[[f"{split} images", n] for split, n in sizes.items()],
            ["image size", f"{model.input_size} px ({model.resize_policy})"],
        ]
    )
    strategy = run.metrics().get("strategy") or {}  # how it was trained: engine.training.distribute.describe()
    trained_on = (
        [["trained on", f"{strategy['name']}: {strategy['replicas']} replica(s), {strategy['workers']} worker(s)"]]
        if strategy
        else []
    )
    parts["Configuration"] = _table(_flatten(shown) + trained_on, ["setting", "value"])
    params = row.get("params")
    parts["Imported model"] = _table(_imported_rows(config, params), ["fact", "value"]) if imported else ""
    parent_epochs = (config.get("finetune") or {}).get("parent_epochs", 0)
    if parent_epochs:
        before = {k: v[:parent_epochs] for k, v in history.items()}
        after = {k: v[parent_epochs:] for k, v in history.items()}
        curves = charts.finetune_curves(before, after)
    else:
        curves = charts.training_curves(history, len(history.get("loss", [])))
    parts["Training curves"] = _figure(curves)
    parts[TIMELINE] = _timeline(run, history)
    parts["Metrics"] = _table(
        [
            [f"{result.data.split} images", m["count"]],
            ["accuracy", _pct(m["accuracy"])],
            [f"top-{m['top_k']} accuracy", _pct(m["top_k_accuracy"])],
            *([] if imported else [["best validation accuracy", _pct(row.get("best_val_accuracy"))]]),
            ["expected calibration error", f"{result.ece:.3f}"],
            ["parameters", _params(params)],
            *(
                []
                if imported
                else [["latency per image", f"{row['latency_ms']:.1f} ms" if row.get("latency_ms") else ""]]
            ),
        ]
    )
    per_class = m["per_class"]
    parts["Per class"] = _table(
        [
            [c, f"{v['precision']:.2f}", f"{v['recall']:.2f}", f"{v['f1']:.2f}", v["support"]]
            for c, v in per_class.items()
        ],
        ["class", "precision", "recall", "F1", "images"],
    ) + _figure(charts.per_class_bars(per_class))
    parts["Confusion matrix"] = _figure(
        charts.confusion_matrix(m["confusion_matrix"], names, f"{result.data.split.capitalize()} split")
    )
    fitted_on = "a validation split ConvScope made of the data" if imported else "the validation split"
    parts["Calibration"] = _figure(
        charts.reliability_diagram(result.reliability, result.reliability_calibrated, result.temperature)
    ) + (f"<p>Temperature fitted on {fitted_on}: {result.temperature:.2f}; "
         f"ECE {result.ece:.3f} → {result.ece_calibrated:.3f}.</p>" if result.temperature else "")  # fmt: skip

    worst = result.mistake_indices()[:MISTAKES]
    if len(worst):
        images = np.stack([load_resized(result.data.paths[k], model.input_size, model.resize_policy) for k in worst])
        x = images.astype(np.float32)
        predicted = [int(result.predicted[k]) for k in worst]
        true = [int(result.labels[k]) for k in worst]
        fraction = (lambda f: progress("maps", round(100 * f), 100)) if progress else None
        maps = heatmaps(model, np.concatenate([x, x]), predicted + true, progress=fraction)
        cards = []
        for i, k in enumerate(worst):
            r = result.row(int(k), "relative")
            cards.append(
                f"<figure><img src='{_png(overlay(images[i], maps[i], 0.5))}' alt='predicted'>"
                f"<img src='{_png(overlay(images[i], maps[len(worst) + i], 0.5))}' alt='true'>"
                f"<figcaption><b>{html.escape(r['predicted'])}</b> {r['probability']:.0%}, truly "
                f"<b>{html.escape(r['true'])}</b><br><span class='muted'>{html.escape(r['image'])}<br>"
                "Grad-CAM: predicted class, then true class</span></figcaption></figure>"
            )
        parts["Most confident mistakes"] = "<div class='grid'>" + "".join(cards) + "</div>"
    else:
        parts["Most confident mistakes"] = f"<p>No mistakes on the {result.data.split} images.</p>"

    stat = run.model_path.stat()
    exports = {
        f: e for f, e in checked_exports(run.path).items() if e.get("model") == f"{stat.st_mtime_ns}:{stat.st_size}"
    }
    if exports:
        rows = [
            [fmt, f"{e['bytes'] / 1e6:.1f} MB", _pct(e.get("agreement")), f"{e.get('max_abs_diff', 0):.2g}",
             _pct(e.get("accuracy")), f"{e.get('latency_ms', 0):.1f} ms", f"{e.get('latency_ms_keras', 0):.1f} ms"]
            for fmt, e in exports.items()
        ]  # fmt: skip
        header = ["format", "size", "top-1 agreement", "max prob. diff", "accuracy", "latency", "Keras latency"]
        warnings = "".join(
            f"<p class='warn'>{html.escape(e['warning'])}</p>" for e in exports.values() if e.get("warning")
        )
        parts["Exports"] = _table(rows, header) + warnings
    else:
        parts["Exports"] = (
            "<p class='muted'>No export checked yet (Runs page, or <code>python -m engine export</code>).</p>"
        )

    title = html.escape(run.display_name() or run.name)
    sections = IMPORTED_SECTIONS if imported else SECTIONS
    body = "".join(f"<section id='{s.lower().replace(' ', '-')}'><h2>{s}</h2>{parts[s]}</section>" for s in sections)
    file = (config.get("imported") or {}).get("file", "")
    if imported:
        what = f"an imported model ({file}, trained outside ConvScope)"
    elif file:  # a fine-tune of an imported model: no backbone of ConvScope's
        what = f"{config.get('mode', '')} of an imported model ({file})"
    else:
        what = f"{config.get('backbone', '')} · {config.get('mode', '')}"
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>ConvScope report: {title}</title>"
        f"<style>{STYLE}</style><script>{get_plotlyjs()}</script></head><body>"
        f"<h1>{title}</h1><p class='muted'>{html.escape(what)}"
        f" · written {time.strftime('%Y-%m-%d %H:%M')} by ConvScope</p>{body}</body></html>"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(target)  # never a half-written report
    return {"path": str(target), "bytes": target.stat().st_size, "sections": list(sections),
            "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
