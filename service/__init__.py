"""reach HTTP service: a FastAPI app (``service.app.create_app``) serving a value-function store read-only.

Started by ``reach serve`` / ``reach run`` (``service.cli``); documented in docs/service.md.
"""
