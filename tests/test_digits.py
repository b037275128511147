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
    with pytest.raises(ValueError, match="input_dim = 64"):
        data.named("digits", samples=100, input_dim=8, output_dim=10)
    with pytest.raises(ValueError, match="samples"):
        data.named("digits", samples=5000, input_dim=64, output_dim=10)
    with pytest.raises(ValueError, match="data"):
        data.named("mnist", samples=10, input_dim=64, output_dim=10)
