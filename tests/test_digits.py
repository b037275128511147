"""specdyn.data.digits against scikit-learn's raw digits."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.datasets import load_digits  # noqa: E402

from specdyn import data  # noqa: E402


def test_split_standardization_and_targets():
    d = data.digits(test_fraction=0.25, seed=3)
    raw, labels = load_digits(return_X_y=True)
    assert d.X_train.shape == (1348, 64) and d.X_test.shape == (449, 64)
    assert d.Y_train.shape == (1348, 10)
    # standardized on the training set: mean 0, std 1 (or 0 for a pixel constant on it)
    np.testing.assert_allclose(d.X_train.mean(0), 0.0, atol=1e-12)
    std = d.X_train.std(0)
    assert np.all((np.abs(std - 1) < 1e-12) | (std == 0))
    # every image is used once: undo the standardization and match the raw rows
    X = np.concatenate([d.X_train, d.X_test])
    L = np.concatenate([d.labels_train, d.labels_test])
    assert sorted(np.bincount(L)) == sorted(np.bincount(labels))
    order = np.random.default_rng(3).permutation(labels.size)
    np.testing.assert_array_equal(L, labels[order])
    train_raw = raw[order[:1348]]
    scale = np.where(train_raw.std(0) > 0, train_raw.std(0), 1.0)
    np.testing.assert_allclose(X * scale + train_raw.mean(0), raw[order], atol=1e-10)
    np.testing.assert_array_equal(d.Y_train.argmax(1), d.labels_train)
    np.testing.assert_array_equal(d.Y_train.sum(1), 1.0)


def test_centered_targets_deterministic_and_dtype():
    a = data.digits(seed=5, targets="centered", dtype="float32")
    b = data.digits(seed=5, targets="centered", dtype="float32")
    c = data.digits(seed=6)
    assert a.X_train.dtype == np.float32
    np.testing.assert_array_equal(a.X_train, b.X_train)
    assert not np.array_equal(a.labels_train, c.labels_train)
    np.testing.assert_allclose(a.Y_train.sum(1), 0.0, atol=1e-6)
    np.testing.assert_array_equal(a.Y_train.argmax(1), a.labels_train)


@pytest.mark.parametrize("kwargs,match", [(dict(test_fraction=1.0), "test_fraction"),
                                          (dict(targets="labels"), "targets"), (dict(seed=-1), "seed"),
                                          (dict(dtype="int8"), "dtype")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.digits(**kwargs)


def test_named_digits_for_a_run():
    X, Y = data.named("digits", samples=100, input_dim=64, output_dim=10, seed=2)
    d = data.digits(seed=2, targets="centered")
    np.testing.assert_array_equal(X, d.X_train[:100])
    np.testing.assert_array_equal(Y, d.Y_train[:100])
    with pytest.raises(ValueError, match="input_dim must be 64"):
        data.named("digits", samples=100, input_dim=8, output_dim=10)
    with pytest.raises(ValueError, match="samples"):
        data.named("digits", samples=5000, input_dim=64, output_dim=10)
    with pytest.raises(ValueError, match="data"):
        data.named("mnist", samples=10, input_dim=64, output_dim=10)


# ---- data = "digits" in a run config, through `specdyn run` -------------------------------
TOML = """
[run]
data = "digits"
data_seed = 4
input_dim = 64
output_dim = 10
samples = 48
width = 24
depth = 2
activation = "tanh"
steps = 3
top_k = 2
"""


def test_specdyn_run_trains_on_digits(tmp_path):
    import specdyn
    from typer.testing import CliRunner

    from specdyn.cli import app

    config = tmp_path / "digits.toml"
    config.write_text(TOML)
    res = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "run.zarr"), "--no-progress"])
    assert res.exit_code == 0, res.output
    got = specdyn.storage.load(tmp_path / "run.zarr")
    cfg = specdyn.RunConfig.from_toml(config)
    assert cfg.data == "digits" and specdyn.RunConfig.from_json(got.attrs["config"]) == cfg
    # the reference: the same network trained on the arrays built here from scikit-learn's digits
    raw, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(4).permutation(labels.size)
    train = order[: labels.size - 449]
    mean, std = raw[train].mean(0), raw[train].std(0)
    X = (raw[train[:48]] - mean) / np.where(std > 0, std, 1.0)
    Y = np.eye(10)[labels[train[:48]]] - 0.1
    ref = specdyn.simulate(cfg.replace(data="teacher"), data=(X, Y))
    for name in ("loss", "singular_values", "delta_singular_values", "normalized_sharpness"):
        np.testing.assert_allclose(got[name].values, ref[name].values, rtol=1e-10, atol=1e-14, err_msg=name)
    # the teacher would have given another run
    assert not np.allclose(specdyn.simulate(cfg.replace(data="teacher")).loss.values, got.loss.values)


@pytest.mark.parametrize("changes,match", [
    (dict(input_dim=8), "input_dim must be 64"), (dict(output_dim=1), "output_dim must be 10"),
    (dict(samples=1349), r"samples must be in \[1, 1348\]"), (dict(online=True), "online must be false"),
    (dict(data="mnist"), "data must be one of 'teacher', 'digits'"),
])
def test_digits_config_is_checked_before_any_work(changes, match):
    import specdyn

    base = dict(data="digits", input_dim=64, output_dim=10, samples=32, width=8, track_sharpness=False)
    with pytest.raises(ValueError, match=match):
        specdyn.RunConfig(**{**base, **changes})


def test_digits_config_refuses_arrays_and_cli_reports_bad_fields(tmp_path):
    import specdyn
    from typer.testing import CliRunner

    from specdyn.cli import app

    cfg = specdyn.RunConfig(data="digits", input_dim=64, output_dim=10, samples=16, width=8, steps=1)
    with pytest.raises(ValueError, match="data must be None"):
        specdyn.simulate(cfg, data=(np.zeros((16, 64)), np.zeros((16, 10))))
    config = tmp_path / "bad.toml"
    config.write_text(TOML.replace("input_dim = 64", "input_dim = 63"))
    res = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "bad.zarr")])
    assert res.exit_code != 0 and "input_dim must be 64" in res.output
    assert not (tmp_path / "bad.zarr").exists()
