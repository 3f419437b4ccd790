"""clients.http.ReachClient and ValueFunction.fetch against a real uvicorn server on loopback (bearer token on),
plus the client's verification, retries and error classes with mock transports."""

from __future__ import annotations

import io
import json
import shutil
import socket
import threading
import time
import zipfile

import httpx
import numpy as np
import pytest
import uvicorn

from clients import ValueFunction
from clients.http import (
    ReachAuthError,
    ReachClient,
    ReachConnectionError,
    ReachNotFoundError,
    ReachRequestError,
    ReachServerError,
    ReachTimeoutError,
)
from reach.store import IntegrityError, open_store
from service.app import create_app
from service.settings import Settings
from tests.conftest import TINY_NAMES

QUAD = "quad_tiny/cooperative"
TAXI = "taxi_tiny/worst_case"
TOKEN = "t0ken"


@pytest.fixture(scope="module")
def live(tiny_store, tmp_path_factory):
    """(url, store path): the service on a private copy of the tiny store, in a thread on a loopback port."""
    root = tmp_path_factory.mktemp("live") / "store"
    shutil.copytree(tiny_store, root, ignore=shutil.ignore_patterns(".complete"))
    app = create_app(Settings(store=root, reload_interval=0.0, token=TOKEN))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", root
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def client(live):
    with ReachClient(live[0], token=TOKEN, timeout=30) as c:
        yield c


def states_for(vf: ValueFunction, n: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = vf.lo + (vf.hi - vf.lo) * rng.random((n, vf.n))
    s[-1, 1] = vf.hi[1] * 5  # far away: out of the domain
    return s


def test_catalogue_metadata_rc_slice(client, tiny_store):
    cat = client.catalogue()
    assert {e["name"] for e in cat} == set(TINY_NAMES)
    vf = ValueFunction.load(tiny_store, QUAD)
    meta = client.metadata(QUAD)
    assert meta["content_hash"] == vf.content_hash and meta["grid_shape"] == list(vf.shape)
    assert client.conflict_range(QUAD) == vf.conflict_range()
    assert client.conflict_range(QUAD, 0.3) == vf.conflict_range(0.3)
    assert client.slice_png(TAXI, theta_r=3.0).startswith(b"\x89PNG")
    assert client.health() == {"status": "ok"} and client.ready()["status"] == "ready"


@pytest.mark.parametrize("name", [QUAD, TAXI])
def test_query_equals_embedded(client, tiny_store, name):
    vf = ValueFunction.load(tiny_store, name)
    s = states_for(vf)
    d = 0.4 if vf.model.name == "quadrotor" else 300.0
    v, g = vf.value_and_gradient(s, d)
    for binary in (True, False):
        res = client.query(name, s, safety_distance=d, gradient=True, binary=binary)
        assert np.array_equal(res.value, v) and np.array_equal(res.gradient, g)  # float64 both ways: exact
        assert np.array_equal(res.in_domain, vf.in_domain(s)) and not res.in_domain[-1]
        assert res.safety_distance == d and res.content_hash == vf.content_hash
    s32 = s.astype(np.float32).astype(np.float64)
    res = client.query(name, s32, dtype="float32")
    assert np.array_equal(res.value, vf.value(s32).astype(np.float32).astype(np.float64)) and res.gradient is None
    one = client.query(name, s[0])  # a single state
    assert one.value.shape == (1,) and one.value[0] == vf.value(s[:1])[0]
    # no states: empty arrays, as the embedded client answers (the name and the width still checked)
    for binary in (True, False):
        none = client.query(name, np.empty((0, vf.n)), gradient=True, binary=binary)
        assert none.value.shape == (0,) and none.gradient.shape == (0, vf.n) and none.in_domain.shape == (0,)
        assert none.content_hash == vf.content_hash and vf.value(np.empty((0, vf.n))).shape == (0,)
    with pytest.raises(ValueError, match="real numbers"):
        client.query(name, [["0.1"] * vf.n])
    with pytest.raises(ValueError, match=f"\\(N, {vf.n}\\)"):
        client.query(name, np.empty((0, vf.n + 1)))
    with pytest.raises(ReachNotFoundError):
        client.query("nope/cooperative", np.empty((0, vf.n)))


def test_errors(client, live):
    with pytest.raises(ReachNotFoundError) as exc:
        client.metadata("nope/cooperative")
    assert exc.value.status == 404 and "nope/cooperative" in str(exc.value)
    with pytest.raises(ReachRequestError) as exc:
        client.query(QUAD, [[0.0, 0.0, 5.0, 0.0]])
    assert exc.value.status == 422 and exc.value.error == "invalid_states" and "vx" in exc.value.message
    with pytest.raises(ReachRequestError, match="4"):
        client.query(QUAD, [[0.0, 0.0, 0.0]], binary=False)
    with pytest.raises(ReachRequestError, match="outside the conflict_range table"):
        client.conflict_range(QUAD, 10.0)
    with pytest.raises(ValueError, match="invalid value-function name"):
        client.metadata("../etc/passwd")
    with ReachClient(live[0]) as anonymous, pytest.raises(ReachAuthError) as exc:
        anonymous.catalogue()
    assert exc.value.status == 401
    with ReachClient(live[0], token="wrong") as wrong, pytest.raises(ReachAuthError):
        wrong.query(QUAD, [[0.0, 0.0, 0.0, 0.0]])
    with ReachClient(live[0]) as anonymous:
        assert anonymous.health()["status"] == "ok"  # health needs no token


def test_fetch_cache_and_hot_reload(live, tmp_path, tiny_store):
    url, root = live
    cache = tmp_path / "cache"
    name = "taxi_tiny/cooperative"
    vf = ValueFunction.fetch(url, name, cache_dir=cache, token=TOKEN)
    ref = ValueFunction.load(tiny_store, name)
    assert vf.content_hash == ref.content_hash
    s = states_for(ref, 200)
    assert np.array_equal(vf.value_and_gradient(s)[1], ref.value_and_gradient(s)[1])
    assert vf.conflict_range() == ref.conflict_range()
    spec, game = name.split("/")
    version_dir = cache / spec / game / f"{ref.content_hash[:16]}.zarr"
    assert version_dir.is_dir()
    assert not any((cache / ".staging").iterdir())  # no leftovers of the download
    mtime = version_dir.stat().st_mtime_ns

    # second fetch: the service answers 304, the cache is reused (and re-verified on load)
    with ReachClient(url, token=TOKEN) as c:
        again = c.fetch(name, cache_dir=cache)
        metrics = c._send("GET", "/metrics").text
    assert again.content_hash == ref.content_hash and version_dir.stat().st_mtime_ns == mtime
    assert 'route="/v1/value-functions/{spec}/{game}/download",status="304"' in metrics

    # a new version published on the server is downloaded next time
    store = open_store(root)
    ds = store.open(name)
    ds["value"] = ds["value"] + 2.0
    new_hash = store.publish(name, ds, overwrite=True)
    newer = ValueFunction.fetch(url, name, cache_dir=cache, token=TOKEN)
    assert newer.content_hash == new_hash != ref.content_hash
    inside = np.isfinite(ref.value(s))
    assert np.allclose(newer.value(s)[inside], ref.value(s)[inside] + 2.0)
    assert open_store(cache).version(name) == new_hash

    # the service gone: allow_stale falls back to the (verified) cache, otherwise a clear error
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    with pytest.warns(RuntimeWarning, match="cached"):
        stale = ValueFunction.fetch(dead, name, cache_dir=cache, allow_stale=True, timeout=2)
    assert stale.content_hash == new_hash
    with ReachClient(dead, retries=1, backoff=0.0, timeout=2) as c, pytest.raises(ReachConnectionError):
        c.fetch(name, cache_dir=cache)


# ---------------------------------------------------------------------------- verification with mock servers
def _download_bytes(live, name) -> tuple[bytes, str]:
    with httpx.Client(base_url=live[0], headers={"Authorization": f"Bearer {TOKEN}"}) as h:
        r = h.get(f"/v1/value-functions/{name}/download")
    return r.content, r.headers["etag"]


def _rezip(data: bytes, edit) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            content = edit(info.filename, src.read(info.filename))
            if content is not None:
                dst.writestr(info.filename, content)
        extra = edit("__extra__", None)
        if extra:
            dst.writestr(*extra)
    return out.getvalue()


def _serving(data: bytes, etag: str) -> httpx.MockTransport:
    return httpx.MockTransport(lambda req: httpx.Response(200, content=data, headers={
        "etag": etag, "content-type": "application/zip"}))


def test_fetch_refuses_tampered_downloads(live, tmp_path):
    data, etag = _download_bytes(live, QUAD)

    def flip_attr(fname, content):  # change the metadata (attrs are hashed)
        if fname.endswith(".zarr/zarr.json"):
            meta = json.loads(content)
            meta["attributes"]["horizon"] = 123.0
            return json.dumps(meta).encode()
        return content if fname != "__extra__" else None

    def escape(fname, content):  # a member outside the version directory
        if fname == "__extra__":
            return ("../../evil.txt", b"x")
        return content

    def other_hash(fname, content):  # the manifest disagrees with the ETag
        if fname == "reach.json":
            m = json.loads(content)
            m["content_hash"] = "0" * 64
            m["version_dir"] = "0" * 16 + ".zarr"
            return json.dumps(m).encode()
        return content if fname != "__extra__" else None

    for edit, match in ((flip_attr, "hash mismatch"), (escape, "unexpected path"), (other_hash, "ETag")):
        cache = tmp_path / edit.__name__
        with ReachClient("http://mock", transport=_serving(_rezip(data, edit), etag)) as c:
            with pytest.raises(IntegrityError, match=match):
                c.fetch(QUAD, cache_dir=cache)
        assert not open_store(cache).exists(QUAD)  # nothing unverified became visible
        assert not (tmp_path.parent / "evil.txt").exists()
    with ReachClient("http://mock", transport=_serving(b"not a zip", etag)) as c:
        with pytest.raises(IntegrityError, match="not a valid archive"):
            c.fetch(QUAD, cache_dir=tmp_path / "garbage")


def test_retries_and_timeouts():
    calls = []

    def flaky(request):
        calls.append(request.url.path)
        if len(calls) < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"status": "ok"})

    with ReachClient("http://mock", transport=httpx.MockTransport(flaky), retries=3, backoff=0.0) as c:
        assert c.health() == {"status": "ok"} and len(calls) == 3

    def down(request):
        raise httpx.ConnectError("refused", request=request)

    with ReachClient("http://mock", transport=httpx.MockTransport(down), retries=2, backoff=0.0) as c:
        with pytest.raises(ReachConnectionError, match="after 3 attempts"):
            c.catalogue()

    def slow(request):
        raise httpx.ReadTimeout("slow", request=request)

    with ReachClient("http://mock", transport=httpx.MockTransport(slow)) as c, pytest.raises(ReachTimeoutError):
        c.catalogue()

    def broken(request):
        return httpx.Response(500, text="<html>oops</html>")

    with ReachClient("http://mock", transport=httpx.MockTransport(broken)) as c:
        with pytest.raises(ReachServerError) as exc:
            c.catalogue()
    assert exc.value.status == 500 and "oops" in exc.value.message
    with pytest.raises(ValueError, match="http"):
        ReachClient("ftp://x")
