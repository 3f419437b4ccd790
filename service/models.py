"""Pydantic models for every request and response of the service (they are the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, field_validator

#: A spec name (the TOML file's stem). Together with the game it is the value function's store name; the pattern
#: keeps every request inside the store (no ``/``, ``.``, or ``..``).
SPEC_PATTERN = r"^[a-z0-9_]{1,64}$"
GAMES = ("cooperative", "worst_case")
Game = Literal["cooperative", "worst_case"]

JSON_MEDIA = "application/json"
BINARY_MEDIA = "application/octet-stream"
PNG_MEDIA = "image/png"
ZIP_MEDIA = "application/zip"


class ValueFunctionPath(BaseModel):
    """The `{spec}/{game}` path parameters (validated in one step on the query route, the hot path)."""

    spec: str = Field(pattern=SPEC_PATTERN, description="Spec name (the TOML file's stem).", examples=["quadrotor"])
    game: Game = Field(description="Game.")

    @property
    def name(self) -> str:
        return f"{self.spec}/{self.game}"

    @classmethod
    def openapi_parameters(cls) -> list[dict[str, Any]]:
        return [
            {"name": "spec", "in": "path", "required": True, "description": cls.model_fields["spec"].description,
             "schema": {"type": "string", "pattern": SPEC_PATTERN}, "example": "quadrotor"},
            {"name": "game", "in": "path", "required": True, "description": cls.model_fields["game"].description,
             "schema": {"type": "string", "enum": list(GAMES)}},
        ]


class ErrorResponse(BaseModel):
    """Body of every 4xx/5xx answer."""

    status: int = Field(description="HTTP status code, repeated.")
    error: str = Field(description="Short machine-readable problem class, e.g. `invalid_states`.")
    message: str = Field(description="What was wrong, naming the offending input.")


class StateDimension(BaseModel):
    """One dimension of the relative state a value function is defined over."""

    name: str
    units: str
    lo: float = Field(description="Lowest grid coordinate.")
    hi: float = Field(description="Highest grid coordinate.")
    periodic: bool = Field(description="Wraps around (headings); any finite value is accepted and wrapped.")
    position: bool = Field(
        description="A relative-position dimension: states beyond its extent are out of the domain (no interaction), "
        "not an error."
    )


class CatalogueEntry(BaseModel):
    """What a client needs to know to query a value function."""

    name: str = Field(description="`<spec>/<game>`.", examples=["quadrotor/cooperative"])
    spec: str
    game: Game
    model: str = Field(description="Dynamics model, e.g. `quadrotor`, `air_taxi`.")
    state: list[StateDimension]
    safety_distance: float | Literal["shiftable"] = Field(
        description="The safety distance d (m) the grid was computed for, or `shiftable` when any d may be asked "
        "(undiscounted grids: V_d = V0 - d)."
    )
    default_safety_distance: float = Field(description="The d used when a query gives none (m).")
    content_hash: str = Field(description="sha256 of the published arrays and attributes; also the ETag.")
    url: str = Field(description="Path of this value function's metadata.")


class Catalogue(BaseModel):
    value_functions: list[CatalogueEntry]


class ConflictRangeRow(BaseModel):
    safety_distance: float = Field(description="d (m).")
    conflict_range: float = Field(description="R_c(d) (m).")


class Metadata(CatalogueEntry):
    """Full metadata of one value function."""

    grid_shape: list[int] = Field(description="Points per state dimension.")
    gamma: float | None = Field(description="CBVF discount (1/s); 0 or null = undiscounted.")
    horizon: float | None = Field(description="Horizon (s) of the computation, where it has one.")
    converged: bool | None = None
    conflict_range_table: list[ConflictRangeRow] = Field(
        description="R_c(d) computed from the worst-case grid of this spec."
    )
    validation: dict[str, Any] | None = Field(description="The validation record written by the solver.")
    attrs: dict[str, Any] = Field(description="Every attribute stored with the value function.")


class QueryRequest(BaseModel):
    """JSON form of a batch query."""

    model_config = ConfigDict(extra="forbid")

    # strict: JSON numbers only (a string or a boolean is an error, not read as a number)
    states: list[list[Annotated[FiniteFloat, Field(strict=True)]]] = Field(
        min_length=1,
        description="Relative states, one row per state, columns in the order of `state` in the metadata. "
        "Must be finite JSON numbers; relative positions beyond the grid are allowed (value null, in_domain "
        "false).",
        examples=[[[1.0, 0.5, -0.2, 0.1]]],
    )
    safety_distance: float | None = Field(
        default=None,
        ge=0.0,
        allow_inf_nan=False,
        strict=True,
        description="d (m); default: the value function's. Only shiftable grids accept another d.",
    )
    gradient: bool | None = Field(default=None, strict=True, description="Also return dV/ds (default false).")


class QueryOptions(BaseModel):
    """Options of a batch query outside the body: query parameters and, for the binary form, the layout headers.

    Validated in one step from the request (`QueryOptions.SOURCES` says where each field comes from); documented
    as parameters of the query operation.
    """

    model_config = ConfigDict(extra="forbid")

    #: field -> (OpenAPI location, parameter name)
    SOURCES: ClassVar[dict[str, tuple[str, str]]] = {
        "safety_distance": ("query", "safety_distance"),
        "gradient": ("query", "gradient"),
        "dtype": ("header", "X-Reach-Dtype"),
        "shape": ("header", "X-Reach-Shape"),
    }

    safety_distance: float | None = Field(
        default=None, ge=0.0, allow_inf_nan=False,
        description="Safety distance d (m); default: the value function's. The JSON body may give it instead.",
    )
    gradient: bool | None = Field(default=None, description="Also return dV/ds (default false). The JSON body "
                                  "may give it instead.")
    dtype: Literal["float32", "float64"] = Field(
        default="float32", description="Binary form: element type (little-endian) of the body and of the answer."
    )
    shape: tuple[int, int] | None = Field(
        default=None, description="Binary form: `N,n`, states and coordinates per state; optional, checked against "
        "the body length."
    )

    @field_validator("shape", mode="before")
    @classmethod
    def _parse_shape(cls, v: object) -> object:
        if isinstance(v, str):
            parts = [p.strip() for p in v.split(",")]
            if len(parts) != 2 or not all(p.isdigit() and len(p) <= 12 for p in parts):
                raise ValueError(f"expected 'N,n' (two non-negative integers), got {v!r}")
            return (int(parts[0]), int(parts[1]))
        return v

    @classmethod
    def openapi_parameters(cls) -> list[dict[str, Any]]:
        """The OpenAPI parameter objects of these options."""
        out = []
        for field, (where, name) in cls.SOURCES.items():
            info = cls.model_fields[field]
            if field == "shape":
                schema: dict[str, Any] = {"type": "string", "pattern": r"^\s*[0-9]{1,12}\s*,\s*[0-9]{1,12}\s*$"}
            elif field == "dtype":
                schema = {"type": "string", "enum": ["float32", "float64"], "default": "float32"}
            elif field == "gradient":
                schema = {"type": "boolean"}
            else:
                schema = {"type": "number", "minimum": 0.0}
            out.append({"name": name, "in": where, "required": False, "description": info.description,
                        "schema": schema})
        return out


class QueryResponse(BaseModel):
    """JSON answer of a batch query."""

    name: str
    content_hash: str
    safety_distance: float = Field(description="The d the values are for (m).")
    n: int = Field(description="Number of states.")
    value: list[float | None] = Field(
        description="V_d per state (m), positive = safe. **null** where the state is out of the domain (its relative "
        "position is beyond the grid): the value there is +infinity, which JSON cannot carry; the binary form "
        "carries +inf."
    )
    gradient: list[list[float]] | None = Field(
        default=None,
        description="dV/ds per state (only when asked); zeros where the state is out of the domain.",
    )
    in_domain: list[bool] = Field(description="False where the relative position is beyond the grid.")


class ConflictRangeResponse(BaseModel):
    name: str
    content_hash: str
    safety_distance: float = Field(description="d (m).")
    conflict_range: float = Field(description="R_c(d) (m), interpolated from the table.")
    table_range: list[float] = Field(min_length=2, max_length=2, description="Smallest and largest d in the table (m).")


class DownloadManifest(BaseModel):
    """`reach.json` at the root of a download: what the zip holds and the hash the client must verify."""

    format: Literal["reach-zarr-v3"] = "reach-zarr-v3"
    name: str
    content_hash: str = Field(description="sha256 the client recomputes (reach.store.content_hash) before use.")
    version_dir: str = Field(description="The zip's top-level directory: the published Zarr v3 version `<hash16>.zarr`.")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    store: str
    value_functions: dict[str, str] = Field(description="Value functions served: name -> content hash.")
    problems: list[str] = Field(default_factory=list, description="What keeps a published version out of service "
                                "(the last good version, if any, is still served).")


#: OpenAPI answers shared by the value-function routes.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Malformed request (headers, binary length, parameters)."},
    401: {"model": ErrorResponse, "description": "Missing or wrong bearer token (when the service has one)."},
    404: {"model": ErrorResponse, "description": "Unknown value function."},
    422: {"model": ErrorResponse, "description": "Invalid states or parameters (the message names the problem)."},
    503: {"model": ErrorResponse, "description": "The published version failed its integrity check."},
}
