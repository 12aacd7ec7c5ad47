"""Analysis of run directories (``swarm.analysis``): pure functions, tables in, tables out.

Reads run directories (manifest and Arrow logs) only; see ``swarm.open_run``.

* ``cascades``: cascade trees from root/parent (size, depth, breadth,
  structural virality, timing) for the cascade and feed envs;
* ``powerlaw_fit``: discrete power-law fits of cascade sizes with
  likelihood-ratio tests and a bootstrap interval;
* ``exposure``: exposure response (p(k), Cox with time-varying exposures, a
  cloglog check, the randomized injection test);
* ``roles``: per-agent features, roles by clustering and NMF, core-periphery,
  all next to a degree-preserving null;
* ``socialization``: stabilization, turnover, inertia, influence persistence;
* ``coordination``: consensus/commons/games outcomes and condition comparisons;
* ``agentsnet``: validators of the five AgentsNet tasks (colouring, vertex
  cover, matching, leader election, consensus) from an event log and the graph;
* ``report``: ``swarm analyze`` (metrics.json and report.html).
"""
