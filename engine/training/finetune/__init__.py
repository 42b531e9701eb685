"""Fine-tuning a finished run: unfreeze the backbone from a block boundary and train on.

A fine-tune starts from its parent run's saved classifier (a feature-mode run, an imported Keras
model, or an earlier fine-tune): the same head and weights. Layers from the unfreeze point up train; everything
below stays frozen, and BatchNormalization stays in inference mode unless asked (`bn="train"`).
Epochs continue the parent's count, and the run's history starts with the parent's, so one
chart shows both phases.

The package, by what each module owns:
- parent:   the fine-tune's config, its parent run and the parent's data and split;
- layers:   what trains: the classifier's blocks, the first layer that trains, the layer map;
- nested:   layers with nested models opened ("base_model/block2_conv"), where an imported model
            (engine.importing: no backbone, so no blocks) starts training;
- boundary: the classifier cut at the unfreeze point and the cache of the tensors crossing it;
- schedule: warm-up + cosine decay, layer-wise rate decay;
- setup:    a private copy of the parent's classifier, unfrozen, with its batches, handed to
            the one training loop (engine.training.loop).
The learning-rate finder is engine.training.lr_finder.lr_find; what a fine-tune changed,
engine.training.changes.what_changed.

Pages, ui and the CLI use the names below as `finetune.NAME`.
"""

from engine.config import FinetuneConfig
from engine.training.finetune.boundary import BoundaryOverflow, Split, boundary_budget_bytes, boundary_plan, split
from engine.training.finetune.layers import (
    block_rows,
    counts,
    first_trainable,
    layer_map,
    model_blocks,
    unfreeze,
)
from engine.training.finetune.nested import Unit, base_of, units
from engine.training.finetune.parent import (
    FinetuneError,
    check_data,
    finetune_config,
    load_classifier,
    open_data,
    parent_of,
    probe_set,
    settings_of,
)
from engine.training.finetune.schedule import decay_multipliers, make_optimizer

__all__ = [
    "BoundaryOverflow",
    "FinetuneConfig",
    "FinetuneError",
    "Split",
    "Unit",
    "base_of",
    "block_rows",
    "boundary_budget_bytes",
    "boundary_plan",
    "check_data",
    "counts",
    "decay_multipliers",
    "finetune_config",
    "first_trainable",
    "layer_map",
    "load_classifier",
    "make_optimizer",
    "open_data",
    "model_blocks",
    "parent_of",
    "probe_set",
    "settings_of",
    "split",
    "unfreeze",
    "units",
]
