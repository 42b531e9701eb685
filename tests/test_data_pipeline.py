"""tf.data pipeline, resize policies and augmentation layers."""

import numpy as np
import pytest

import datafactory as f
from engine.config import AugmentConfig, DataConfig
from engine.data import pipeline
from engine.data.sources import open_dataset
from engine.data.splits import split_items
from engine.errors import ConfigError


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONVSCOPE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield open_dataset("shapes:per_class=6,classes=3,size=64")


def test_batches_have_the_right_shape_and_labels(small_shapes):
    ds = small_shapes
    splits = split_items(ds.items, 0)
    tfd = pipeline.make_tf_dataset(ds, splits["train"], 48, batch_size=4)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in tfd], strict=True)
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert x.shape == (len(splits["train"]), 48, 48, 3) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 255
    assert list(y) == [i.label for i in splits["train"]]  # no shuffle: same order


def test_each_epoch_sees_new_augmented_views(small_shapes):
    ds = small_shapes
    tfd = pipeline.make_tf_dataset(
        ds, ds.items[:4], 32, batch_size=4, augment=AugmentConfig(rotation=0.2, contrast=0.3), seed=1
    )
    first, second = (next(iter(tfd))[0].numpy() for _ in range(2))
    plain = next(iter(pipeline.make_tf_dataset(ds, ds.items[:4], 32, batch_size=4)))[0].numpy()
    assert not np.allclose(first, plain) and not np.allclose(first, second)


def test_augmented_views_are_the_same_for_the_same_seed(small_shapes):
    """The random layers draw in batch order: the same seed gives the same views (and cached features) again."""
    ds = small_shapes
    config = AugmentConfig(flip="horizontal", rotation=0.2, zoom=0.2, contrast=0.3)

    def views(seed: int) -> np.ndarray:
        tfd = pipeline.make_tf_dataset(ds, ds.items, 32, batch_size=2, augment=config, seed=seed, cache=False)
        return np.concatenate([x.numpy() for x, _ in tfd])

    first = views(5)
    assert np.array_equal(first, views(5)) and not np.allclose(first, views(6))


def test_shuffle_is_seeded(small_shapes):
    ds = small_shapes
    order = [
        np.concatenate([y.numpy() for _, y in pipeline.make_tf_dataset(ds, ds.items, 16, shuffle=True, seed=s)])
        for s in (3, 3, 4)
    ]
    assert list(order[0]) == list(order[1]) and list(order[0]) != list(order[2])


@pytest.mark.parametrize("policy", ["stretch", "crop", "pad"])
def test_resize_policies(tmp_path, policy):
    path = f.write(tmp_path / "wide.png", f.png_bytes(1, 32))
    from PIL import Image

    Image.open(path).resize((64, 32)).save(path)
    out = pipeline.load_resized(str(path), 16, policy)
    assert out.shape == (16, 16, 3)
    if policy == "pad":
        assert out[:3].max() == 0 and out[-3:].max() == 0  # black bars above and below


def test_preview_views():
    rgb = f.rgb(3, 40)
    off = pipeline.preview(rgb, AugmentConfig(), n=3, size=32)
    assert len(off) == 3 and all(np.array_equal(v, off[0]) for v in off)
    on = pipeline.preview(rgb, AugmentConfig(flip="horizontal", rotation=0.3, zoom=0.2), n=4, size=32, seed=0)
    assert all(v.shape == (32, 32, 3) and v.dtype == np.uint8 for v in on)
    assert len({v.tobytes() for v in on}) > 1


def test_augment_config_parsing_and_validation():
    cfg = AugmentConfig.parse("flip=horizontal,rotation=0.1,zoom=0.2")
    assert cfg == AugmentConfig(flip="horizontal", rotation=0.1, zoom=0.2) and cfg.enabled
    assert not AugmentConfig.parse("none").enabled
    for bad, msg in [("flip=sideways", "flip must be"), ("rotation=2", "between 0 and 1"), ("blur=1", "keys")]:
        with pytest.raises(ConfigError, match=msg):
            AugmentConfig.parse(bad)
    layers = pipeline.augmenter(AugmentConfig.parse("flip=vertical,translation=0.1,brightness=0.2,contrast=0.1"))
    assert [type(layer).__name__ for layer in layers.layers] == [
        "RandomFlip",
        "RandomTranslation",
        "RandomContrast",
        "RandomBrightness",
    ]


def test_data_config_round_trip_and_checks():
    cfg = DataConfig(source="shapes", image_size=96, resize="crop", augment=AugmentConfig.standard())
    assert DataConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="resize must be one of"):
        DataConfig(resize="squash")


@pytest.mark.parametrize("batch", [4, 7, 100])
def test_decoded_batches_are_the_files_in_order(small_shapes, batch):
    # the first batch is split over the cores, the rest decoded one ahead: the same images, in order
    paths = [str(small_shapes.root / item.rel) for item in small_shapes.items]
    got = list(pipeline.decoded_batches(paths, 40, batch=batch))
    assert [len(b) for b in got] == [len(paths[k : k + batch]) for k in range(0, len(paths), batch)]
    expected = np.stack([pipeline.load_resized(p, 40) for p in paths]).astype(np.float32)
    np.testing.assert_array_equal(np.concatenate(got), expected)
    assert list(pipeline.decoded_batches([], 40)) == []
