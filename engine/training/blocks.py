"""Which block each layer of a classifier belongs to, and where a fine-tune unfreezes.

A backbone spec names its blocks by layer-name prefix, input to output
(`finetune_blocks`: EfficientNet-Lite's `block1` ... `top`, MobileNetV2's
`block_1_` ... `Conv_1`). Walking a flat classifier's layers in order, a layer
whose name starts with a block's prefix opens (or continues) that block; a
layer that matches none stays in the block it follows (`out_relu` after
`Conv_1`); layers before the first block are the `stem`, and every layer after
the backbone's last conv layer (pooling, the head's Dense layers) is the `head`.
"""

from __future__ import annotations

from dataclasses import dataclass

STEM, HEAD = "stem", "head"


@dataclass(frozen=True)
class Block:
    """A run of consecutive layers of a classifier (`first`/`last`: indices into model.layers)."""

    name: str
    first: int
    last: int
    layer_names: tuple[str, ...]


def block_names(model, blocks: tuple[str, ...], last_backbone_layer: str | None) -> list[str]:
    """The block of every layer of `model`, in `model.layers` order (the InputLayer is `stem`)."""
    out: list[str] = []
    current = STEM
    in_head = False
    # Longest prefix first, so `block1` does not claim `block10_...` where both exist.
    by_length = sorted(blocks, key=len, reverse=True)
    for layer in model.layers:
        if in_head:
            out.append(HEAD)
            continue
        match = next((b for b in by_length if layer.name.startswith(b)), None)
        if match is not None:
            current = match
        out.append(current)
        if last_backbone_layer is not None and layer.name == last_backbone_layer:
            in_head = True
    return out


def group(model, blocks: tuple[str, ...], last_backbone_layer: str | None) -> list[Block]:
    """Consecutive layers of the same block, in order: stem, the spec's blocks, head."""
    names = block_names(model, blocks, last_backbone_layer)
    out: list[Block] = []
    start = 0
    for i in range(1, len(names) + 1):
        if i == len(names) or names[i] != names[start]:
            layer_names = tuple(model.layers[k].name for k in range(start, i))
            out.append(Block(names[start], start, i - 1, layer_names))
            start = i
    return out
