"""Analysis of run directories (``swarm.analysis``): pure functions, tables in, tables out.

Reads run directories (manifest and Arrow logs) only; see ``swarm.open_run``.

* ``swarm.analysis.cascades``: cascade trees from root/parent (size, depth,
  breadth, structural virality, timing) for the cascade and feed envs.
"""
