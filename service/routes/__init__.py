"""Routers, one module per resource: ``value_functions`` (``/v1/value-functions``), ``health`` (``/healthz``,
``/readyz``) and ``metrics`` (``/metrics``)."""
