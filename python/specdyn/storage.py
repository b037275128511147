"""Persist runs (``xarray.Dataset``) to a Zarr store, one group per run.

A group counts as *complete* only once all of its arrays are written: the
attribute ``specdyn_complete`` is set on the group as the very last write.
An interrupted ``save`` (a killed process, a full disk) therefore leaves a
group without the marker; :func:`completed_groups` ignores it, :func:`load`
refuses it, and the next ``save`` to the same name overwrites it. A sweep
resumes by skipping exactly the groups that :func:`completed_groups` lists.

Configurations travel in ``ds.attrs["config"]`` as a JSON string
(``RunConfig.to_json()``); other attributes must be JSON-serializable
(NumPy scalars are converted to Python numbers).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

COMPLETE_ATTR = "specdyn_complete"
STORAGE_VERSION = 1
_VERSION_ATTR = "specdyn_storage_version"
# Fixed-width unicode has no stable Zarr v3 encoding: strings are stored as
# variable-length strings and their NumPy dtype is restored on load.
_DTYPE_ATTR = "specdyn_dtype"
_GROUP_NAME = re.compile(r"^[A-Za-z0-9_.=+-]+(/[A-Za-z0-9_.=+-]+)*$")


def _check_group(group: str | None) -> str | None:
    if group is None or group == "":
        return None
    if not isinstance(group, str) or not _GROUP_NAME.match(group) or group.startswith("."):
        raise ValueError(f"group must be a path of names made of letters, digits and _.=+- separated by '/'; "
                         f"got {group!r}")
    return group


def _store_path(store):
    if isinstance(store, (str, os.PathLike)):
        return str(Path(store))
    return store


def _plain(value: Any) -> Any:
    """JSON-friendly copy of an attribute value (NumPy scalars/arrays to Python)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _encode(ds):
    """A copy of ``ds`` that Zarr stores without loss (strings, attrs)."""
    out = ds.copy(deep=False)
    out.attrs = {k: _plain(v) for k, v in ds.attrs.items()}
    for name in list(out.variables):
        var = out.variables[name]
        attrs = {k: _plain(v) for k, v in var.attrs.items()}
        if var.dtype.kind == "U":
            attrs[_DTYPE_ATTR] = var.dtype.str
            new = var.copy(data=var.values.astype(object))
            new.attrs = attrs
            if name in out.coords:
                out = out.assign_coords({name: new})
            else:
                out[name] = new
        else:
            var.attrs = attrs
        out.variables[name].encoding = {}
    for k in (COMPLETE_ATTR, _VERSION_ATTR):
        out.attrs.pop(k, None)
    json.dumps(out.attrs)  # fail early (before writing) on attributes Zarr cannot hold
    return out


def _decode(ds):
    for name in list(ds.variables):
        var = ds.variables[name]
        dt = var.attrs.get(_DTYPE_ATTR)
        if dt is not None:
            new = var.copy(data=np.asarray(var.values).astype(dt))
            new.attrs = {k: v for k, v in var.attrs.items() if k != _DTYPE_ATTR}
            if name in ds.coords:
                ds = ds.assign_coords({name: new})
            else:
                ds[name] = new
    ds.attrs = {k: v for k, v in ds.attrs.items() if k not in (COMPLETE_ATTR, _VERSION_ATTR)}
    return ds


def save(ds, store, group: str | None = None) -> str | None:
    """Write one run to ``store`` (a directory path or a Zarr store) under ``group``.

    Any previous content of the group is replaced. The completion marker is
    written last, so a reader never mistakes a partial write for a run.
    ``group=None`` writes the run at the root of the store. Returns the group.
    """
    import xarray as xr
    import zarr

    if not isinstance(ds, xr.Dataset):
        raise ValueError(f"ds must be an xarray.Dataset; got {type(ds).__name__}")
    group = _check_group(group)
    store = _store_path(store)
    enc = _encode(ds)
    enc.to_zarr(store, group=group, mode="w", consolidated=False)
    node = zarr.open_group(store, path=group or "", mode="r+")
    node.attrs.update({_VERSION_ATTR: STORAGE_VERSION, COMPLETE_ATTR: True})
    return group


def is_complete(store, group: str | None = None) -> bool:
    """True when ``group`` exists in ``store`` and its completion marker is set."""
    import zarr

    group = _check_group(group)
    try:
        node = zarr.open_group(_store_path(store), path=group or "", mode="r")
        return bool(node.attrs.get(COMPLETE_ATTR, False))
    except Exception:  # missing, or torn metadata of an interrupted write
        return False


def load(store, group: str | None = None):
    """Read one complete run back as an in-memory ``xarray.Dataset``.

    Raises ``ValueError`` when the group is missing or was never completed.
    The result equals the saved dataset (``xarray.testing.assert_identical``).
    """
    import xarray as xr

    group = _check_group(group)
    store = _store_path(store)
    if not is_complete(store, group):
        where = f"group {group!r}" if group else "the root group"
        raise ValueError(f"{where} of store {store!r} is missing or incomplete "
                         f"(complete groups: {completed_groups(store)[:10]})")
    with xr.open_dataset(store, group=group, engine="zarr", consolidated=False, chunks=None) as ds:
        ds = ds.load()
    return _decode(ds)


def completed_groups(store) -> list[str]:
    """Sorted paths of the complete run groups in ``store`` ("" for the root).

    A missing store has none. Groups whose write was interrupted are not listed.
    """
    import zarr

    store = _store_path(store)
    if isinstance(store, str) and not os.path.exists(store):
        return []
    try:
        root = zarr.open_group(store, mode="r")
    except Exception:
        return []
    done = [""] if root.attrs.get(COMPLETE_ATTR, False) else []
    stack = [root]
    while stack:
        node = stack.pop()
        try:
            children = list(node.groups())
        except Exception:
            continue
        for _name, child in children:
            try:
                if child.attrs.get(COMPLETE_ATTR, False):
                    done.append(child.path)
                    continue  # a run group holds no run groups
            except Exception:
                continue
            stack.append(child)
    return sorted(done)


def load_all(store, groups=None) -> dict:
    """``{group: Dataset}`` for the given (default: all complete) groups."""
    groups = completed_groups(store) if groups is None else groups
    return {g: load(store, g) for g in groups}


def read_attrs(store, group: str | None = None) -> dict:
    """The attributes of a group (e.g. a sweep's root: its study and grid)."""
    import zarr

    node = zarr.open_group(_store_path(store), path=_check_group(group) or "", mode="r")
    return dict(node.attrs)


def write_attrs(store, attrs: dict, group: str | None = None) -> None:
    """Set attributes on a group, creating it (and the store) when missing."""
    import zarr

    node = zarr.open_group(_store_path(store), path=_check_group(group) or "", mode="a")
    node.attrs.update({k: _plain(v) for k, v in attrs.items()})
