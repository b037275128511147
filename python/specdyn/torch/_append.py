"""A Zarr group that grows one observation at a time and survives being killed.

Layout: one array per variable, in the layout ``xarray`` reads (``dimension_names``),
so a finished store opens with :func:`specdyn.storage.load` and ``specdyn plot``.
Arrays with a ``step`` (or ``bulk_step``) leading axis grow along it.

Crash safety rests on two facts: Zarr's local store replaces every file
atomically (metadata and chunks alike), and a flush writes in this order:

1. the group attributes with ``specdyn_complete = False``;
2. every array resized and its new row written;
3. the group attributes with the new observation counts and
   ``specdyn_complete = True`` (one atomic file).

A process killed anywhere leaves either a complete store (between flushes) or
one whose counts still name the last finished flush; :func:`read` keeps only
the rows those counts cover, so a half-written row is never read as an
observation. (The append primitive lives here rather than in
``specdyn.storage``; it only writes what that module can read.)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .. import storage

# the attribute names that specdyn.storage uses for its completion marker and
# for the NumPy dtype of string arrays (kept equal so that storage.load reads us)
COMPLETE_ATTR = storage.COMPLETE_ATTR
DTYPE_ATTR = "specdyn_dtype"
VERSION_ATTR = "specdyn_storage_version"
COUNT_ATTRS = {"step": "specdyn_observations", "bulk_step": "specdyn_bulk_observations"}
_CHUNK = 64  # observations per chunk along a growing axis


class AppendStore:
    """Writer of a growing store. ``static`` variables are written once; ``grow`` ones per flush."""

    def __init__(self, path, static: dict, growing: dict, attrs: dict):
        """``static``: {name: (dims, array)}; ``growing``: {name: (dims, trailing shape, dtype)}."""
        import zarr

        self.path = str(Path(path))
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"store must be a directory path (a Zarr store); {self.path!r} is a file")
        self.group = zarr.open_group(self.path, mode="w", zarr_format=3)
        for name, (dims, values) in static.items():
            values = np.asarray(values)
            if values.dtype.kind == "U":
                arr = self.group.create_array(name, shape=values.shape, dtype=str, dimension_names=list(dims))
                arr[...] = values.astype(object)
                arr.attrs[DTYPE_ATTR] = values.dtype.str
            else:
                arr = self.group.create_array(name, shape=values.shape, dtype=values.dtype,
                                              dimension_names=list(dims), fill_value=_fill(values.dtype))
                arr[...] = values
        self.arrays = {}
        for name, (dims, trailing, dtype) in growing.items():
            dtype = np.dtype(dtype)
            self.arrays[name] = self.group.create_array(
                name, shape=(0, *trailing), chunks=(_CHUNK, *trailing), dtype=dtype,
                dimension_names=list(dims), fill_value=_fill(dtype))
        self.counts = {axis: 0 for axis in COUNT_ATTRS}
        self.attrs = {k: _plain(v) for k, v in attrs.items()}
        json.dumps(self.attrs)  # fail before any observation on attributes Zarr cannot hold
        self._write_attrs(complete=True)

    def _write_attrs(self, complete: bool) -> None:
        out = dict(self.attrs)
        out.update({COUNT_ATTRS[a]: n for a, n in self.counts.items()})
        out.update({VERSION_ATTR: storage.STORAGE_VERSION, COMPLETE_ATTR: complete})
        self.group.attrs.put(out)  # one atomic rewrite of the group's metadata

    def append(self, rows: dict, attrs: dict | None = None) -> None:
        """Append one row to each named growing array (all arrays of an axis together), then flush."""
        self._write_attrs(complete=False)
        grown = set()
        for name, row in rows.items():
            arr = self.arrays[name]
            axis = arr.metadata.dimension_names[0]
            n = self.counts[axis]
            arr.resize((n + 1, *arr.shape[1:]))
            arr[n] = np.asarray(row, dtype=arr.dtype)
            grown.add(axis)
        for axis in grown:
            self.counts[axis] += 1
        if attrs:
            self.attrs.update({k: _plain(v) for k, v in attrs.items()})
        self._write_attrs(complete=True)


def _plain(value):
    """JSON-friendly copy of an attribute value (NumPy scalars and arrays to Python)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _fill(dtype: np.dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.nan
    if dtype.kind == "b":
        return False
    return 0


def read(path):
    """The observations of a store up to its last finished flush, as an ``xarray.Dataset``.

    Works on a store whose writer was killed at any moment (rows beyond the
    recorded counts are ignored). Raises ``ValueError`` when ``path`` holds no
    monitor store.
    """
    import xarray as xr
    import zarr

    path = str(Path(path))
    if not os.path.isdir(path):
        raise ValueError(f"store {path!r} does not exist (or is not a directory)")
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as exc:  # a directory that is no Zarr group at all
        raise ValueError(f"store {path!r} is not a Zarr group: {exc}") from None
    attrs = dict(group.attrs)
    if COUNT_ATTRS["step"] not in attrs:
        raise ValueError(f"store {path!r} was not written by a SpectralMonitor (no {COUNT_ATTRS['step']!r} "
                         f"attribute)")
    counts = {axis: int(attrs.get(key, 0)) for axis, key in COUNT_ATTRS.items()}
    variables, coords = {}, {}
    for name, arr in group.arrays():
        dims = tuple(arr.metadata.dimension_names)
        if dims and dims[0] in counts:
            values = arr[: counts[dims[0]]]
        else:
            values = arr[...]
        dt = arr.attrs.get(DTYPE_ATTR)
        if dt is not None:
            values = np.asarray(values).astype(dt)
        (coords if name in dims and len(dims) == 1 else variables)[name] = (dims, np.asarray(values))
    for axis, n in counts.items():  # a store killed before its first bulk row has no such axis
        if axis in coords and coords[axis][1].shape[0] != n:
            coords[axis] = (coords[axis][0], coords[axis][1][:n])
    keep = {k: v for k, v in attrs.items()
            if k not in (COMPLETE_ATTR, VERSION_ATTR, *COUNT_ATTRS.values())}
    return xr.Dataset(variables, coords=coords, attrs=keep)
