"""``/v1/value-functions``: catalogue, metadata, batch queries, R_c, safe-set pictures and downloads.

Thin routes: the work is in ``service.registry`` (loading, hot reload), ``service.query`` (wire formats, the
client's kernel), ``service.slices`` and ``service.download``. Every answer about one value function carries
``ETag: "<content hash>"``; the GETs answer ``If-None-Match`` with 304.
"""

from __future__ import annotations

import os
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from service.deps import EntryDep, RegistryDep, entry_from_path
from service.download import build_zip
from service.errors import ServiceError
from service.models import (
    BINARY_MEDIA,
    ERROR_RESPONSES,
    JSON_MEDIA,
    PNG_MEDIA,
    ZIP_MEDIA,
    Catalogue,
    ConflictRangeResponse,
    ErrorResponse,
    Metadata,
    QueryOptions,
    QueryResponse,
    ValueFunctionPath,
)
from service.query import decode_binary, decode_json, encode_binary, encode_json, evaluate_async, options, \
    request_format, response_format
from service.registry import Entry
from service.slices import SliceParams, slice_of

router = APIRouter(prefix="/v1/value-functions", tags=["value functions"])

_BINARY_SCHEMA = {"type": "string", "format": "binary"}
_ERRORS = dict(ERROR_RESPONSES)
_QUERY_ERRORS = {
    **_ERRORS,
    406: {"model": ErrorResponse, "description": "Accept allows neither JSON nor the binary form."},
    413: {"model": ErrorResponse, "description": "Body over the size limit, or more states than the limit."},
    415: {"model": ErrorResponse, "description": "Content-Type is neither JSON nor application/octet-stream."},
}
_NOT_MODIFIED = {304: {"description": "Not modified (If-None-Match matched the ETag)."}}
_ETAG_HEADER = {"ETag": {"description": "Content hash of the value function (quoted).", "schema": {"type": "string"}}}

SafetyDistance = Annotated[
    float | None,
    Query(ge=0.0, allow_inf_nan=False, description="Safety distance d (m); default: the value function's."),
]


def _not_modified(request: Request, entry: Entry) -> Response | None:
    inm = request.headers.get("if-none-match")
    if inm and (inm.strip() == "*" or entry.etag in [t.strip().removeprefix("W/") for t in inm.split(",")]):
        return Response(status_code=304, headers={"ETag": entry.etag})
    return None


def _etag(response: Response, entry: Entry) -> None:
    response.headers["ETag"] = entry.etag


@router.get("", response_model=Catalogue, summary="The catalogue of value functions.",
            responses={401: ERROR_RESPONSES[401]})
async def catalogue(registry: RegistryDep) -> Catalogue:
    entries = await anyio.to_thread.run_sync(registry.refresh_all)
    return Catalogue(value_functions=[e.catalogue for e in entries])


@router.get("/{spec}/{game}", response_model=Metadata, summary="Full metadata, the R_c table and the validation record.",
            responses={**_ERRORS, **_NOT_MODIFIED, 200: {"headers": _ETAG_HEADER}})
async def metadata(entry: EntryDep, request: Request, response: Response) -> Metadata | Response:
    if (nm := _not_modified(request, entry)) is not None:
        return nm
    _etag(response, entry)
    return entry.metadata


_QUERY_BODY = {
    "requestBody": {
        "required": True,
        "description": "JSON (`QueryRequest`) or binary: the states as little-endian rows of `X-Reach-Dtype` "
                       "(float32 by default), N x n values.",
        "content": {
            JSON_MEDIA: {"schema": {"$ref": "#/components/schemas/QueryRequest"}},
            BINARY_MEDIA: {"schema": _BINARY_SCHEMA},
        },
    }
}
_QUERY_200 = {
    "description": "Values, in-domain flags and (when asked) gradients. JSON (`QueryResponse`) or binary "
                   "(Accept: application/octet-stream, or a binary request without Accept): N x k little-endian rows, "
                   "columns value, in_domain (1/0), then d<state> per state dimension when the gradient was asked.",
    "content": {BINARY_MEDIA: {"schema": _BINARY_SCHEMA}},
    "headers": {
        **_ETAG_HEADER,
        "X-Reach-Shape": {"description": "Binary answer: `N,k`.", "schema": {"type": "string"}},
        "X-Reach-Dtype": {"description": "Binary answer: `float32` or `float64`.", "schema": {"type": "string"}},
        "X-Reach-Columns": {"description": "Binary answer: the column names.", "schema": {"type": "string"}},
        "X-Reach-Safety-Distance": {"description": "The d (m) the values are for.", "schema": {"type": "string"}},
    },
}


@router.post(
    "/{spec}/{game}/query",
    response_model=QueryResponse,
    summary="Evaluate V_d (and optionally its gradient) at a batch of relative states.",
    responses={**_QUERY_ERRORS, 200: _QUERY_200},
    openapi_extra={**_QUERY_BODY,
                   "parameters": ValueFunctionPath.openapi_parameters() + QueryOptions.openapi_parameters()},
)
async def query(request: Request) -> Response:
    # the hot path: path parameters and options are validated by pydantic models in one step each (FastAPI's
    # per-parameter resolution would cost more than the kernel for a single state); documented via openapi_extra
    entry = await entry_from_path(request)
    settings = request.app.state.settings
    in_fmt = request_format(request.headers.get("content-type"))
    out_fmt = response_format(request.headers.get("accept"), in_fmt)
    opts = options(request.query_params, request.headers)  # one pydantic validation for all the options
    body = await request.body()
    vf = entry.vf
    if in_fmt == "json":
        inp = decode_json(body, vf, settings.max_points, opts)
    else:
        inp = decode_binary(body, vf, settings.max_points, opts)
    result = await evaluate_async(vf, inp, settings.threadpool_points, settings.eval_threads)
    request.app.state.metrics.points.labels(entry.name, out_fmt).inc(inp.states.shape[0])
    headers = {"ETag": entry.etag, "X-Reach-Safety-Distance": repr(result.safety_distance)}
    if out_fmt == "binary":
        content, extra = encode_binary(vf, result, inp.dtype)
        headers.update(extra)
        return Response(content, media_type=BINARY_MEDIA, headers=headers)
    return Response(encode_json(entry.name, entry.content_hash, result), media_type=JSON_MEDIA, headers=headers)


@router.get("/{spec}/{game}/conflict-range", response_model=ConflictRangeResponse,
            summary="Potential-conflict range R_c(d), interpolated from the table (refused outside it).",
            responses={**_ERRORS, **_NOT_MODIFIED, 200: {"headers": _ETAG_HEADER}})
async def conflict_range(entry: EntryDep, request: Request, response: Response,
                         safety_distance: SafetyDistance = None) -> ConflictRangeResponse | Response:
    if (nm := _not_modified(request, entry)) is not None:
        return nm
    vf = entry.vf
    table = entry.metadata.conflict_range_table
    if not table:
        raise ServiceError(422, "no_conflict_range", f"{entry.name} holds no conflict_range table")
    try:
        d = vf.effective_safety_distance(safety_distance)
        rc = vf.conflict_range(safety_distance)
    except ValueError as exc:
        raise ServiceError(422, "invalid_safety_distance", str(exc)) from None
    _etag(response, entry)
    return ConflictRangeResponse(name=entry.name, content_hash=entry.content_hash, safety_distance=d,
                                 conflict_range=rc,
                                 table_range=(table[0].safety_distance, table[-1].safety_distance))


@router.get("/{spec}/{game}/slice.png", response_class=Response,
            summary="Safe set {V0 >= d} on the relative-position plane at one slice (the picture `reach plot` draws).",
            responses={**_ERRORS, **_NOT_MODIFIED,
                       200: {"content": {PNG_MEDIA: {"schema": _BINARY_SCHEMA}}, "headers": _ETAG_HEADER,
                             "description": "PNG image."}})
async def slice_png(entry: EntryDep, request: Request, params: Annotated[SliceParams, Query()]) -> Response:
    sl, d = slice_of(entry, params)
    renderer = request.app.state.slices
    png = await anyio.to_thread.run_sync(renderer.render, entry, sl, d)
    return Response(png, media_type=PNG_MEDIA, headers={"ETag": entry.etag, "Cache-Control": "no-cache"})


@router.get("/{spec}/{game}/download", response_class=FileResponse,
            summary="The published version as a zip (Zarr v3 directory + reach.json manifest), for "
                    "`ValueFunction.fetch`; verify the content hash before use.",
            responses={**_ERRORS, **_NOT_MODIFIED,
                       200: {"content": {ZIP_MEDIA: {"schema": _BINARY_SCHEMA}}, "headers": _ETAG_HEADER,
                             "description": "Zip archive."}})
async def download(entry: EntryDep, request: Request, registry: RegistryDep) -> Response:
    if (nm := _not_modified(request, entry)) is not None:
        return nm
    try:
        path = await anyio.to_thread.run_sync(build_zip, registry.store, entry)
    except FileNotFoundError:  # the version was replaced and collected since it was loaded: take the new one
        registry.expire(entry.name)
        entry = await anyio.to_thread.run_sync(registry.get, entry.name)
        try:
            path = await anyio.to_thread.run_sync(build_zip, registry.store, entry)
        except FileNotFoundError:
            raise ServiceError(503, "unavailable", f"{entry.name}: the published version changed while packaging; "
                               "retry") from None
    filename = f"{entry.name.replace('/', '-')}-{entry.content_hash[:16]}.zip"
    return FileResponse(path, media_type=ZIP_MEDIA, filename=filename, headers={"ETag": entry.etag},
                        background=BackgroundTask(os.unlink, path))
