"""The value-function store: Zarr v3 datasets written through xarray, published atomically.

Layout (see docs/contract.md)::

    <store>/<spec>/<game>/current            text file: the version directory name, replaced atomically
    <store>/<spec>/<game>/<hash16>.zarr/     one published, immutable version
    <store>/.staging/<uuid>.zarr             in-progress writes (+ <uuid>.lock held by the writer)
    <store>/.checkpoints/<spec>/<game>/      solver checkpoints for resume
    <store>/.locks/                          per-name publish locks

This module imports numpy/xarray/zarr only (no JAX): the client and the service import it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = [
    "GAMES",
    "NAME_RE",
    "SPEC_NAME_RE",
    "StoreError",
    "IntegrityError",
    "UnknownValueFunctionError",
    "ExistsError",
    "Store",
    "Checkpointer",
    "open_store",
    "default_store_path",
    "content_hash",
    "canonical_json",
    "jsonable",
    "zarr_encoding",
    "validate_name",
]

GAMES = ("cooperative", "worst_case")
NAME_RE = re.compile(r"^[a-z0-9_]+/(cooperative|worst_case)$")
SPEC_NAME_RE = re.compile(r"^[a-z0-9_]+$")
_VERSION_RE = re.compile(r"^[0-9a-f]{16}\.zarr$")

#: data variables that are part of the content hash, in this order (then the other data vars, sorted)
_HASH_FIRST = ("value", "gradient")

_CHUNK_BYTES = 256 * 1024  # target size of one (compressed-unit) chunk
_SHARD_BYTES = 64 * 1024 * 1024  # largest shard (one file on disk)
_ZSTD_LEVEL = 3


# --------------------------------------------------------------------------------------------- errors
class StoreError(Exception):
    """Base class of the store's errors."""


class IntegrityError(StoreError):
    """A published value function failed its content-hash check (or cannot be decoded)."""


class UnknownValueFunctionError(StoreError, KeyError):
    """No value function of that name in the store (or the name is invalid)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ExistsError(StoreError, FileExistsError):
    """Publishing would overwrite an existing value function and ``overwrite`` was not given."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# ------------------------------------------------------------------------------------ JSON / hashing
def jsonable(obj: Any) -> Any:
    """Convert ``obj`` into plain JSON types (numpy scalars/arrays, tuples, paths...).

    Non-finite floats become ``None`` (JSON has no NaN/inf) so attrs survive a Zarr round trip unchanged.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def canonical_json(obj: Any) -> str:
    """Canonical JSON: plain types, sorted keys, no whitespace, UTF-8 kept."""
    return json.dumps(jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def content_hash(ds) -> str:
    """sha256 (hex) of a value-function dataset.

    Hashed, in order: ``value``, ``gradient``, then every other data variable (sorted by name), each as
    its name, its dims and shape (canonical JSON) and its raw little-endian C-order bytes (float32 for
    ``value``/``gradient``/``value_at_horizon``, float64 otherwise); then every coordinate (sorted by
    name): its name and its float64 little-endian bytes (string coordinates: canonical JSON of the list);
    then the canonical JSON of the attrs minus ``created`` and ``content_hash``.
    """
    h = hashlib.sha256()
    names = [v for v in _HASH_FIRST if v in ds.data_vars]
    names += sorted(str(v) for v in ds.data_vars if v not in _HASH_FIRST)
    for name in names:
        da = ds[name]
        h.update(b"var\0" + name.encode() + b"\0")
        h.update(canonical_json({"dims": [str(d) for d in da.dims], "shape": list(da.shape)}).encode())
        dtype = "<f4" if da.dtype == np.float32 else "<f8"
        h.update(np.ascontiguousarray(np.asarray(da.values), dtype=dtype).tobytes())
    for name in sorted(str(c) for c in ds.coords):
        vals = np.asarray(ds.coords[name].values)
        h.update(b"coord\0" + name.encode() + b"\0")
        if vals.dtype.kind in "fiub":
            h.update(np.ascontiguousarray(vals, dtype="<f8").tobytes())
        else:
            h.update(canonical_json([str(v) for v in vals.ravel()]).encode())
    attrs = {k: v for k, v in ds.attrs.items() if k not in ("created", "content_hash")}
    h.update(b"attrs\0" + canonical_json(attrs).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ encoding
def _chunk_and_shard(shape: tuple[int, ...], itemsize: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    shape = tuple(max(int(s), 1) for s in shape)
    chunk = list(shape)
    while math.prod(chunk) * itemsize > _CHUNK_BYTES and max(chunk) > 1:
        i = int(np.argmax(chunk))
        chunk[i] = -(-chunk[i] // 2)
    counts = [-(-s // c) for s, c in zip(shape, chunk)]
    while math.prod(c * n for c, n in zip(chunk, counts)) * itemsize > _SHARD_BYTES and max(counts) > 1:
        i = int(np.argmax(counts))
        counts[i] = -(-counts[i] // 2)
    shard = tuple(c * n for c, n in zip(chunk, counts))
    return tuple(chunk), shard


def zarr_encoding(ds) -> dict[str, dict]:
    """xarray ``to_zarr`` encoding: sharded chunks + zstd for data variables, zstd for coordinates."""
    from zarr.codecs import ZstdCodec

    enc: dict[str, dict] = {}
    for name, da in ds.data_vars.items():
        if da.ndim == 0 or 0 in da.shape:
            enc[str(name)] = {"compressors": (ZstdCodec(level=_ZSTD_LEVEL),)}
            continue
        chunk, shard = _chunk_and_shard(da.shape, da.dtype.itemsize)
        enc[str(name)] = {"chunks": chunk, "shards": shard, "compressors": (ZstdCodec(level=_ZSTD_LEVEL),)}
    for name, c in ds.coords.items():
        if c.dtype.kind in "fiub":
            enc[str(name)] = {"compressors": (ZstdCodec(level=_ZSTD_LEVEL),)}
    return enc


# ------------------------------------------------------------------------------------------ fs utils
def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for f in filenames:
            _fsync_path(Path(dirpath) / f)
        _fsync_path(Path(dirpath), directory=True)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_path(path.parent, directory=True)


@contextlib.contextmanager
def _file_lock(path: Path, blocking: bool = True) -> Iterator[bool]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def validate_name(name: str) -> tuple[str, str]:
    """Split ``<spec>/<game>`` after checking it against :data:`NAME_RE` (no path escapes)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise UnknownValueFunctionError(
            f"invalid value-function name {name!r}: expected <spec>/<game> matching {NAME_RE.pattern}"
        )
    spec, game = name.split("/")
    return spec, game


def default_store_path() -> Path:
    return Path(os.environ.get("REACH_STORE") or "./store")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------- checkpoints
class Checkpointer:
    """Solver checkpoint for one value function (``reach.solver.Checkpoint`` protocol).

    One ``checkpoint.npz`` under ``<store>/.checkpoints/<spec>/<game>/``, replaced atomically after every
    chunk; tagged with the spec hash so a checkpoint of another spec is never resumed.
    """

    FILE = "checkpoint.npz"

    def __init__(self, directory: Path, spec_hash: str):
        self.directory = Path(directory)
        self.spec_hash = str(spec_hash)
        self.loaded_time: float | None = None  # time of the checkpoint load() returned, for reporting
        self.saves = 0

    @property
    def path(self) -> Path:
        return self.directory / self.FILE

    def load(self):
        try:
            with np.load(self.path, allow_pickle=False) as z:
                if str(z["spec_hash"]) != self.spec_hash:
                    return None
                out = (float(z["time"]), np.array(z["values"]), np.array(z["residual_times"]),
                       np.array(z["residuals"]))
        except (FileNotFoundError, OSError, KeyError, ValueError, EOFError):
            return None
        self.loaded_time = out[0]
        return out

    def save(self, time, values, residual_times, residuals) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".checkpoint.{uuid.uuid4().hex}.tmp.npz"
        try:
            with open(tmp, "wb") as fh:
                np.savez(
                    fh,
                    spec_hash=np.array(self.spec_hash),
                    time=np.array(float(time)),
                    values=np.asarray(values),
                    residual_times=np.asarray(residual_times, dtype=np.float64),
                    residuals=np.asarray(residuals, dtype=np.float64),
                )
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _fsync_path(self.directory, directory=True)
        self.saves += 1

    def exists(self) -> bool:
        return self.path.exists()

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


# --------------------------------------------------------------------------------------------- store
class Store:
    """A directory of published value functions. Cheap to construct; creates directories only on write."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.root = Path(path) if path is not None else default_store_path()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # ------------------------------------------------------------------ reading
    def list(self) -> list[str]:
        names = []
        if not self.root.is_dir():
            return names
        for spec_dir in self.root.iterdir():
            if not spec_dir.is_dir() or not SPEC_NAME_RE.match(spec_dir.name):
                continue
            for game in GAMES:
                if (spec_dir / game / "current").is_file():
                    names.append(f"{spec_dir.name}/{game}")
        return sorted(names)

    def exists(self, name: str) -> bool:
        try:
            self._version_dir(name)
        except UnknownValueFunctionError:
            return False
        return True

    def __contains__(self, name: str) -> bool:
        return self.exists(name)

    def _version_dir(self, name: str) -> Path:
        spec, game = validate_name(name)
        current = self.root / spec / game / "current"
        try:
            version = current.read_text(encoding="utf-8").strip()
        except (FileNotFoundError, NotADirectoryError):
            known = ", ".join(self.list()) or "none"
            raise UnknownValueFunctionError(
                f"unknown value function {name!r} in store {str(self.root)!r} (known: {known})"
            ) from None
        if not _VERSION_RE.match(version):
            raise IntegrityError(f"{name}: corrupt 'current' pointer {version!r}")
        path = self.root / spec / game / version
        if not path.is_dir():
            raise IntegrityError(f"{name}: 'current' points to missing version {version}")
        return path

    def path(self, name: str) -> Path:
        """Directory of the current published version of ``name``."""
        return self._version_dir(name)

    def _read_attrs(self, version_dir: Path) -> dict:
        try:
            meta = json.loads((version_dir / "zarr.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise IntegrityError(f"{version_dir}: unreadable metadata ({exc})") from None
        return dict(meta.get("attributes") or {})

    def info(self, name: str) -> dict:
        """The dataset attrs of ``name`` (JSON-ready); reads metadata only."""
        for attempt in range(3):
            try:
                return jsonable(self._read_attrs(self._version_dir(name)))
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def version(self, name: str) -> str:
        """The content hash (sha256 hex) of the current version of ``name``; cheap (metadata only)."""
        for attempt in range(3):
            try:
                vdir = self._version_dir(name)
                h = self._read_attrs(vdir).get("content_hash")
                if not isinstance(h, str) or not h.startswith(vdir.name[:16]):
                    raise IntegrityError(f"{name}: content_hash attribute does not match version {vdir.name}")
                return h
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def open(self, name: str, verify: bool = True):
        """Load ``name`` into memory; the content hash is verified (``IntegrityError`` on mismatch)."""
        last: Exception | None = None
        for _attempt in range(3):  # a concurrent overwrite may remove the version we are reading
            vdir = self._version_dir(name)
            try:
                return self._open_dir(name, vdir, verify)
            except FileNotFoundError as exc:
                last = exc
                if vdir.is_dir():
                    raise IntegrityError(f"{name}: incomplete version {vdir.name} ({exc})") from None
        raise IntegrityError(f"{name}: version disappeared while loading ({last})")

    def _open_dir(self, name: str, vdir: Path, verify: bool):
        import xarray as xr

        try:
            with xr.open_zarr(vdir, consolidated=False, zarr_format=3, chunks=None) as lazy:
                ds = lazy.load()
        except FileNotFoundError:
            raise
        except Exception as exc:  # corrupt chunk / metadata: refuse to load
            raise IntegrityError(f"{name}: cannot decode version {vdir.name}: {type(exc).__name__}: {exc}") from None
        ds = _normalise(ds)
        stored = ds.attrs.get("content_hash")
        if verify:
            actual = content_hash(ds)
            if stored != actual:
                raise IntegrityError(
                    f"{name}: content hash mismatch in {vdir.name} (stored {stored}, computed {actual}); "
                    "refusing to load"
                )
        return ds

    # ------------------------------------------------------------------ writing
    def publish(self, name: str, ds, overwrite: bool = False) -> str:
        """Publish ``ds`` as ``name`` atomically; returns the content hash.

        Raises ``ExistsError`` if ``name`` exists and ``overwrite`` is false. A crash at any point leaves
        either the old version or the new one visible, never a partial one.
        """
        spec, game = validate_name(name)
        ds = ds.copy()
        ds.attrs = jsonable(dict(ds.attrs))
        ds.attrs["name"] = name
        ds.attrs.pop("content_hash", None)
        ds.attrs.setdefault("created", _now())
        ds = _normalise(ds)
        digest = content_hash(ds)
        ds.attrs["content_hash"] = digest

        game_dir = self.root / spec / game
        with _file_lock(self.root / ".locks" / f"{spec}.{game}.lock"):
            if not overwrite and (game_dir / "current").exists():
                raise ExistsError(f"value function {name!r} already exists in {str(self.root)!r} "
                                  "(use overwrite / --overwrite to replace it)")
            self.clean_staging()
            staging = self.root / ".staging"
            staging.mkdir(parents=True, exist_ok=True)
            token = uuid.uuid4().hex
            tmp = staging / f"{token}.zarr"
            with _file_lock(staging / f"{token}.lock"):
                try:
                    out = _for_writing(ds)
                    out.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=False, encoding=zarr_encoding(out))
                    _fsync_tree(tmp)
                    game_dir.mkdir(parents=True, exist_ok=True)
                    target = game_dir / f"{digest[:16]}.zarr"
                    if target.exists():
                        # identical content already in place (e.g. a run killed before the pointer switch)
                        if self._read_attrs(target).get("content_hash") != digest:
                            shutil.rmtree(target)
                            os.rename(tmp, target)
                    else:
                        os.rename(tmp, target)
                    _fsync_path(game_dir, directory=True)
                    previous = None
                    with contextlib.suppress(OSError):
                        previous = (game_dir / "current").read_text(encoding="utf-8").strip()
                    _atomic_write_text(game_dir / "current", target.name + "\n")
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(staging / f"{token}.lock")
            self._collect_versions(game_dir, keep={target.name, previous or ""})
        return digest

    def _collect_versions(self, game_dir: Path, keep: set[str]) -> None:
        """Remove unreferenced versions, keeping the current and the previous one (readers mid-load)."""
        for entry in game_dir.iterdir():
            if entry.name.endswith(".zarr") and entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)

    def clean_staging(self) -> list[str]:
        """Remove in-progress writes whose writer is gone (its lock is free); returns what was removed."""
        staging = self.root / ".staging"
        removed: list[str] = []
        if not staging.is_dir():
            return removed
        tokens = {p.name.rsplit(".", 1)[0] for p in staging.iterdir()}
        for token in sorted(tokens):
            lock = staging / f"{token}.lock"
            data = staging / f"{token}.zarr"
            if lock.exists():
                with _file_lock(lock, blocking=False) as got:
                    if not got:
                        continue  # a live writer
                    shutil.rmtree(data, ignore_errors=True)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(lock)
            elif data.exists():
                shutil.rmtree(data, ignore_errors=True)
            else:
                continue
            removed.append(token)
        return removed

    def remove(self, name: str) -> None:
        """Unpublish ``name`` (pointer first, then the data)."""
        spec, game = validate_name(name)
        game_dir = self.root / spec / game
        with _file_lock(self.root / ".locks" / f"{spec}.{game}.lock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(game_dir / "current")
            shutil.rmtree(game_dir, ignore_errors=True)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_dir(self, name: str) -> Path:
        spec, game = validate_name(name)
        return self.root / ".checkpoints" / spec / game

    def checkpointer(self, name: str, spec_hash: str) -> Checkpointer:
        return Checkpointer(self.checkpoint_dir(name), spec_hash)

    def clear_checkpoint(self, name: str) -> None:
        shutil.rmtree(self.checkpoint_dir(name), ignore_errors=True)


def _normalise(ds):
    """Plain dtypes after a round trip: string coords as numpy str, float coords as float64."""
    for name in list(ds.coords):
        c = ds.coords[name]
        if c.dtype.kind in "OUST" or str(c.dtype).startswith("StringDType"):
            ds = ds.assign_coords({name: (c.dims, np.array([str(v) for v in c.values.ravel()]).reshape(c.shape),
                                          c.attrs)})
    return ds


def _for_writing(ds):
    """String coordinates as variable-length strings (Zarr v3 ``string``), everything else unchanged."""
    for name in list(ds.coords):
        c = ds.coords[name]
        if c.dtype.kind in "US":
            ds = ds.assign_coords({name: (c.dims, np.array([str(v) for v in c.values.ravel()], dtype=object)
                                          .reshape(c.shape), c.attrs)})
    return ds


def open_store(path: str | os.PathLike | None = None) -> Store:
    """The store at ``path`` (default ``$REACH_STORE`` or ``./store``)."""
    return Store(path)
