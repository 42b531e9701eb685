"""Layers as a fine-tune sees them, nested models opened: and where an imported model starts training.

A classifier ConvScope trained is flat, so its layers are `model.layers`. A model brought from a
notebook (engine.importing) usually holds its backbone as a nested model (the TensorFlow
tutorial's `base_model`), which Keras lists as one layer. `units()` lists every layer in order,
a nested model's own layers in its place, named as the layer browser names them
("base_model/block2_conv"); for a flat model it is exactly `model.layers`.

An imported model has no backbone spec, so no blocks: training starts at a layer name, a layer
index (into the nested base's layers when one nested model holds the weights, as the tutorial's
`base_model.layers[fine_tune_at:]`; else into `model.layers`) or `head` (what follows the base).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.config import FinetuneConfig
from engine.errors import FinetuneError
from engine.model.explainable import TWO_LOGITS, is_model

SHOWN_NAMES = 12  # layer names an error lists


@dataclass(frozen=True)
class Unit:
    """One layer in fine-tune order: its name ("layer" or "outer/inner"), the layer, its nested model's name."""

    name: str
    layer: object
    outer: str  # the nested model holding it, "" for a top-level layer


def _is_input(layer) -> bool:
    return type(layer).__name__ == "InputLayer"


def units(model) -> list[Unit]:
    """Every layer in order, a nested model's layers (its InputLayer left out) in the nested model's place."""
    out = []
    for layer in model.layers:
        if is_model(layer):
            inner = [x for x in layer.layers if not _is_input(x)]
            out += [Unit(f"{layer.name}/{x.name}", x, layer.name) for x in inner]
        else:
            out.append(Unit(layer.name, layer, ""))
    return out


def base_of(model):
    """The nested model holding the weights (the tutorial's `base_model`), or None (none, or several)."""
    nested = [layer for layer in model.layers if is_model(layer) and layer.weights]
    return nested[0] if len(nested) == 1 else None


def _spatial(layer) -> bool:
    try:
        return len(layer.output.shape) == 4
    except (AttributeError, ValueError):
        return False


def head_start(model) -> int:
    """Index into units() of the first layer after the base (after the last feature-map layer without one)."""
    rows = units(model)
    base = base_of(model)
    if base is not None:
        last = max(i for i, u in enumerate(rows) if u.outer == base.name)
    else:
        last = max((i for i, u in enumerate(rows) if _spatial(u.layer)), default=0)
    return last + 1


def _names(rows: list[Unit]) -> str:
    names = [u.name for u in rows if not _is_input(u.layer)]
    more = f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else ""
    return ", ".join(names[:SHOWN_NAMES]) + more


def first_unit(model, ft: FinetuneConfig) -> int:
    """Index into units(model) of the first layer that trains, for an imported model.

    Raises:
        FinetuneError: blocks asked for, an unknown layer, an index out of range, or the frozen two_logits.
    """
    if ft.unfreeze_top:
        raise FinetuneError(
            "an imported model has no backbone blocks, so --unfreeze-top does not apply: "
            "unfreeze from a layer name (as the layer list names it), a layer index, or head"
        )
    rows = units(model)
    where = ft.unfreeze_from.strip()
    if where == "head":
        return min(head_start(model), len(rows) - 1)
    if where.removeprefix("-").isdecimal():
        return _by_index(model, rows, int(where))
    for i, unit in enumerate(rows):
        if unit.name == where and not _is_input(unit.layer):
            if unit.name == TWO_LOGITS:
                raise FinetuneError(f"{TWO_LOGITS} turns the model's one logit into two and stays frozen")
            return i
    for i, unit in enumerate(rows):  # a nested model's own name: from its first layer
        if unit.outer == where:
            return i
    raise FinetuneError(f"no layer named {where!r} in {model.name}; its layers are {_names(rows)}")


def _by_index(model, rows: list[Unit], index: int) -> int:
    """An index into the base's layers (the tutorial's fine_tune_at) or, without one base, into model.layers."""
    base = base_of(model)
    layers, where = (base.layers, f"{base.name}.layers") if base is not None else (model.layers, "model.layers")
    k = index + len(layers) if index < 0 else index
    if not 0 <= k < len(layers):
        raise FinetuneError(f"layer index {index} is outside {where} (0..{len(layers) - 1}, or -1..-{len(layers)})")
    layer = layers[k]
    if base is not None:
        if _is_input(layer):
            return next(i for i, u in enumerate(rows) if u.outer == base.name)
        return next(i for i, u in enumerate(rows) if u.outer == base.name and u.layer is layer)
    if is_model(layer):
        return next(i for i, u in enumerate(rows) if u.outer == layer.name)
    if layer.name == TWO_LOGITS:
        raise FinetuneError(f"{TWO_LOGITS} turns the model's one logit into two and stays frozen")
    return next(i for i, u in enumerate(rows) if u.layer is layer)


def block_of(model) -> list[str]:
    """The group each unit is shown in: its nested model's name, else `stem` before the base, `head` after."""
    rows = units(model)
    head = head_start(model)
    return [u.outer or ("head" if i >= head else "stem") for i, u in enumerate(rows)]
