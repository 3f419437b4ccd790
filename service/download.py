"""Downloads: a zip of the published Zarr version directory plus a ``reach.json`` manifest
(:class:`~service.models.DownloadManifest`). The client re-computes the content hash before it uses the data.
Read-only: the zip is written to a temporary file outside the store and removed after it is sent."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

from reach.store import Store
from service.errors import ServiceError
from service.models import DownloadManifest
from service.registry import Entry

MANIFEST = "reach.json"


def version_dir(store: Store, entry: Entry) -> Path:
    spec, game = entry.name.split("/")
    path = store.root / spec / game / f"{entry.content_hash[:16]}.zarr"
    if not path.is_dir():
        raise FileNotFoundError(path)
    return path


def build_zip(store: Store, entry: Entry) -> str:
    """Path of a temporary zip of ``entry``'s version directory (the caller removes it)."""
    vdir = version_dir(store, entry)
    fd, tmp = tempfile.mkstemp(prefix="reach-download-", suffix=".zip")
    os.close(fd)
    try:
        manifest = DownloadManifest(name=entry.name, content_hash=entry.content_hash, version_dir=vdir.name)
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:  # chunks are zstd
            zf.writestr(MANIFEST, manifest.model_dump_json(indent=2))
            for dirpath, dirnames, filenames in os.walk(vdir):
                dirnames.sort()
                for fname in sorted(filenames):
                    full = Path(dirpath) / fname
                    zf.write(full, arcname=str(Path(vdir.name) / full.relative_to(vdir)))
    except FileNotFoundError:
        os.unlink(tmp)
        raise
    except Exception as exc:
        os.unlink(tmp)
        raise ServiceError(503, "unavailable", f"{entry.name}: cannot package version {vdir.name}: {exc}") from None
    return tmp
