"""Model registry. Adding a model = one module defining `MODEL` + one line in `MODELS`.

Importing this package never imports JAX (the client library depends on that).
"""

from reach.models import air_taxi, quadrotor
from reach.models.base import GAMES, Model

MODELS: dict[str, Model] = {
    quadrotor.MODEL.name: quadrotor.MODEL,
    air_taxi.MODEL.name: air_taxi.MODEL,
}


class UnknownModelError(KeyError, ValueError):
    """Raised by `get_model` for a name not in `MODELS`."""

    def __str__(self):  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


def get_model(name: str) -> Model:
    """The registered `Model` called `name`; `UnknownModelError` names it and lists the known models."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None


__all__ = ["GAMES", "MODELS", "Model", "UnknownModelError", "get_model"]
