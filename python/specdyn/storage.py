"""Persist runs (``xarray.Dataset``) to a Zarr store, one group per run.

The store is a directory (Zarr format 3). Its guarantees, detailed in
``docs/storage.md``:

* A write replaces only the group it names. A group that holds other groups
  (a sweep's root, ``runs/``) is never replaced by a run: :func:`save`
  raises ``ValueError`` naming it and leaves the store untouched.
* A group is replaced atomically. :func:`save` writes the run beside its
  final place under a hidden name (``.tmp-<name>-<uuid>``), sets the
  completion marker ``specdyn_complete`` as the last write, then swaps the
  directory in. A failed write leaves the previous group as it was; a reader
  sees the old group or the new one, never a mix.
* Every chunk carries a CRC32C checksum, and the group records, per
  variable, how many chunks were written and a SHA-256 of its values.
  :func:`load` and :func:`verify` compare both, so a flipped bit, a deleted
  chunk, a deleted variable or a garbled ``zarr.json`` is reported as a
  damaged group (``DamagedGroupError``, a ``ValueError`` naming the group
  and what is wrong), never loaded as data.

Configurations travel in ``ds.attrs["config"]`` as a JSON string
(``RunConfig.to_json()``); other attributes must be JSON-serializable
(NumPy scalars are converted to Python numbers).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

COMPLETE_ATTR = "specdyn_complete"
STORAGE_VERSION = 3
_VERSION_ATTR = "specdyn_storage_version"
# {variable: {"chunks": chunk files written, "sha256": hash of its stored values}}
_MANIFEST_ATTR = "specdyn_manifest"
# Fixed-width unicode has no stable Zarr v3 encoding: strings are stored as
# variable-length strings and their NumPy dtype is restored on load.
_DTYPE_ATTR = "specdyn_dtype"
# SHA-256 of the group's own attributes (the run's status, config, ...), kept beside the manifest
_ATTRS_HASH_ATTR = "specdyn_attrs_sha256"
_INTERNAL_ATTRS = (COMPLETE_ATTR, _VERSION_ATTR, _MANIFEST_ATTR, _ATTRS_HASH_ATTR)
# a name never starts with "." : hidden names belong to temporaries
_NAME = r"[A-Za-z0-9_=+-][A-Za-z0-9_.=+-]*"
_GROUP_NAME = re.compile(rf"^{_NAME}(/{_NAME})*$")
_TMP, _TRASH = ".tmp-", ".trash-"
_MAX_NAME = 200
# how long a reader waits for a group that is being swapped in (two-rename fallback)
_SWAP_WAIT_S = 0.5
# a read that overlapped a swap is repeated on the new copy, this many times at most
_READ_ATTEMPTS = 20


class DamagedGroupError(ValueError):
    """A group whose content does not match what was written (``.group``, ``.reason``)."""

    def __init__(self, store, group: str, reason: str):
        self.store, self.group, self.reason = str(store), group, reason
        where = f"group {group!r}" if group else "the root group"
        super().__init__(f"{where} of store {str(store)!r} is damaged: {reason}")


def _check_group(group: str | None) -> str | None:
    if group is None or group == "":
        return None
    if not isinstance(group, str) or not _GROUP_NAME.match(group):
        raise ValueError(f"group must be a path of names made of letters, digits and _.=+- separated by '/', "
                         f"no name starting with '.'; got {group!r}")
    longest = max(len(part) for part in group.split("/"))
    if longest > _MAX_NAME:  # a folder name, and its temporary's (".tmp-NAME-<32 hex>"), must fit NAME_MAX
        raise ValueError(f"group names must be at most {_MAX_NAME} characters between '/'; got one of {longest}")
    return group


def _store_path(store) -> Path:
    if not isinstance(store, (str, os.PathLike)):
        raise ValueError(f"store must be the path of a directory; got {type(store).__name__}")
    path = Path(store)
    if path.exists() and not path.is_dir():
        raise ValueError(f"store {str(path)!r} is a file, not a Zarr store (a directory)")
    return path


def _group_dir(root: Path, group: str | None) -> Path:
    return root / group if group else root


def _where(group: str | None) -> str:
    return f"group {group!r}" if group else "the root group"


# ---------------------------------------------------------------------------------
# encoding
# ---------------------------------------------------------------------------------
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
    for k in _INTERNAL_ATTRS:
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
    ds.attrs = {k: v for k, v in ds.attrs.items() if k not in _INTERNAL_ATTRS}
    return ds


def _chunk_codecs() -> dict:
    """Codecs of every stored array: Zstandard, then a CRC32C checksum of each chunk."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return {"compressors": [ZstdCodec(), Crc32cCodec()]}


def _content_hash(values) -> str:
    """SHA-256 of an array's dtype kind, shape and values (strings as UTF-8 JSON)."""
    arr = np.asarray(values)
    h = hashlib.sha256(f"{arr.dtype.kind}{arr.shape}".encode())
    if arr.dtype.kind in "OTUS":
        h.update(json.dumps([str(x) for x in arr.ravel().tolist()]).encode())
    else:
        h.update(arr.dtype.str.encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _attrs_hash(attrs: dict) -> str:
    """SHA-256 of a group's attributes as stored (JSON), the internal ones left out."""
    own = {k: v for k, v in attrs.items() if k not in _INTERNAL_ATTRS}
    return hashlib.sha256(json.dumps(own, sort_keys=True).encode()).hexdigest()


def _is_chunk_key(key: str, var: str) -> bool:
    """Whether a key under ``var/`` is one of its chunks (default v3 keys: c, c/0, c/0/1, ...)."""
    rest = key[len(var) + 1:]
    return key.startswith(var + "/") and (rest == "c" or rest.startswith("c/"))


# ---------------------------------------------------------------------------------
# metadata on disk
# ---------------------------------------------------------------------------------
def _parse_meta(data: bytes, root, group) -> dict:
    try:
        meta = json.loads(data)
    except ValueError as exc:
        raise DamagedGroupError(root, group or "", f"its zarr.json is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise DamagedGroupError(root, group or "", "its zarr.json is not a JSON object")
    return meta


def _read_meta(root: Path, group: str | None) -> dict | None:
    """The parsed ``zarr.json`` of a node; None when the node does not exist.

    Raises DamagedGroupError when it exists but cannot be parsed.
    """
    try:
        data = (_group_dir(root, group) / "zarr.json").read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return _parse_meta(data, root, group)


def _swap_in_progress(d: Path) -> bool:
    """Whether a save is between its two renames of ``d`` (the old copy waits under a trash name)."""
    try:
        return any(n.startswith(f"{_TRASH}{d.name}-") for n in os.listdir(d.parent))
    except FileNotFoundError:
        return False


def _read_meta_waiting(root: Path, group: str | None) -> dict | None:
    """:func:`_read_meta`, waiting briefly for a group that is being swapped in."""
    deadline = time.monotonic() + _SWAP_WAIT_S
    while True:
        meta = _read_meta(root, group)
        if meta is not None or not _swap_in_progress(_group_dir(root, group)) or time.monotonic() > deadline:
            return meta
        time.sleep(0.002)


def _attrs(meta: dict | None) -> dict:
    attrs = (meta or {}).get("attributes") or {}
    return attrs if isinstance(attrs, dict) else {}


def _is_group(meta: dict | None) -> bool:
    return meta is not None and meta.get("node_type") == "group"


def _marked_complete(meta: dict | None) -> bool:
    return _is_group(meta) and _attrs(meta).get(COMPLETE_ATTR) is True


def _children(root: Path, group: str | None, meta: dict | None) -> list[str]:
    """Names in a group's directory that are not its own arrays: groups, files, foreign folders."""
    d = _group_dir(root, group)
    own = set(_attrs(meta).get(_MANIFEST_ATTR) or {})
    out = []
    for entry in os.scandir(d):
        if entry.name.startswith(".") or entry.name == "zarr.json" or entry.name in own:
            continue
        if entry.is_dir(follow_symlinks=False) and not own:
            # a group written without a manifest (an interrupted save of an older
            # version): its arrays are recognized by their metadata
            with contextlib.suppress(DamagedGroupError):
                child = _read_meta(root, f"{group}/{entry.name}" if group else entry.name)
                if child is not None and child.get("node_type") == "array":
                    continue
        out.append(entry.name)
    return sorted(out)


# ---------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------
def check_save_target(store, group: str | None = None) -> None:
    """Raise ``ValueError`` when :func:`save` to ``(store, group)`` would be refused.

    Refused: a path under a file or an unwritable folder; a parent that is an
    array; an existing node that is an array, a file, a folder that is not a
    Zarr group, or a group that holds other groups or files (a run never
    replaces them). Checks only (writability by creating and removing an
    empty hidden folder). Call it before the work whose result will be saved.
    """
    _check_target(_store_path(store), _check_group(group), probe_write=True)


def _check_target(root: Path, group: str | None, probe_write: bool) -> None:
    d = _group_dir(root, group)
    # the nearest existing folder must be writable (the store is created below it)
    probe = d
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"cannot write {str(d)!r}: {str(probe)!r} is a file, not a folder")
    if probe_write:
        try:  # a real attempt: permission bits do not tell about read-only mounts or root
            os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".specdyn-probe-"))
        except OSError as exc:
            raise ValueError(f"cannot write {str(d)!r}: the folder {str(probe)!r} is not writable "
                             f"({exc.strerror})") from None
    parts = group.split("/") if group else []
    for i in range(len(parts)):
        parent = "/".join(parts[:i]) or None
        pdir = _group_dir(root, parent)
        if not pdir.exists():
            break
        if not pdir.is_dir():
            raise ValueError(f"cannot write {_where(group)} of store {str(root)!r}: {str(pdir)!r} is a file")
        meta = _read_meta(root, parent)
        if meta is None and any(not n.startswith(".") for n in os.listdir(pdir)):
            raise ValueError(f"cannot write {_where(group)}: {str(pdir)!r} is a folder that is not a Zarr group")
        if meta is not None and not _is_group(meta):
            raise ValueError(f"cannot write {_where(group)} of store {str(root)!r}: "
                             f"{_where(parent)} is a Zarr {meta.get('node_type')}, not a group")
    if not d.exists():
        return
    if not d.is_dir():
        raise ValueError(f"cannot replace {str(d)!r}: it is a file, not a Zarr group")
    try:
        meta = _read_meta(root, group)
    except DamagedGroupError:
        meta = None  # a damaged run may be replaced; what it holds is checked below
    if meta is not None and not _is_group(meta):
        raise ValueError(f"cannot replace {_where(group)} of store {str(root)!r}: "
                         f"it is a Zarr {meta.get('node_type')}, not a group")
    others = _children(root, group, meta)
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        what = "it holds" if meta is not None else "it is not a Zarr group and holds"
        raise ValueError(f"refusing to replace {_where(group)} of store {str(root)!r} by a run: {what} "
                         f"other groups or files ({shown}); save the run under a group of its own")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    libc = _libc()
    if libc is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False  # ENOSYS, EINVAL, EOPNOTSUPP: the file system cannot exchange
    raise OSError(err, f"cannot swap {str(a)!r} and {str(b)!r}: {os.strerror(err)}")


_LIBC: list = []


def _libc():
    if not _LIBC:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.renameat2  # noqa: B018  (missing before glibc 2.28 and off Linux)
        except (OSError, AttributeError):
            libc = None
        _LIBC.append(libc)
    return _LIBC[0]


def _swap_in(tmp: Path, d: Path) -> None:
    """Put the finished directory ``tmp`` at ``d``, replacing what is there, atomically."""
    try:
        os.rename(tmp, d)  # d missing or an empty folder
        return
    except OSError as exc:
        if not d.exists() or exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):  # d holds a group
            raise
    if _exchange(tmp, d):
        shutil.rmtree(tmp)  # now the old group
        return
    # two renames: between them readers find the group missing and wait (see _read_meta_waiting)
    trash = d.parent / f"{_TRASH}{d.name}-{uuid.uuid4().hex}"
    os.rename(d, trash)
    os.rename(tmp, d)
    shutil.rmtree(trash)


def _new_temporary(root: Path, group: str | None) -> tuple[Path, Path]:
    """(the group's folder, a fresh hidden temporary beside it), the parent groups created."""
    import zarr

    d = _group_dir(root, group)
    if group:
        zarr.open_group(str(root), path=group.rpartition("/")[0], mode="a", zarr_format=3)  # the parent groups
    else:
        d.parent.mkdir(parents=True, exist_ok=True)
    tmp = d.parent / f"{_TMP}{d.name}-{uuid.uuid4().hex}"
    os.mkdir(tmp)  # exclusive: never writes through a planted link
    return d, tmp


def _chunk_files(array_dir: Path) -> int:
    """Chunk files of a written array (default v3 keys: c, or c/0, c/0/1, ...)."""
    c = array_dir / "c"
    return 1 if c.is_file() else sum(len(files) for _, _, files in os.walk(c))


def save(ds, store, group: str | None = None) -> str | None:
    """Write one run to the store directory ``store`` under ``group``, atomically.

    Any previous run in the group is replaced; nothing else in the store is
    touched. ``group=None`` writes the run at the root of the store. A group
    that holds other groups (or a folder that is not a Zarr group) is never
    replaced: ``ValueError`` names it (see :func:`check_save_target`). The
    run is written under a hidden temporary name beside the group, with a
    CRC32C checksum on every chunk and a per-variable manifest (chunk count,
    SHA-256 of the values) in the group attributes, the completion marker
    last; then it is swapped in. A failed save leaves the previous group as
    it was. Returns the group.
    """
    import xarray as xr
    import zarr

    if not isinstance(ds, xr.Dataset):
        raise ValueError(f"ds must be an xarray.Dataset; got {type(ds).__name__}")
    group = _check_group(group)
    root = _store_path(store)
    enc = _encode(ds)
    _check_target(root, group, probe_write=False)  # an unwritable folder fails at the first mkdir
    d, tmp = _new_temporary(root, group)
    try:
        codecs = _chunk_codecs()
        enc.to_zarr(str(tmp), mode="w-", consolidated=False, zarr_format=3,
                    encoding={name: dict(codecs) for name in enc.variables})
        node = zarr.open_group(str(tmp), mode="r+", zarr_format=3)
        manifest = {}
        for name, arr in node.arrays():
            manifest[name] = {"chunks": _chunk_files(tmp / name), "sha256": _content_hash(arr[...])}
        # one metadata write: the manifest and the completion marker together, last
        stored = json.loads((tmp / "zarr.json").read_bytes()).get("attributes", {})  # as a reader parses them
        node.attrs.update({_VERSION_ATTR: STORAGE_VERSION, _MANIFEST_ATTR: manifest,
                           _ATTRS_HASH_ATTR: _attrs_hash(stored), COMPLETE_ATTR: True})
        _check_target(root, group, probe_write=False)  # nothing appeared in the group meanwhile
        _swap_in(tmp, d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temporary; the error propagates
        raise
    return group


class GrowingGroup:
    """A run written one observation at a time that survives being killed at any moment.

    ``static``: ``{name: (dims, values)}`` written once; ``growing``:
    ``{name: (dims, trailing shape, dtype)}``, arrays whose leading dimension
    (``dims[0]``, for example ``step``) grows by one row per :meth:`append`.
    The target is checked and replaced as in :func:`save`: the empty group is
    built under a temporary name and swapped in by the constructor.

    Every flush writes the new rows (each chunk file replaced atomically, with
    its CRC32C), then one metadata write that holds the row count and a SHA-256
    of the rows so far for every growing variable and the completion marker.
    A reader (:func:`load`, :func:`verify`) keeps the rows those counts cover,
    so a process killed mid-flush leaves the store as it was after the
    previous flush, and a changed row is reported as damage.
    ``variable_attrs``: name -> the attributes of that variable (for example
    ``specdyn.results.variable_attrs``), written once with it.
    """

    _ROWS_CHUNK = 64  # observations per chunk along the growing dimension

    def __init__(self, store, static: dict, growing: dict, attrs: dict, group: str | None = None,
                 variable_attrs=None):
        import zarr

        self.group_name = _check_group(group)
        root = _store_path(store)
        self.attrs = {k: _plain(v) for k, v in attrs.items() if k not in _INTERNAL_ATTRS}
        json.dumps(self.attrs)  # fail before any work on attributes Zarr cannot hold
        check_save_target(root, self.group_name)
        d, tmp = _new_temporary(root, self.group_name)
        codecs = _chunk_codecs()
        var_attrs = variable_attrs or (lambda name: {})  # name -> the variable's attributes (long_name, units)
        self._manifest, self._hashes, self._axis = {}, {}, {}
        try:
            node = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            for name, (dims, values) in static.items():
                values = np.asarray(values)
                if values.dtype.kind == "U":
                    arr = node.create_array(name, shape=values.shape, dtype=str, dimension_names=list(dims),
                                            attributes={**var_attrs(name), _DTYPE_ATTR: values.dtype.str}, **codecs)
                    arr[...] = values.astype(object)
                else:
                    arr = node.create_array(name, shape=values.shape, dtype=values.dtype, attributes=var_attrs(name),
                                            dimension_names=list(dims), fill_value=_fill(values.dtype), **codecs)
                    arr[...] = values
                self._manifest[name] = {"chunks": _chunk_files(tmp / name), "sha256": _content_hash(arr[...])}
            for name, (dims, trailing, dtype) in growing.items():
                dtype = np.dtype(dtype)
                node.create_array(name, shape=(0, *trailing), chunks=(self._ROWS_CHUNK, *trailing), dtype=dtype,
                                  dimension_names=list(dims), fill_value=_fill(dtype), attributes=var_attrs(name),
                                  **codecs)
                self._hashes[name] = _rows_hash_start(dtype, trailing)
                self._axis[name] = dims[0]
                self._manifest[name] = {"rows": 0, "sha256": self._hashes[name].hexdigest()}
            self._node = node
            self._write_attrs(complete=True)
            _check_target(root, self.group_name, probe_write=False)
            _swap_in(tmp, d)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # our own temporary; the error propagates
            raise
        self._node = zarr.open_group(str(d), mode="r+", zarr_format=3)
        self._arrays = {name: self._node[name] for name in growing}
        self.rows = {axis: 0 for axis in set(self._axis.values())}

    def _write_attrs(self, complete: bool) -> None:
        out = dict(self.attrs)
        out.update({_VERSION_ATTR: STORAGE_VERSION, _MANIFEST_ATTR: self._manifest, COMPLETE_ATTR: complete,
                    _ATTRS_HASH_ATTR: _attrs_hash(json.loads(json.dumps(self.attrs)))})
        self._node.attrs.put(out)  # one atomic rewrite of the group's metadata

    def append(self, rows: dict, attrs: dict | None = None) -> None:
        """Append one row to each named growing variable (all variables of a dimension together), then flush."""
        axes = {self._axis[name] for name in rows}
        missing = [n for n, a in self._axis.items() if a in axes and n not in rows]
        if missing:
            raise ValueError(f"append: rows for {sorted(missing)} missing (every variable along "
                             f"{sorted(axes)} grows together)")
        for name, row in rows.items():
            arr = self._arrays[name]
            n = self.rows[self._axis[name]]
            row = np.asarray(row, dtype=arr.dtype).reshape(arr.shape[1:])
            arr.resize((n + 1, *arr.shape[1:]))
            arr[n] = row
            self._hashes[name].update(np.ascontiguousarray(row).tobytes())
        for axis in axes:
            self.rows[axis] += 1
        for name in rows:
            self._manifest[name] = {"rows": self.rows[self._axis[name]], "sha256": self._hashes[name].hexdigest()}
        if attrs:
            self.attrs.update({k: _plain(v) for k, v in attrs.items() if k not in _INTERNAL_ATTRS})
        self._write_attrs(complete=True)


def _rows_hash_start(dtype: np.dtype, trailing) -> "hashlib._Hash":
    """The running SHA-256 of a growing variable: its dtype and row shape, then its rows' bytes."""
    return hashlib.sha256(f"rows{np.dtype(dtype).str}{tuple(trailing)}".encode())


def _fill(dtype: np.dtype):
    dtype = np.dtype(dtype)
    return np.nan if dtype.kind in "fc" else (False if dtype.kind == "b" else 0)


# ---------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------
def _read_tree(dir_fd: int, prefix: str, out: dict) -> None:
    """Every file below an open directory into ``out`` (relative key -> bytes); hidden names skipped."""
    with os.scandir(dir_fd) as it:
        entries = list(it)
    for entry in entries:
        if entry.name.startswith("."):
            continue  # zarr's partial writes
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
        if entry.is_dir(follow_symlinks=False):
            fd = os.open(entry.name, flags | os.O_DIRECTORY, dir_fd=dir_fd)
            try:
                _read_tree(fd, f"{prefix}{entry.name}/", out)
            finally:
                os.close(fd)
        elif entry.is_file(follow_symlinks=False):
            fd = os.open(entry.name, flags, dir_fd=dir_fd)
            with os.fdopen(fd, "rb") as fh:
                out[prefix + entry.name] = fh.read()


def _snapshot_once(root: Path, group: str | None):
    """(state, meta, files, problems, identity) from one pass over the group's directory.

    The directory is opened once and read through that handle, so every file
    comes from the same write even if a save swaps the group meanwhile.
    state: "missing", "incomplete" or "complete".
    """
    d = _group_dir(root, group)
    try:
        gfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return "missing", None, {}, [], None
    try:
        st = os.fstat(gfd)
        identity = (st.st_dev, st.st_ino)
        try:
            fd = os.open("zarr.json", os.O_RDONLY, dir_fd=gfd)
        except FileNotFoundError:
            return "missing", None, {}, [], identity
        with os.fdopen(fd, "rb") as fh:
            meta_bytes = fh.read()
        meta = _parse_meta(meta_bytes, root, group)
        if not _marked_complete(meta):
            return "incomplete", meta, {}, [], identity
        attrs = _attrs(meta)
        if attrs.get(_VERSION_ATTR) != STORAGE_VERSION:
            return "complete", meta, {}, [f"written by storage version {attrs.get(_VERSION_ATTR)!r}; "
                                          f"this version reads version {STORAGE_VERSION} (re-run or re-save it)"], identity
        manifest = attrs.get(_MANIFEST_ATTR)
        if not isinstance(manifest, dict) or not manifest:
            return "complete", meta, {}, ["its manifest of variables is missing"], identity
        files, problems = {"zarr.json": meta_bytes}, []
        for var in manifest:
            try:
                vfd = os.open(var, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0), dir_fd=gfd)
            except (FileNotFoundError, NotADirectoryError):
                problems.append(f"variable {var!r} is missing")
                continue
            except OSError as exc:  # a link or an unreadable folder in its place
                problems.append(f"variable {var!r} cannot be read ({exc.strerror})")
                continue
            try:
                _read_tree(vfd, f"{var}/", files)
            finally:
                os.close(vfd)
        return "complete", meta, files, problems, identity
    except FileNotFoundError as exc:  # a file deleted under the reader: a replaced group's cleanup
        return "complete", None, {}, [f"a file vanished while reading ({exc.filename})"], identity
    finally:
        os.close(gfd)


def _check_content(meta: dict, files: dict) -> tuple[list[str], Any]:
    """(problems, in-memory zarr store) of a complete group's snapshot."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.storage import MemoryStore

    buf = default_buffer_prototype().buffer
    mem = MemoryStore({k: buf.from_bytes(v) for k, v in files.items()}, read_only=True)
    problems = []
    if _attrs(meta).get(_ATTRS_HASH_ATTR) != _attrs_hash(_attrs(meta)):
        problems.append("its attributes differ from those written (SHA-256 mismatch)")
    for var, rec in _attrs(meta)[_MANIFEST_ATTR].items():
        if f"{var}/zarr.json" not in files:
            # also when its folder is there but empty: a replaced group being deleted under the reader
            # can be caught between emptying a variable's folder and removing it
            problems.append(f"variable {var!r} has no zarr.json")
            continue
        if isinstance(rec, dict) and "rows" in rec:  # a growing variable: its first `rows` rows
            problems += _check_rows(mem, var, rec)
            continue
        chunks = sum(_is_chunk_key(k, var) for k in files)
        written = rec.get("chunks") if isinstance(rec, dict) else None
        if chunks != written:
            problems.append(f"variable {var!r} has {chunks} chunk(s) of the {written} written "
                            f"({'missing' if isinstance(written, int) and chunks < written else 'unexpected'} chunks)")
            continue
        values, problem = _read_variable(mem, var)
        if problem:
            problems.append(problem)
            continue
        if _content_hash(values) != rec.get("sha256"):
            problems.append(f"variable {var!r}: its values differ from those written (SHA-256 mismatch)")
    return problems, mem


# what Zarr raises on a damaged array: a failed CRC32C, garbled or invalid metadata (its own
# errors derive from ValueError), a bad decompression
_READ_ERRORS = (ValueError, TypeError, KeyError, RuntimeError)


def _read_variable(mem, var: str, rows=None):
    """(values, None) of a variable of a snapshot (its first ``rows`` rows when given), or
    (None, the reason it is damaged)."""
    import zarr

    try:
        arr = zarr.open_array(mem, path=var, mode="r", zarr_format=3)
        if rows is None:
            return arr[...], None
        if not isinstance(rows, int) or not 0 <= rows <= arr.shape[0]:
            return None, f"variable {var!r} holds {arr.shape[0]} row(s), its manifest names {rows!r}"
        return arr[:rows], None
    except _READ_ERRORS as exc:  # reported as this group's damage, with the reason
        reason = "a chunk fails its CRC32C checksum" if "checksum" in str(exc) else "unreadable"
        return None, f"variable {var!r}: {reason} ({type(exc).__name__}: {exc})"


def _check_rows(mem, var: str, rec: dict) -> list[str]:
    rows = rec.get("rows")
    values, problem = _read_variable(mem, var, rows)
    if problem:
        return [problem]
    h = _rows_hash_start(values.dtype, values.shape[1:])
    h.update(np.ascontiguousarray(values).tobytes())
    if h.hexdigest() != rec.get("sha256"):
        return [f"variable {var!r}: its first {rows} row(s) differ from those written (SHA-256 mismatch)"]
    return []


def _rows_written(meta: dict) -> dict:
    """{variable: rows} of a growing group's manifest (empty for a run written by save)."""
    out = {}
    for var, rec in _attrs(meta)[_MANIFEST_ATTR].items():
        if isinstance(rec, dict) and "rows" in rec:
            out[var] = rec["rows"]
    return out


def _identity(d: Path):
    try:
        st = os.stat(d)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _snapshot(root: Path, group: str | None):
    """(state, meta, problems, in-memory store) of a group, consistent with a single write.

    Problems seen while the group was being replaced are retried on the new
    copy; problems of a group that stayed in place are its damage.
    """
    d = _group_dir(root, group)
    deadline = time.monotonic() + _SWAP_WAIT_S
    attempt = 0
    while True:
        attempt += 1
        state, meta, files, problems, ident = _snapshot_once(root, group)
        if state == "missing" and _swap_in_progress(d) and time.monotonic() < deadline:
            time.sleep(0.002)
            continue
        mem = None
        if state == "complete" and meta is not None and not problems:
            problems, mem = _check_content(meta, files)
        if problems and attempt < _READ_ATTEMPTS and _identity(d) != ident:
            continue  # replaced while we read: read the new copy
        return state, meta, problems, mem


def is_complete(store, group: str | None = None) -> bool:
    """True when ``group`` exists in ``store`` and its completion marker is set.

    Reads only the group's metadata (see :func:`verify` for its content).
    Raises ``DamagedGroupError`` when that metadata cannot be parsed.
    """
    group = _check_group(group)
    root = _store_path(store)
    return _marked_complete(_read_meta_waiting(root, group))


def load(store, group: str | None = None):
    """Read one complete run back as an in-memory ``xarray.Dataset``.

    Raises ``ValueError`` when the group is missing or was never completed,
    and ``DamagedGroupError`` (a ``ValueError``) naming the group and what is
    wrong when its content does not match what was written (missing chunk or
    variable, checksum mismatch). The result equals the saved dataset
    (``xarray.testing.assert_identical``).
    """
    import xarray as xr

    group = _check_group(group)
    root = _store_path(store)
    state, _meta, problems, mem = _snapshot(root, group)
    if state != "complete":
        done = [g for g, meta, reason in _walk(root) if reason is None and _marked_complete(meta)]
        raise ValueError(f"{_where(group)} of store {str(root)!r} is missing or incomplete "
                         f"(complete groups: {sorted(done)[:10]})")
    if problems:
        raise DamagedGroupError(root, group or "", "; ".join(problems))
    rows = _rows_written(_meta)
    if rows:  # a growing group: the rows of its last finished flush
        return _decode(_read_growing(mem, _meta, rows))
    with xr.open_dataset(mem, engine="zarr", consolidated=False, chunks=None, zarr_format=3) as ds:
        ds = ds.load()
    return _decode(ds)


def _read_growing(mem, meta: dict, rows: dict):
    """The Dataset of a GrowingGroup snapshot, each growing variable cut to its counted rows.

    Read array by array: mid-flush, the arrays of one dimension may differ in
    length beyond the counted rows, which xarray's own reader refuses.
    """
    import xarray as xr
    import zarr

    variables = {}
    for var in _attrs(meta)[_MANIFEST_ATTR]:
        arr = zarr.open_array(mem, path=var, mode="r", zarr_format=3)
        values = arr[: rows[var]] if var in rows else arr[...]
        variables[var] = xr.Variable(tuple(arr.metadata.dimension_names), np.asarray(values), dict(arr.attrs))
    coords = {k: v for k, v in variables.items() if v.dims == (k,)}
    data = {k: v for k, v in variables.items() if k not in coords}
    return xr.Dataset(data, coords=coords, attrs=dict(_attrs(meta)))


def verify(store, group: str | None = None) -> list[tuple[str, str]]:
    """The damaged groups of a store as ``[(group, reason), ...]``; empty when all is well.

    ``group=None`` checks every group of the store marked complete (the root
    is ``""``) and every group whose metadata cannot be read; a group name
    checks that group only, and a missing or incomplete one is reported as
    such. A complete group is damaged when a variable, a chunk or its
    manifest is missing, a chunk fails its CRC32C checksum, or a variable's
    values differ from their SHA-256 recorded at write time. Reads every
    chunk once.
    """
    group = _check_group(group)
    root = _store_path(store)
    if group is not None:
        try:
            state, _meta, problems, _ = _snapshot(root, group)
        except DamagedGroupError as exc:
            return [(group, exc.reason)]
        if state != "complete":
            return [(group, state)]
        return [(group, "; ".join(problems))] if problems else []
    out = []
    for g, meta, reason in _walk(root):
        if reason is not None:
            out.append((g, reason))
        elif _marked_complete(meta):
            try:
                state, _meta, problems, _ = _snapshot(root, g or None)
            except DamagedGroupError as exc:
                state, problems = "complete", [exc.reason]
            if state != "complete":
                continue  # replaced by an incomplete one meanwhile: not a complete group now
            if problems:
                out.append((g, "; ".join(problems)))
    return out


def _walk(root: Path):
    """(group, metadata, reason) of every group below ``root`` (hidden temporaries skipped).

    ``reason`` is None, or why the group's metadata cannot be read.
    """
    if not root.exists():
        return
    stack = [""]
    while stack:
        g = stack.pop()
        try:
            meta = _read_meta(root, g or None)
        except DamagedGroupError as exc:
            yield g, None, exc.reason
            continue
        if not _is_group(meta):
            continue  # an array, a foreign folder, or a group being swapped
        yield g, meta, None
        own = set(_attrs(meta).get(_MANIFEST_ATTR) or {})
        try:
            entries = sorted(os.scandir(_group_dir(root, g or None)), key=lambda e: e.name, reverse=True)
        except FileNotFoundError:
            continue  # replaced while listed
        for entry in entries:
            if entry.name.startswith(".") or entry.name in own or not entry.is_dir(follow_symlinks=False):
                continue
            stack.append(f"{g}/{entry.name}" if g else entry.name)


def completed_groups(store) -> list[str]:
    """Sorted paths of the complete run groups in ``store`` ("" for the root).

    A complete run may hold complete groups below it (``r`` and ``r/sub``);
    both are listed. A missing store has none. Groups whose write was
    interrupted and hidden temporaries are not listed. Raises
    ``DamagedGroupError`` for a group whose metadata cannot be read.
    """
    root = _store_path(store)
    done = []
    for g, meta, reason in _walk(root):
        if reason is not None:
            raise DamagedGroupError(root, g, reason)
        if _marked_complete(meta):
            done.append(g)
    return sorted(done)


def load_all(store, groups=None) -> dict:
    """``{group: Dataset}`` for the given (default: all complete) groups."""
    groups = completed_groups(store) if groups is None else groups
    return {g: load(store, g) for g in groups}


def read_attrs(store, group: str | None = None) -> dict:
    """The attributes of a group (e.g. a sweep's root: its study and grid).

    Raises ``ValueError`` when the store or the group does not exist.
    """
    group = _check_group(group)
    root = _store_path(store)
    meta = _read_meta_waiting(root, group)
    if not _is_group(meta):
        what = "no Zarr group" if meta is None else f"a Zarr {meta.get('node_type')}, not a group"
        raise ValueError(f"{_where(group)} of store {str(root)!r} does not exist ({what} there)")
    return dict(_attrs(meta))


def write_attrs(store, attrs: dict, group: str | None = None) -> None:
    """Set attributes on a group, creating it (and the store) when missing."""
    import zarr

    group = _check_group(group)
    root = _store_path(store)
    meta = _read_meta(root, group)  # a damaged one raises rather than being overwritten
    if meta is not None and not _is_group(meta):
        raise ValueError(f"{_where(group)} of store {str(root)!r} is a Zarr {meta.get('node_type')}, not a group")
    node = zarr.open_group(str(root), path=group or "", mode="a", zarr_format=3)
    new = {k: _plain(v) for k, v in attrs.items() if k not in _INTERNAL_ATTRS}
    json.dumps(new)  # fail before writing on attributes Zarr cannot hold
    if _marked_complete(meta):  # a stored run: its attribute checksum follows the change, in the same write
        merged = json.loads(json.dumps({**_attrs(meta), **new}))
        new[_ATTRS_HASH_ATTR] = _attrs_hash(merged)
    node.attrs.update(new)
