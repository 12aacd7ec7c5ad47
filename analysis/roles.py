"""Roles of agents: per-agent features, role clusters checked against a null, core-periphery, churn.

Read after a run, from the interaction graph (who reposted, liked or
commented whom: ``agent -> target`` in the feed's events) and optionally the
events themselves. This module is the entry point: it re-exports the public
names of one module per topic (``role_features``, ``rewiring``,
``role_clustering``, ``rolx``, ``core_periphery``, ``role_stability``), so
callers import from ``swarm.analysis.roles`` alone. Four questions:

* **What does each agent look like?** ``agent_features``: in/out degree and
  strength, reciprocity, clustering, k-core number, betweenness (exact, or
  estimated from a seeded sample of sources), and with events the counts by
  action type, the share of reposts among an agent's items and the share of
  its posts that started a cascade. Triangles, cores and betweenness are
  computed with numpy and scipy.sparse (degree-ordered triangle counting,
  batched peeling, level-synchronous Brandes over a batch of sources).
* **Are there roles?** ``roles``: k-means or a Gaussian mixture over
  log1p-transformed, standardized features, k chosen by silhouette over
  ``k_range``. A heavy-tailed graph without any planted roles already gives a
  high silhouette (one huge cluster and a few hubs), so every result comes
  with the same pipeline on degree-preserving rewirings of the graph
  (``rewire``, a vectorized double-edge swap) and with the agreement (ARI)
  of clusterings from different seeds. ``rolx`` is the second method: NMF
  (scikit-learn) over ReFeX recursive features, RolX-style.
* **Is there a core?** ``core_periphery``: the Borgatti-Everett discrete
  model, tested against degree-preserving rewirings.
* **Do agents keep their role?** ``role_changes`` matches role labels of
  consecutive windows (Hungarian method on role profiles) and counts the
  agents whose role changed; ``roles_by_window`` makes the windows from events.

The degree-preserving null keeps every agent's degrees and its behaviour
columns (counts from events are node attributes, not edges), so a role
result that beats it is structure beyond degrees, not a difference in
activity. Directed swaps keep in- and out-degrees but not reciprocity.

Examples
--------
Two triangles joined by a bridge:

>>> import numpy as np
>>> src = np.array([0, 1, 2, 3, 4, 5, 2])
>>> dst = np.array([1, 2, 0, 4, 5, 3, 3])
>>> f = agent_features(src, dst, n=6)
>>> f.column("out_degree").to_pylist(), f.column("core").to_pylist()
([1, 1, 2, 1, 1, 1], [2, 2, 2, 2, 2, 2])
>>> [round(c, 3) for c in f.column("clustering").to_pylist()]
[1.0, 1.0, 0.333, 0.333, 1.0, 1.0]
>>> cp = core_periphery(src, dst, n=6, n_null=9, seed=1)
>>> int(cp.core.sum()) >= 2, 0 < cp.p_value <= 1
(True, True)
"""

from __future__ import annotations

from swarm.analysis.core_periphery import CorePeriphery, core_periphery
from swarm.analysis.rewiring import rewire
from swarm.analysis.role_clustering import RoleResult, roles
from swarm.analysis.role_features import INTERACTIONS as INTERACTIONS
from swarm.analysis.role_features import agent_features, interaction_edges
from swarm.analysis.role_stability import match_roles, role_changes, roles_by_window
from swarm.analysis.rolx import RolXResult, refex_features, rolx

__all__ = [
    "agent_features",
    "interaction_edges",
    "rewire",
    "RoleResult",
    "roles",
    "RolXResult",
    "refex_features",
    "rolx",
    "CorePeriphery",
    "core_periphery",
    "match_roles",
    "role_changes",
    "roles_by_window",
]
