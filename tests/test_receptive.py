"""Receptive fields: hand-computed on small graphs, and checked against input gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from engine.explain import ExplainError
from engine.explain.receptive import Field, receptive_field

L = keras.layers


def _chain() -> keras.Model:
    """Conv 3x3 valid -> MaxPool 2/2 -> Conv 3x3 same -> Conv 5x5 stride 2 same, on 32 px."""
    x = keras.Input((32, 32, 3))
    a = L.Conv2D(4, 3, name="c1")(x)  # 30
    b = L.MaxPooling2D(2, name="p1")(a)  # 15
    c = L.Conv2D(4, 3, padding="same", name="c2")(b)  # 15
    d = L.Conv2D(4, 5, strides=2, padding="same", name="c3")(c)  # 8
    e = L.ReLU(name="relu")(L.BatchNormalization(name="bn")(d))
    return keras.Model(x, e, name="chain")


# (size, jump, start) by hand; `first` is the first input pixel of position 0 (start - (size - 1) / 2):
# c1: pixels 0..2. p1: positions 0..1 of c1 -> pixels 0..3, jump 2.
# c2: 'same' on 15, k 3: pads 1 before -> positions -1..1 of p1 -> pixels -2..5.
# c3: 'same' on 15, k 5, s 2: pad_total = (8 - 1) * 2 + 5 - 15 = 4, 2 before -> positions -2..2 of c2
#     -> pixels -2 - 2*2 .. 5 + 2*2 = -6..9 (size 16), jump 4.
CHAIN = {
    "c1": (3, 1, 1.0),
    "p1": (4, 2, 1.5),
    "c2": (8, 2, 1.5),
    "c3": (16, 4, 1.5),
    "bn": (16, 4, 1.5),
    "relu": (16, 4, 1.5),
}


@pytest.mark.parametrize("layer", list(CHAIN))
def test_chain_by_hand(layer):
    size, jump, start = CHAIN[layer]
    assert receptive_field(_chain(), layer) == Field(size, jump, start)


def test_box_and_centre_clip_to_the_image():
    field = Field(16, 4, 1.5)  # c3 above
    assert field.centre(0, 0) == (1.5, 1.5)
    assert field.centre(2, 3) == (9.5, 13.5)
    assert field.box(0, 0, 32) == (0, 0, 10, 10)  # -6..9, clipped at 0
    assert field.box(2, 3, 32) == (2, 6, 18, 22)  # 2..17 and 6..21: not clipped
    assert field.box(7, 7, 32) == (22, 22, 32, 32)  # 22..37, clipped at 32
    assert Field(3, 1, 1.0).box(0, 0, 32) == (0, 0, 3, 3)
    assert Field(4, 2, 1.5).box(1, 2, 32) == (2, 4, 6, 8)


def test_zero_padding_and_cropping_shift_the_start():
    x = keras.Input((16, 16, 3))
    p = L.ZeroPadding2D(((1, 2), (3, 0)), name="pad")(x)
    c = L.Conv2D(2, 3, name="conv")(p)
    s = L.ZeroPadding2D(1)(x)
    s = L.Conv2D(2, 3, strides=2, name="strided")(s)
    k = L.Cropping2D(((2, 0), (0, 1)), name="crop")(x)
    k = L.Conv2D(2, 3, name="after_crop")(k)
    model = keras.Model(x, [c, s, k])
    assert receptive_field(model, "pad") == Field(1, 1, -1.0, width=(1, 1, -3.0))
    # Rows: padded position 0 is pixel -1, so the conv sees -1..1; columns: -3..-1.
    assert receptive_field(model, "conv") == Field(3, 1, 0.0, width=(3, 1, -2.0))
    assert receptive_field(model, "conv").box(0, 0, 16) == (0, 0, 2, 0)
    assert receptive_field(model, "strided") == Field(3, 2, 0.0)
    assert receptive_field(model, "crop") == Field(1, 1, 2.0, width=(1, 1, 0.0))
    assert receptive_field(model, "after_crop") == Field(3, 1, 3.0, width=(3, 1, 1.0))


def test_add_takes_the_union_of_its_branches():
    x = keras.Input((32, 32, 3))
    a = L.Conv2D(4, 1, name="a")(x)
    b = L.Conv2D(4, 3, padding="same", name="b1")(x)
    b = L.Conv2D(4, 3, padding="same", name="b2")(b)
    add = L.Add(name="add")([a, b])
    cat = L.Concatenate(name="cat")([a, add])
    # Branches whose centres differ: the field covers both (pixel i and pixel i + 2).
    left = L.Cropping2D(((0, 2), (0, 2)))(x)
    right = L.Cropping2D(((2, 0), (2, 0)))(x)
    shifted = L.Average(name="shifted")([left, right])
    model = keras.Model(x, [cat, shifted])
    assert receptive_field(model, "a") == Field(1, 1, 0.0)
    assert receptive_field(model, "b2") == Field(5, 1, 0.0)
    assert receptive_field(model, "add") == Field(5, 1, 0.0)
    assert receptive_field(model, "cat") == Field(5, 1, 0.0)
    assert receptive_field(model, "shifted") == Field(3, 1, 1.0)


def test_squeeze_excite_branch_is_left_out():
    x = keras.Input((32, 32, 3))
    f = L.Conv2D(8, 3, padding="same", name="conv")(x)
    s = L.GlobalAveragePooling2D()(f)
    s = L.Reshape((1, 1, 8))(s)
    s = L.Conv2D(8, 1, activation="sigmoid")(s)
    m = L.Multiply(name="excite")([f, s])
    model = keras.Model(x, m)
    assert receptive_field(model, "excite") == receptive_field(model, "conv") == Field(3, 1, 0.0)


def test_nested_backbone_composes_with_the_outer_graph():
    inner = _chain()
    x = keras.Input((36, 36, 3))
    y = L.Cropping2D(2, name="outer_crop")(x)  # the backbone sees pixels 2..33 of the outer input
    y = inner(y)
    y = L.GlobalAveragePooling2D()(y)
    model = keras.Model(x, L.Dense(3)(y))
    assert receptive_field(model, "chain/c1") == Field(3, 1, 3.0)
    assert receptive_field(model, "chain/c3") == Field(16, 4, 3.5)
    assert receptive_field(model, "chain/relu") == Field(16, 4, 3.5)


def test_unknown_geometry_and_non_spatial_layers_are_refused():
    x = keras.Input((16, 16, 3))
    up = L.UpSampling2D(name="up")(x)
    t = L.Conv2DTranspose(2, 3, strides=2, name="tconv")(x)
    pool = L.MaxPooling2D(2)(x)
    crop = L.Cropping2D(((0, 8), (0, 8)))(x)
    mixed = L.Add(name="mixed")([pool, crop])  # 8x8 both, but 2 and 1 pixels apart
    dense = L.Dense(2, name="dense")(L.GlobalAveragePooling2D()(x))
    model = keras.Model(x, [up, t, mixed, dense])
    with pytest.raises(ExplainError, match="UpSampling2D"):
        receptive_field(model, "up")
    with pytest.raises(ExplainError, match="Conv2DTranspose"):
        receptive_field(model, "tconv")
    with pytest.raises(ExplainError, match="different strides"):
        receptive_field(model, "mixed")
    with pytest.raises(ExplainError, match="not a feature map"):
        receptive_field(model, "dense")
    with pytest.raises(ExplainError, match="no layer"):
        receptive_field(model, "nope")


def _positive_net(dilated: bool) -> keras.Model:
    """A linear net with positive weights: every pixel in a unit's field has a nonzero gradient."""
    init = keras.initializers.RandomUniform(0.1, 1.0, seed=1)
    conv = dict(kernel_initializer=init, bias_initializer="zeros")
    x = keras.Input((48, 48, 3))
    y = L.Conv2D(3, 3, padding="same", **conv)(x)
    y = L.Conv2D(3, 3, strides=2, padding="same", **conv)(y)  # 24
    y = L.AveragePooling2D(2, strides=1, padding="same")(y)  # even 'same' window: padded after
    if dilated:
        y = L.Conv2D(3, 3, padding="same", dilation_rate=2, **conv)(y)
    y = L.DepthwiseConv2D(5, strides=2, padding="same", depthwise_initializer=init)(y)  # 12
    y = L.Conv2D(2, 3, strides=2, padding="valid", name="last", **conv)(y)  # 5
    return keras.Model(x, y)


@pytest.mark.parametrize("dilated", [False, True])
def test_field_matches_the_input_gradient_support(dilated):
    model = _positive_net(dilated)
    field = receptive_field(model, "last")
    x = tf.constant(np.random.default_rng(0).uniform(0, 1, (1, 48, 48, 3)).astype(np.float32))
    h, w = model.output_shape[1:3]
    whole = 0
    for r in range(h):
        for c in range(w):
            with tf.GradientTape() as tape:
                tape.watch(x)
                unit = model(x)[0, r, c, 1]
            support = np.abs(tape.gradient(unit, x).numpy()[0]).sum(-1) > 0
            rows, cols = np.nonzero(support)
            top, left, bottom, right = field.box(r, c, 48)
            # Inside the box, and tight: the support reaches every side of it.
            assert (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1) == (top, left, bottom, right), (r, c)
            if not dilated:  # no holes: every pixel of the box counts
                assert support[top:bottom, left:right].all()
            whole += (bottom - top, right - left) == (field.size, field.size)
    assert 0 < whole < h * w  # some boxes were cut by the image's border, some were not


@pytest.mark.slow
def test_efficientnet_lite0_fields():
    from engine.explain import Explainable

    model = Explainable.from_backbone("efficientnet_lite0").model
    assert receptive_field(model, "stem_activation") == Field(3, 2, 1.0)  # 3x3 stride 2 'same': pixels 0..2
    assert receptive_field(model, "block2a_expand_activation") == Field(7, 2, 1.0)  # + a 3x3 depthwise at jump 2
    top = receptive_field(model, "top_activation")
    assert top.jump == 32 and top.size > 224  # 7x7 grid on 224 px; every unit sees the whole image
    assert receptive_field(model, "top_activation") is top  # cached per (model, layer)
