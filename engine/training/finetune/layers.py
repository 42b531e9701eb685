"""What trains in a fine-tune: the classifier's blocks, the first layer that trains, the layer map and counts.

Indices count `nested.units(model)`: `model.layers` for a flat classifier, a nested model's layers in its
place for an imported one. A model without a backbone (`backbone == ""`: imported) has no blocks.
"""

from __future__ import annotations

import math

from engine import backbones
from engine.config import FinetuneConfig
from engine.training import blocks as blocks_mod
from engine.training.finetune.nested import TWO_LOGITS, block_of, first_unit, units
from engine.training.finetune.parent import FinetuneError

NO_BLOCKS = "an imported model has no backbone blocks; unfreeze it from a layer name, a layer index, or head"


def block_rows(rows: list[dict]) -> list[dict]:
    """layer_map() rows summed per block, in order: {"block", "layers", "trainable", "frozen"} parameters."""
    out: list[dict] = []
    for row in rows:
        if not out or out[-1]["block"] != row["block"]:
            out.append({"block": row["block"], "layers": 0, "trainable": 0, "frozen": 0})
        out[-1]["layers"] += 1
        out[-1]["trainable" if row["trainable"] else "frozen"] += row["params"]
    return out


def model_blocks(model, backbone: str) -> list[blocks_mod.Block]:
    """The classifier's layers grouped: stem, the backbone's blocks, head.

    Raises:
        FinetuneError: an imported model (no backbone, so no blocks).
    """
    if not backbone:
        raise FinetuneError(NO_BLOCKS)
    spec = backbones.get_spec(backbone)
    return blocks_mod.for_spec(model, spec)


def first_trainable(model, backbone: str, ft: FinetuneConfig) -> int:
    """Index into nested.units(model) (model.layers for a flat classifier) of the first layer that trains.

    Raises:
        FinetuneError: an unknown block or layer, or more blocks than the backbone has.
    """
    if not backbone:
        return first_unit(model, ft)
    groups = model_blocks(model, backbone)
    backbone_blocks = [b for b in groups if b.name not in (blocks_mod.STEM, blocks_mod.HEAD)]
    head = next(b for b in groups if b.name == blocks_mod.HEAD)
    names = ", ".join(b.name for b in backbone_blocks)
    if ft.unfreeze_top:
        if ft.unfreeze_top > len(backbone_blocks):
            raise FinetuneError(
                f"{backbone} has {len(backbone_blocks)} blocks ({names}); cannot unfreeze the top {ft.unfreeze_top}"
            )
        return backbone_blocks[-ft.unfreeze_top].first
    where = ft.unfreeze_from.strip()
    if where == blocks_mod.HEAD:
        return head.first
    if where.removeprefix("-").isdecimal():  # a layer index as the recipes count it; negative: from the backbone's end
        index = int(where) if not where.startswith("-") else head.first + int(where)
        if not 1 <= index <= head.first:
            raise FinetuneError(f"layer index {index} is outside the backbone (1..{head.first - 1})")
        return index
    for block in backbone_blocks:
        if block.name == where:
            return block.first
    for i, layer in enumerate(model.layers):
        if layer.name == where:
            if i >= head.first:
                raise FinetuneError(f"{where} is in the head, which trains anyway; name a backbone block or layer")
            return max(i, 1)
    raise FinetuneError(f"no block or layer named {where!r} in {backbone}; its blocks are {names}")


def _is_bn(layer) -> bool:
    import keras  # heavy: TensorFlow loads in seconds; only commands that need it pay

    return isinstance(layer, keras.layers.BatchNormalization)


def _would_train(layer, index: int, first: int, bn: str) -> bool:
    # an imported single logit's two_logits layer is a fixed map, never trained
    return index >= first and not (bn == "frozen" and _is_bn(layer)) and layer.name != TWO_LOGITS


def _potential(layer) -> tuple[int, int]:
    """(trainable-if-unfrozen, always non-trainable) parameter counts of one layer."""
    # Layer._trainable_variables lists the variables that train when the layer does, whatever its
    # flag now (a loaded backbone is frozen); BatchNorm's moving statistics are never among them.
    train = sum(math.prod(v.shape) for v in layer._trainable_variables)
    total = sum(math.prod(v.shape) for v in layer.weights)
    return int(train), int(total - train)


def counts(model, first: int, bn: str = "frozen") -> dict:
    """{"trainable", "non_trainable", "total"} parameters if the layers from `first` up trained (no mutation)."""
    trainable = non_trainable = 0
    for i, layer in enumerate(u.layer for u in units(model)):
        train, fixed = _potential(layer)
        if _would_train(layer, i, first, bn):
            trainable += train
            non_trainable += fixed
        else:
            non_trainable += train + fixed
    return {"trainable": trainable, "non_trainable": non_trainable, "total": trainable + non_trainable}


def layer_map(model, backbone: str, first: int, bn: str = "frozen") -> list[dict]:
    """Every layer with its block, type, output shape, parameters and whether it would train (no mutation).

    An imported model's nested layers are named "outer/inner" and grouped by their nested model.
    """
    if backbone:
        spec = backbones.get_spec(backbone)
        names = blocks_mod.block_names(model, spec.finetune_blocks, spec.last_conv_layer, spec.blocks_end)
    else:
        names = block_of(model)
    rows = []
    for i, unit in enumerate(units(model)):
        layer = unit.layer
        train, fixed = _potential(layer)
        rows.append(
            {
                "index": i,
                "layer": unit.name,
                "block": names[i],
                "type": type(layer).__name__,
                "output_shape": str(tuple(layer.output.shape)),
                "params": train + fixed,
                "trainable": bool(_would_train(layer, i, first, bn) and train),
            }
        )
    return rows


def unfreeze(model, first: int, bn: str = "frozen") -> None:
    """Set the trainable flags of `model` (a private copy): layers from `first` up train, BN per `bn`.

    A nested model stays trainable itself (Keras collects its layers' weights only then); its layers
    get their own flags. A BatchNormalization layer with trainable=False runs in inference mode (Keras 3).
    """
    model.trainable = True  # sets every layer, nested ones included; each is then set below
    for i, unit in enumerate(units(model)):
        unit.layer.trainable = _would_train(unit.layer, i, first, bn)
