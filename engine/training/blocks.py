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


def block_names(model, blocks: tuple[str, ...], last_backbone_layer: str | None, ends: bool = False) -> list[str]:
    """The block of every layer of `model`, in `model.layers` order (the InputLayer is `stem`).

    With `ends`, the layer named exactly as a block closes it: the layers since the previous
    block's end belong to it (InceptionV3: the convolutions of a module, then its `mixedK`).
    """
    out: list[str] = []
    current = STEM
    in_head = False
    pending = 0  # with `ends`: layers waiting for the block that closes them
    # Longest prefix first, so `block1` does not claim `block10_...` where both exist.
    by_length = sorted(blocks, key=len, reverse=True)
    for layer in model.layers:
        if in_head:
            out.append(HEAD)
            continue
        if ends:  # the exact closing layer: `mixed9_0` inside a module must not close block `mixed9`
            match = layer.name if layer.name in blocks else None
        else:
            match = next((b for b in by_length if layer.name.startswith(b)), None)
        if ends:
            out.append("")
            pending += 1
            if match is not None:
                out[len(out) - pending :] = [match] * pending
                current, pending = match, 0
        else:
            if match is not None:
                current = match
            out.append(current)
        if last_backbone_layer is not None and layer.name == last_backbone_layer:
            in_head = True
    # with `ends`, layers after the last block's end and before the head stay with that block
    return [name or current for name in out]


def for_spec(model, spec) -> list[Block]:
    """`group()` with a backbone spec's blocks."""
    return group(model, spec.finetune_blocks, spec.last_conv_layer, spec.blocks_end)


def group(model, blocks: tuple[str, ...], last_backbone_layer: str | None, ends: bool = False) -> list[Block]:
    """Consecutive layers of the same block, in order: stem, the spec's blocks, head."""
    names = block_names(model, blocks, last_backbone_layer, ends)
    out: list[Block] = []
    start = 0
    for i in range(1, len(names) + 1):
        if i == len(names) or names[i] != names[start]:
            layer_names = tuple(model.layers[k].name for k in range(start, i))
            out.append(Block(names[start], start, i - 1, layer_names))
            start = i
    return out
