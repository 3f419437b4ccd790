"""Liveness and readiness (never behind the token)."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Response

from service.deps import RegistryDep
from service.models import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers.")
async def healthz() -> Health:
    return Health()


@router.get("/readyz", response_model=Readiness, summary="Readiness: at least one value function is loaded.",
            responses={503: {"model": Readiness, "description": "Nothing can be served (empty or unreadable store)."}})
async def readyz(registry: RegistryDep, response: Response) -> Readiness:
    entries = await anyio.to_thread.run_sync(registry.refresh_all)
    served = {e.name: e.content_hash for e in entries}
    problems = [f"{name}: {why}" for name, why in sorted(registry.problems.items())]
    if not registry.store.root.is_dir():
        problems.insert(0, f"store {str(registry.store.root)!r} is not a directory")
    status = "ready" if served else "not_ready"
    if not served and not problems:
        problems.append(f"no value functions in store {str(registry.store.root)!r}")
    if status != "ready":
        response.status_code = 503
    return Readiness(status=status, store=str(registry.store.root), value_functions=served, problems=problems)
