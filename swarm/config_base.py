"""The strict pydantic base every config model derives from.

Unknown keys are errors and a validated config is frozen: a run's config is
data, checked once at the edge (the CLI or ``swarm.run``) and never mutated.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["StrictModel"]


class StrictModel(BaseModel):
    """A frozen pydantic model that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)
