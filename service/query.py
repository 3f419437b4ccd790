"""Batch queries: decoding the JSON and binary request forms, evaluating through the client, encoding the answer.

Binary form (``application/octet-stream``): the request body is the states as little-endian rows, ``N x n`` values of
the dtype named by the ``X-Reach-Dtype`` header (``float32``, the default, or ``float64``); ``X-Reach-Shape: N,n`` is
optional and checked against the body length. The answer is ``N x k`` little-endian rows of the same dtype with the
columns ``value, in_domain (1 or 0), d<state>...`` (the gradient columns only when asked), described by the
``X-Reach-Shape``, ``X-Reach-Dtype`` and ``X-Reach-Columns`` headers. Out-of-domain states carry ``+inf``.

No per-point Python on the binary path: ``numpy.frombuffer`` -> ``ValueFunction`` (the numba kernel of
``clients/interp.py``) -> ``ndarray.tobytes``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

import anyio.to_thread
import numpy as np
from pydantic import ValidationError

from clients.value_function import StateError, ValueFunction
from service.errors import ServiceError, describe_errors
from service.models import BINARY_MEDIA, JSON_MEDIA, QueryOptions, QueryRequest, QueryResponse

Format = Literal["json", "binary"]

DTYPES = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}
SHAPE_HEADER = "x-reach-shape"
DTYPE_HEADER = "x-reach-dtype"
COLUMNS_HEADER = "x-reach-columns"
SAFETY_DISTANCE_HEADER = "x-reach-safety-distance"


@dataclass
class QueryInput:
    states: np.ndarray  # (N, n) float64, C-contiguous
    safety_distance: float | None
    gradient: bool
    dtype: np.dtype  # of the binary answer


@dataclass
class QueryResult:
    value: np.ndarray  # (N,) float64, +inf out of the domain
    gradient: np.ndarray | None  # (N, n)
    in_domain: np.ndarray  # (N,) bool
    safety_distance: float


# ------------------------------------------------------------------------------------- negotiation
def _media(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def request_format(content_type: str | None) -> Format:
    """JSON (also when no Content-Type is given) or binary; 415 for anything else."""
    media = _media(content_type or "")
    if media in ("", JSON_MEDIA) or media.endswith("+json"):
        return "json"
    if media == BINARY_MEDIA:
        return "binary"
    raise ServiceError(415, "unsupported_media_type",
                       f"Content-Type {content_type!r} is not supported: send {JSON_MEDIA} or {BINARY_MEDIA}")


def response_format(accept: str | None, default: Format) -> Format:
    """The form of the answer from the Accept header (highest q wins; ``*/*`` or none: the request's form)."""
    if not accept or not accept.strip():
        return default
    best: tuple[float, int, Format] | None = None
    for pos, part in enumerate(accept.split(",")):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        q = 1.0
        for f in fields[1:]:
            if f.lower().startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        if not q > 0:
            continue
        if media == JSON_MEDIA:
            fmt: Format = "json"
        elif media == BINARY_MEDIA:
            fmt = "binary"
        elif media in ("*/*", "application/*"):
            fmt = default
        else:
            continue
        key = (q, -pos, fmt)
        if best is None or key[:2] > best[:2]:
            best = key
    if best is None:
        raise ServiceError(406, "not_acceptable",
                           f"Accept {accept!r} allows neither {JSON_MEDIA} nor {BINARY_MEDIA}")
    return best[2]


# ------------------------------------------------------------------------------------------ decoding
def _merge(name: str, query_value, body_value):
    if query_value is not None and body_value is not None and query_value != body_value:
        raise ServiceError(400, "conflicting_parameters",
                           f"{name} is given both as a query parameter ({query_value}) and in the body ({body_value})")
    return body_value if body_value is not None else query_value


def options(query_params, headers) -> QueryOptions:
    """:class:`QueryOptions` from the request's query parameters and headers (422 naming the bad one)."""
    raw: dict[str, str] = {}
    for field, (where, name) in QueryOptions.SOURCES.items():
        value = query_params.get(name) if where == "query" else headers.get(name)
        if value is not None:
            raw[field] = value
    known = {name for where, name in QueryOptions.SOURCES.values() if where == "query"}
    for name in query_params.keys():
        if name not in known:
            raw[name] = query_params[name]      # a misspelt option is an error (extra="forbid"), not ignored
        elif len(query_params.getlist(name)) > 1:
            raise ServiceError(422, "invalid_input", f"query parameter {name!r}: given "
                               f"{len(query_params.getlist(name))} times; give it once")
    try:
        return QueryOptions.model_validate(raw)
    except ValidationError as exc:
        errors = []
        for e in exc.errors():
            where, name = QueryOptions.SOURCES.get(str(e["loc"][0]), ("query", str(e["loc"][0])))
            errors.append({**e, "loc": (where, name)})
        error, message = describe_errors(errors)
        raise ServiceError(422, error, message) from None


def decode_json(body: bytes, vf: ValueFunction, max_points: int, opts: QueryOptions) -> QueryInput:
    if not body:
        raise ServiceError(400, "empty_body", "the request body is empty: send {\"states\": [[...], ...]}")
    try:
        req = QueryRequest.model_validate_json(body)
    except ValidationError as exc:
        error, message = describe_errors([{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors()])
        raise ServiceError(400 if error == "malformed_json" else 422, error, message) from None
    n_pts = len(req.states)
    if n_pts > max_points:
        raise ServiceError(413, "too_many_points", f"{n_pts} states in one query; the limit is {max_points}")
    n = vf.n
    try:
        states = np.array(req.states, dtype=np.float64)
    except ValueError:
        states = None
    if states is None or states.ndim != 2 or states.shape[1] != n:
        bad = next((i for i, row in enumerate(req.states) if len(row) != n), 0)
        raise ServiceError(422, "invalid_states",
                           f"state {bad} has {len(req.states[bad])} coordinates; {vf.name} takes {n} "
                           f"({', '.join(vf.state_names)})")
    return QueryInput(states=states,
                      safety_distance=_merge("safety_distance", opts.safety_distance, req.safety_distance),
                      gradient=bool(_merge("gradient", opts.gradient, req.gradient)), dtype=DTYPES["float64"])


def decode_binary(body: bytes, vf: ValueFunction, max_points: int, opts: QueryOptions) -> QueryInput:
    dtype = DTYPES[opts.dtype]
    n = vf.n
    row = n * dtype.itemsize
    if not body:
        raise ServiceError(400, "empty_body", f"the request body is empty: send N rows of {n} {opts.dtype} "
                           f"values ({', '.join(vf.state_names)})")
    if len(body) % row:
        raise ServiceError(400, "invalid_binary_length",
                           f"body of {len(body)} bytes is not a whole number of rows of {n} {opts.dtype} values "
                           f"({row} bytes per state: {', '.join(vf.state_names)})")
    n_pts = len(body) // row
    if opts.shape is not None and tuple(opts.shape) != (n_pts, n):
        raise ServiceError(400, "invalid_binary_length",
                           f"X-Reach-Shape {opts.shape[0]},{opts.shape[1]} does not match the body: "
                           f"{len(body)} bytes of {opts.dtype} are {n_pts},{n} for {vf.name}")
    if n_pts > max_points:
        raise ServiceError(413, "too_many_points", f"{n_pts} states in one query; the limit is {max_points}")
    states = np.frombuffer(body, dtype=dtype).reshape(n_pts, n).astype(np.float64)
    return QueryInput(states=states, safety_distance=opts.safety_distance, gradient=bool(opts.gradient), dtype=dtype)


# ---------------------------------------------------------------------------------------- evaluation
def evaluate(vf: ValueFunction, inp: QueryInput) -> QueryResult:
    """The client's answer (same kernel, same arguments as an embedded ``ValueFunction`` call)."""
    try:
        d = vf.effective_safety_distance(inp.safety_distance)
    except ValueError as exc:
        raise ServiceError(422, "invalid_safety_distance", str(exc)) from None
    try:
        if inp.gradient:
            value, grad = vf.value_and_gradient(inp.states, inp.safety_distance)
        else:
            value, grad = vf.value(inp.states, inp.safety_distance), None
    except StateError as exc:
        raise ServiceError(422, "invalid_states", str(exc)) from None
    except ValueError as exc:
        raise ServiceError(422, "invalid_safety_distance", str(exc)) from None
    return QueryResult(value=value, gradient=grad, in_domain=np.isfinite(value), safety_distance=d)


def _lookup(vf: ValueFunction, states: np.ndarray, safety_distance, gradient: bool):
    if gradient:
        return vf.value_and_gradient(states, safety_distance)
    return vf.value(states, safety_distance), None


async def evaluate_async(vf: ValueFunction, inp: QueryInput, threadpool_points: int, threads: int) -> QueryResult:
    """:func:`evaluate`, off the event loop for large batches, split across worker threads.

    Pointwise identical to one call (the kernel answers each state on its own). If a part finds a bad state,
    the whole batch is evaluated again in one call so the error names the state's index in the request.
    """
    n_pts = inp.states.shape[0]
    if n_pts < threadpool_points:
        return evaluate(vf, inp)
    parts = max(1, min(int(threads), n_pts // max(1, threadpool_points // 2)))
    if parts == 1:
        return await anyio.to_thread.run_sync(evaluate, vf, inp)
    try:
        d = vf.effective_safety_distance(inp.safety_distance)
    except ValueError as exc:
        raise ServiceError(422, "invalid_safety_distance", str(exc)) from None
    bounds = np.linspace(0, n_pts, parts + 1).astype(int)
    try:
        outs = await asyncio.gather(*(
            anyio.to_thread.run_sync(_lookup, vf, inp.states[a:b], inp.safety_distance, inp.gradient)
            for a, b in zip(bounds[:-1], bounds[1:])
        ))
    except ValueError:  # StateError in a part: answer with the message of the whole batch
        return await anyio.to_thread.run_sync(evaluate, vf, inp)
    value = np.concatenate([o[0] for o in outs])
    grad = np.concatenate([o[1] for o in outs]) if inp.gradient else None
    return QueryResult(value=value, gradient=grad, in_domain=np.isfinite(value), safety_distance=d)


# ------------------------------------------------------------------------------------------ encoding
def encode_json(name: str, content_hash: str, res: QueryResult) -> bytes:
    # model_construct: the arrays are already checked; pydantic-core writes +inf as null (ser_json_inf_nan)
    body = QueryResponse.model_construct(
        name=name, content_hash=content_hash, safety_distance=res.safety_distance, n=int(res.value.shape[0]),
        value=res.value.tolist(), gradient=None if res.gradient is None else res.gradient.tolist(),
        in_domain=res.in_domain.tolist(),
    )
    return body.model_dump_json().encode()


def binary_columns(vf: ValueFunction, gradient: bool) -> list[str]:
    return ["value", "in_domain"] + ([f"d{s}" for s in vf.state_names] if gradient else [])


def encode_binary(vf: ValueFunction, res: QueryResult, dtype: np.dtype) -> tuple[bytes, dict[str, str]]:
    n_pts = res.value.shape[0]
    cols = binary_columns(vf, res.gradient is not None)
    out = np.empty((n_pts, len(cols)), dtype=dtype)
    out[:, 0] = res.value
    out[:, 1] = res.in_domain
    if res.gradient is not None:
        out[:, 2:] = res.gradient
    headers = {
        "X-Reach-Shape": f"{n_pts},{len(cols)}",
        "X-Reach-Dtype": "float32" if dtype == DTYPES["float32"] else "float64",
        "X-Reach-Columns": ",".join(cols),
    }
    return out.tobytes(), headers
