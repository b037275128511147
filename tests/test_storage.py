"""specdyn.save / load / completed_groups: exact round trips and the completion marker."""
import json

import numpy as np
import pytest
import xarray as xr
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specdyn import storage
from specdyn.config import RunConfig


def schema_dataset(steps=5, layers=3, k=4, seed=0, status="ok"):
    """A dataset with the names, dims and dtypes of the shared result schema."""
    rng = np.random.default_rng(seed)
    cfg = RunConfig(width=16, depth=layers - 1, top_k=k, steps=steps - 1, seed=seed)
    step = np.arange(steps, dtype=np.int64)
    sv = rng.random((steps, layers, k))
    sv[:, -1, 1:] = np.nan  # the readout has one singular value
    return xr.Dataset(
        {
            "loss": ("step", rng.random(steps)),
            "singular_values": (("step", "layer", "rank"), sv),
            "delta_singular_values": (("step", "layer", "rank"), rng.random((steps, layers, k)).astype(np.float32)),
            "normalized_sharpness": ("step", rng.random(steps)),
            "hessian_top": ("step", np.full(steps, np.nan)),
            "weight_norm": (("step", "layer"), rng.random((steps, layers))),
            "beta_f": (("step", "input"), rng.standard_normal((steps, 8))),
        },
        coords={"step": step, "layer": [f"W{l}" for l in range(layers)], "rank": np.arange(k),
                "input": np.arange(8)},
        attrs={"config": cfg.to_json(), "status": status, "diverged_step": -1, "kind": "simulation",
               "scaling": cfg.scaling, "width": np.int64(cfg.width), "seed": cfg.seed},
    )


def test_round_trip_exact(tmp_path):
    ds = schema_dataset()
    ds["loss"].attrs["units"] = "squared error / 2"
    storage.save(ds, tmp_path / "s.zarr", "runs/a")
    back = storage.load(tmp_path / "s.zarr", "runs/a")
    xr.testing.assert_identical(ds, back)
    for name in ds.variables:
        assert back[name].dtype == ds[name].dtype, name
    assert RunConfig.from_json(back.attrs["config"]) == RunConfig.from_json(ds.attrs["config"])


def test_root_group_and_overwrite(tmp_path):
    store = tmp_path / "one.zarr"
    storage.save(schema_dataset(seed=1), store)
    storage.save(schema_dataset(seed=2), store)  # replaces
    xr.testing.assert_identical(storage.load(store), schema_dataset(seed=2))
    assert storage.completed_groups(store) == [""]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.integers(1, 6), layers=st.integers(2, 4), k=st.integers(1, 3), seed=st.integers(0, 2**31),
       status=st.sampled_from(["ok", "diverged"]))
def test_round_trip_property(tmp_path_factory, steps, layers, k, seed, status):
    store = tmp_path_factory.mktemp("p") / "s.zarr"
    ds = schema_dataset(steps, layers, k, seed, status)
    storage.save(ds, store, "g")
    xr.testing.assert_identical(storage.load(store, "g"), ds)


@pytest.mark.filterwarnings("ignore:The data type")
def test_incomplete_group_is_not_complete(tmp_path):
    store = tmp_path / "s.zarr"
    storage.save(schema_dataset(), store, "runs/done")
    # an interrupted save: arrays written, marker missing
    schema_dataset().to_zarr(store, group="runs/half", mode="w", consolidated=False)
    assert storage.completed_groups(store) == ["runs/done"]
    assert not storage.is_complete(store, "runs/half")
    with pytest.raises(ValueError, match="incomplete"):
        storage.load(store, "runs/half")
    # the marker attribute is written last: an existing but torn group stays incomplete
    zarr.open_group(str(store), path="runs/half", mode="r+").attrs["status"] = "ok"
    assert "runs/half" not in storage.completed_groups(store)
    storage.save(schema_dataset(seed=3), store, "runs/half")
    assert storage.completed_groups(store) == ["runs/done", "runs/half"]


def test_missing_store_and_bad_group(tmp_path):
    assert storage.completed_groups(tmp_path / "nope.zarr") == []
    with pytest.raises(ValueError, match="group"):
        storage.save(schema_dataset(), tmp_path / "s.zarr", "../escape")
    with pytest.raises(ValueError, match="xarray.Dataset"):
        storage.save({"loss": 1}, tmp_path / "s.zarr", "a")


def test_attrs_are_plain_json(tmp_path):
    store = tmp_path / "s.zarr"
    ds = schema_dataset()
    ds.attrs["extra"] = {"a": np.float64(1.5), "b": [np.int32(2)]}
    storage.save(ds, store, "x")
    back = storage.load(store, "x")
    assert back.attrs["extra"] == {"a": 1.5, "b": [2]}
    json.loads(back.attrs["config"])


def test_public_names():
    import specdyn

    assert specdyn.save is storage.save and specdyn.load is storage.load


def test_hidden_names_and_non_directory_stores_are_refused(tmp_path):
    from zarr.storage import MemoryStore

    with pytest.raises(ValueError, match="no name starting with '.'"):
        storage.save(schema_dataset(), tmp_path / "s.zarr", "runs/.tmp-a")
    with pytest.raises(ValueError, match="store must be the path of a directory"):
        storage.save(schema_dataset(), MemoryStore(), "a")
    assert not (tmp_path / "s.zarr").exists()


def test_unreadable_metadata_is_named_not_skipped(tmp_path):
    store = tmp_path / "s.zarr"
    storage.save(schema_dataset(seed=1), store, "runs/a")
    storage.save(schema_dataset(seed=2), store, "runs/b")
    (store / "runs" / "a" / "zarr.json").write_text("{")
    with pytest.raises(storage.DamagedGroupError, match="group 'runs/a'.*not valid JSON"):
        storage.completed_groups(store)
    with pytest.raises(storage.DamagedGroupError, match="group 'runs/a'"):
        storage.is_complete(store, "runs/a")
    assert storage.is_complete(store, "runs/b")
    # a damaged run may be replaced by a good one
    storage.save(schema_dataset(seed=3), store, "runs/a")
    xr.testing.assert_identical(storage.load(store, "runs/a"), schema_dataset(seed=3))
    assert storage.completed_groups(store) == ["runs/a", "runs/b"]
