"""`ReachClient`: the Python client of the reach HTTP service (``reach serve``).

    from clients.http import ReachClient
    with ReachClient("http://127.0.0.1:8000", token=None) as client:
        client.catalogue()                                   # [{name, model, game, state, ...}, ...]
        res = client.query("quadrotor/cooperative", states, gradient=True)   # binary wire form by default
        res.value, res.gradient, res.in_domain
        vf = client.fetch("quadrotor/cooperative")          # a local clients.ValueFunction, hash-verified, cached

Timeouts on every request; connection errors (refused, reset, dropped keep-alive) are retried with a backoff;
4xx answers raise `ReachRequestError` (or a subclass) carrying the service's ``error`` class and message, 5xx
raise `ReachServerError`. The service is read-only, so retrying any request is safe.

Downloads (`download`, `fetch`, `ValueFunction.fetch`) are cached in a directory laid out like a store
(``<cache>/<spec>/<game>/<hash16>.zarr`` + ``current``; default ``$REACH_CACHE`` or ``~/.cache/reach``). A download
is verified (the content hash recomputed from the arrays and attributes, `reach.store.content_hash`) before it
becomes visible in the cache, and again whenever it is loaded. A cached version is reused when the service
answers 304 to ``If-None-Match``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import uuid
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import numpy as np

__all__ = [
    "ReachClient",
    "QueryResult",
    "ReachError",
    "ReachConnectionError",
    "ReachTimeoutError",
    "ReachHTTPError",
    "ReachRequestError",
    "ReachAuthError",
    "ReachNotFoundError",
    "ReachServerError",
    "default_cache_dir",
]

_VERSION_DIR = re.compile(r"^[0-9a-f]{16}\.zarr$")
_DTYPES = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}


# --------------------------------------------------------------------------------------------- errors
class ReachError(Exception):
    """Base class of the client's errors."""


class ReachConnectionError(ReachError, ConnectionError):
    """The service could not be reached (after the retries)."""


class ReachTimeoutError(ReachError, TimeoutError):
    """The service did not answer in time."""


class ReachHTTPError(ReachError):
    """An answer with a 4xx/5xx status; ``status``, ``error`` (the service's problem class) and ``message``."""

    def __init__(self, status: int, error: str, message: str, method: str = "", url: str = ""):
        self.status = int(status)
        self.error = error
        self.message = message
        self.method = method
        self.url = url
        super().__init__(f"{status} {error}: {message}" + (f" ({method} {url})" if method else ""))


class ReachRequestError(ReachHTTPError, ValueError):
    """4xx: the request was wrong (bad states, unknown name, limits...); the message names the problem."""


class ReachAuthError(ReachRequestError, PermissionError):
    """401/403: missing or wrong bearer token."""


class ReachNotFoundError(ReachRequestError, LookupError):
    """404: unknown value function (or endpoint)."""


class ReachServerError(ReachHTTPError):
    """5xx: the service could not answer (e.g. a published version failed its integrity check)."""


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
        error, message = str(body.get("error", "error")), str(body.get("message", body))
    except Exception:
        error, message = "error", (resp.text[:500] or resp.reason_phrase)
    args = (resp.status_code, error, message, resp.request.method, str(resp.request.url))
    if resp.status_code in (401, 403):
        raise ReachAuthError(*args)
    if resp.status_code == 404:
        raise ReachNotFoundError(*args)
    if resp.status_code < 500:
        raise ReachRequestError(*args)
    raise ReachServerError(*args)


# --------------------------------------------------------------------------------------------- results
@dataclass
class QueryResult:
    """Answer of a batch query: ``value`` (N,) (+inf out of the domain), ``gradient`` (N, n) or None,
    ``in_domain`` (N,) bool, the ``safety_distance`` the values are for and the ``content_hash`` that answered."""

    name: str
    value: np.ndarray
    gradient: np.ndarray | None
    in_domain: np.ndarray
    safety_distance: float
    content_hash: str


def default_cache_dir() -> Path:
    if os.environ.get("REACH_CACHE"):
        return Path(os.environ["REACH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "reach"


def _etag_hash(resp: httpx.Response) -> str | None:
    etag = resp.headers.get("etag")
    if not etag:
        return None
    return etag.strip().removeprefix("W/").strip('"')


# ---------------------------------------------------------------------------------------------- client
class ReachClient:
    """Client of one reach service at ``url`` (e.g. ``http://127.0.0.1:8000``); use as a context manager or
    call :meth:`close`.

    token: bearer token (the service's ``REACH_TOKEN``), or None. timeout: seconds per request (connect: at most
    5 s). retries: extra attempts after a connection error, with exponential ``backoff`` seconds between them.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0, retries: int = 3,
                 backoff: float = 0.2, transport: httpx.BaseTransport | None = None):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.retries = max(0, int(retries))
        self.backoff = float(backoff)
        headers = {"User-Agent": "reach-client/1"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.url, headers=headers, transport=transport,
                                  timeout=httpx.Timeout(timeout, connect=min(float(timeout), 5.0)))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "ReachClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ReachClient({self.url!r})"

    # ------------------------------------------------------------------ transport
    def _send(self, method: str, path: str, stream: bool = False, **kw: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                request = self._http.build_request(method, path, **kw)
                resp = self._http.send(request, stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError,
                    httpx.WriteError, httpx.PoolTimeout) as exc:
                if attempt >= self.retries:
                    raise ReachConnectionError(f"cannot reach {self.url} ({method} {path}): "
                                               f"{type(exc).__name__}: {exc} (after {attempt + 1} attempts)") from exc
                time.sleep(self.backoff * (2 ** attempt))
                attempt += 1
                continue
            except httpx.TimeoutException as exc:
                raise ReachTimeoutError(f"{method} {self.url}{path}: no answer in time ({exc})") from exc
            if resp.status_code >= 400:
                if stream:
                    resp.read()
                    resp.close()
                _raise_for(resp)
            return resp

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._send(method, path, **kw).json()

    @staticmethod
    def _path(name: str) -> str:
        from reach.store import NAME_RE

        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ValueError(f"invalid value-function name {name!r}: expected <spec>/<game> "
                             f"matching {NAME_RE.pattern}")
        return f"/v1/value-functions/{name}"

    # ------------------------------------------------------------------ endpoints
    def health(self) -> dict:
        return self._json("GET", "/healthz")

    def ready(self) -> dict:
        """The /readyz answer (also when it is 503: not ready)."""
        try:
            return self._json("GET", "/readyz")
        except ReachServerError as exc:
            if exc.status == 503:
                return {"status": "not_ready", "problems": [exc.message]}
            raise

    def catalogue(self) -> list[dict]:
        """Every value function: name, model, game, state (names, units, bounds), safety distance, content hash."""
        return self._json("GET", "/v1/value-functions")["value_functions"]

    def metadata(self, name: str) -> dict:
        """Full metadata of ``name``: catalogue entry, grid, R_c table, validation record, attrs."""
        return self._json("GET", self._path(name))

    def conflict_range(self, name: str, safety_distance: float | None = None) -> float:
        params = {} if safety_distance is None else {"safety_distance": float(safety_distance)}
        return float(self._json("GET", self._path(name) + "/conflict-range", params=params)["conflict_range"])

    def slice_png(self, name: str, safety_distance: float | None = None, **slice_coords: float) -> bytes:
        """PNG of the safe set at one slice (e.g. ``vx=0.5, vy=0`` or ``theta_r=3.14, v_a=56.6, v_b=56.6``)."""
        params = {k: float(v) for k, v in slice_coords.items()}
        if safety_distance is not None:
            params["safety_distance"] = float(safety_distance)
        return self._send("GET", self._path(name) + "/slice.png", params=params).content

    def query(self, name: str, states, safety_distance: float | None = None, gradient: bool = False,
              binary: bool = True, dtype: str = "float64") -> QueryResult:
        """V_d at ``states`` (N, n) (a single (n,) state is read as N = 1).

        binary (default): the ``application/octet-stream`` form, little-endian ``dtype`` rows (``float64``, the
        default, gives exactly the embedded client's answer; ``float32`` halves the bytes). binary=False: JSON.
        """
        from clients.value_function import real_array

        a = real_array(states)
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim == 2 and a.shape[0] == 0:
            return self._empty_query(name, a, safety_distance, gradient)
        if a.ndim != 2:
            raise ValueError(f"states must have shape (N, n), got {np.shape(states)}")
        params: dict[str, Any] = {}
        if safety_distance is not None:
            params["safety_distance"] = float(safety_distance)
        path = self._path(name) + "/query"
        if not binary:
            body: dict[str, Any] = {"states": a.tolist(), "gradient": bool(gradient)}
            if safety_distance is not None:
                body["safety_distance"] = float(safety_distance)
            resp = self._send("POST", path, content=json.dumps(body, allow_nan=True).encode(),
                              headers={"Content-Type": "application/json", "Accept": "application/json"})
            out = resp.json()
            value = np.array([np.inf if v is None else v for v in out["value"]], dtype=np.float64)
            grad = None if out.get("gradient") is None else np.asarray(out["gradient"], dtype=np.float64)
            return QueryResult(name=out["name"], value=value, gradient=grad,
                               in_domain=np.asarray(out["in_domain"], dtype=bool),
                               safety_distance=float(out["safety_distance"]), content_hash=out["content_hash"])
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        dt = _DTYPES[dtype]
        data = np.ascontiguousarray(a, dtype=dt).tobytes()
        params["gradient"] = "true" if gradient else "false"
        resp = self._send("POST", path, content=data, params=params, headers={
            "Content-Type": "application/octet-stream", "Accept": "application/octet-stream",
            "X-Reach-Dtype": dtype, "X-Reach-Shape": f"{a.shape[0]},{a.shape[1]}",
        })
        out_dt = _DTYPES.get(resp.headers.get("x-reach-dtype", ""), None)
        cols = resp.headers.get("x-reach-columns", "").split(",")
        if out_dt is None or len(resp.content) % (out_dt.itemsize * len(cols)):
            raise ReachError(f"malformed binary answer from {self.url}: dtype {resp.headers.get('x-reach-dtype')!r}, "
                             f"columns {cols}, {len(resp.content)} bytes")
        table = np.frombuffer(resp.content, dtype=out_dt).reshape(-1, len(cols)).astype(np.float64)
        return QueryResult(name=name, value=table[:, 0].copy(), gradient=table[:, 2:].copy() if gradient else None,
                           in_domain=table[:, 1] != 0.0,
                           safety_distance=float(resp.headers.get("x-reach-safety-distance", "nan")),
                           content_hash=_etag_hash(resp) or "")

    def _empty_query(self, name: str, a: np.ndarray, safety_distance, gradient: bool) -> QueryResult:
        """The answer to N = 0 states, as the embedded client gives it (empty arrays), from the metadata: the
        service takes no empty body, and the name, the width and d are still checked."""
        meta = self.metadata(name)
        n = len(meta["state"])
        if a.shape[1] != n:
            raise ValueError(f"states must have shape (N, {n}), got {a.shape}")
        from clients.value_function import effective_distance

        fixed = None if meta["safety_distance"] == "shiftable" else float(meta["safety_distance"])
        d = effective_distance(name, fixed, float(meta["default_safety_distance"]), safety_distance)
        return QueryResult(name=name, value=np.empty(0), gradient=np.empty((0, n)) if gradient else None,
                           in_domain=np.empty(0, dtype=bool), safety_distance=float(d),
                           content_hash=meta["content_hash"])

    # ------------------------------------------------------------------ downloads
    def download(self, name: str, cache_dir: str | os.PathLike | None = None) -> Path:
        """Download ``name`` into the cache (unless the cached version is current); returns its version directory.

        The download is verified against its content hash before it is moved into place
        (`reach.store.IntegrityError` otherwise).
        """
        return self._download(name, cache_dir)[0]

    def fetch(self, name: str, cache_dir: str | os.PathLike | None = None, allow_stale: bool = False):
        """A local `clients.ValueFunction` of ``name`` (downloaded and verified, or from the cache when current).

        allow_stale: when the service cannot be reached, use the cached version (a warning says so).
        """
        from clients.value_function import ValueFunction
        from reach.store import open_store

        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        try:
            _path, ds = self._download(name, root)
        except (ReachConnectionError, ReachTimeoutError) as exc:
            if not allow_stale or not open_store(root).exists(name):
                raise
            warnings.warn(f"{exc}; using the cached version of {name}", RuntimeWarning, stacklevel=2)
            ds = None
        if ds is None:
            return ValueFunction.load(open_store(root), name)  # Store.open re-verifies the content hash
        return ValueFunction.from_dataset(ds, verify=False)  # verified by _download

    def _download(self, name: str, cache_dir) -> tuple[Path, Any]:
        from reach.store import IntegrityError, StoreError, open_store

        path = self._path(name)
        spec, game = name.split("/")
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        cache = open_store(root)
        cached = None
        with contextlib.suppress(StoreError, OSError):
            cached = cache.version(name)
        headers = {"If-None-Match": f'"{cached}"'} if cached else {}
        staging = root / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        tmp_zip = staging / f"{token}.zip"
        tmp_root = staging / token
        try:
            resp = self._send("GET", path + "/download", stream=True, headers=headers)
            try:
                if resp.status_code == 304:
                    return cache.path(name), None
                expected = _etag_hash(resp)
                with open(tmp_zip, "wb") as fh:
                    for chunk in resp.iter_bytes(1 << 20):
                        fh.write(chunk)
            except httpx.TransportError as exc:
                raise ReachConnectionError(f"download of {name} from {self.url} broke off: {exc}") from exc
            finally:
                resp.close()
            vdir_name, digest = self._extract(tmp_zip, tmp_root / spec / game, name, expected)
            (tmp_root / spec / game / "current").write_text(vdir_name + "\n", encoding="utf-8")
            ds = open_store(tmp_root).open(name)  # recomputes the content hash (IntegrityError on mismatch)
            if ds.attrs.get("content_hash") != digest:
                raise IntegrityError(f"{name}: downloaded data hashes to {ds.attrs.get('content_hash')}, "
                                     f"the service announced {digest}")
            final_dir = root / spec / game
            final_dir.mkdir(parents=True, exist_ok=True)
            final = final_dir / vdir_name
            if not final.exists():
                try:
                    os.rename(tmp_root / spec / game / vdir_name, final)
                except OSError:
                    if not final.exists():
                        raise
            previous = None
            with contextlib.suppress(OSError):
                previous = (final_dir / "current").read_text(encoding="utf-8").strip()
            pointer = final_dir / f".current.{token}.tmp"
            pointer.write_text(vdir_name + "\n", encoding="utf-8")
            os.replace(pointer, final_dir / "current")
            for old in final_dir.glob("*.zarr"):  # keep the new and the previous version (readers mid-load)
                if old.name not in (vdir_name, previous):
                    shutil.rmtree(old, ignore_errors=True)
            return final, ds
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp_zip.unlink()
            shutil.rmtree(tmp_root, ignore_errors=True)

    @staticmethod
    def _extract(zip_path: Path, dest: Path, name: str, expected: str | None) -> tuple[str, str]:
        """Unpack a download into ``dest`` after checking its manifest and member paths; (version dir, hash)."""
        from reach.store import IntegrityError

        try:
            with zipfile.ZipFile(zip_path) as zf:
                manifest = json.loads(zf.read("reach.json"))
                digest = str(manifest.get("content_hash", ""))
                vdir_name = str(manifest.get("version_dir", ""))
                if manifest.get("name") != name:
                    raise IntegrityError(f"download manifest names {manifest.get('name')!r}, expected {name!r}")
                if not re.fullmatch(r"[0-9a-f]{64}", digest) or vdir_name != f"{digest[:16]}.zarr" \
                        or not _VERSION_DIR.match(vdir_name):
                    raise IntegrityError(f"download manifest of {name} is malformed: {manifest}")
                if expected is not None and expected != digest:
                    raise IntegrityError(f"{name}: ETag {expected} differs from the manifest's hash {digest}")
                members = []
                for info in zf.infolist():
                    if info.filename == "reach.json":
                        continue
                    parts = PurePosixPath(info.filename).parts
                    if (not parts or parts[0] != vdir_name or ".." in parts or info.filename.startswith("/")
                            or "\\" in info.filename):
                        raise IntegrityError(f"download of {name} holds an unexpected path {info.filename!r}")
                    members.append(info)
                dest.mkdir(parents=True, exist_ok=True)
                zf.extractall(dest, members=members)
        except (zipfile.BadZipFile, KeyError, ValueError) as exc:
            if isinstance(exc, IntegrityError):
                raise
            raise IntegrityError(f"download of {name} is not a valid archive: {exc}") from None
        return vdir_name, digest

