"""Comparison baselines for swarm's independent-cascade (IC) benchmark.

This module holds the three reference implementations that the benchmark harness runs
next to swarm on the same graph, seeds and transmission probability: ``bare_numpy_ic``,
a plain frontier-based numpy implementation with no logging that serves as the speed
floor; ``ndlib_ic``, NDlib's ``IndependentCascadesModel`` driven the documented way;
and ``mesa_ic``, an idiomatic Mesa 3 agent-based model on a ``mesa.discrete_space``
network. All three take a graph in CSR form of out-edges, run IC until quiescent (every
newly active node gets exactly one chance to activate each inactive out-neighbour with
probability ``p``) and return the same dict: ``final_active`` (ever-active node count),
``steps`` (propagation rounds, i.e. generations: rounds in which a non-empty frontier
tried its out-edges, the last of which may activate nobody), ``seconds`` (simulation
time only), ``setup_seconds`` (building the graph / model, timed separately) and
``completed`` (False when the time budget ran out first). Graphs are assumed simple (no
duplicate edges); a duplicate CSR edge is two chances for ``bare_numpy_ic`` but one edge
in networkx. Running this file checks that the three agree statistically on a small
random graph.
"""

from __future__ import annotations

import time
from enum import Enum

import networkx as nx
import numpy as np

__all__ = ["bare_numpy_ic", "csr_to_networkx", "mesa_ic", "ndlib_ic"]


def _result(
    final_active: int, steps: int, seconds: float, setup_seconds: float, completed: bool
) -> dict:
    """Pack one run's outcome into the dict every baseline returns.

    Parameters
    ----------
    final_active : int
        Number of ever-active nodes.
    steps : int
        Number of propagation rounds run.
    seconds : float
        Simulation time, setup excluded.
    setup_seconds : float
        Time spent building the graph / model.
    completed : bool
        Whether the cascade reached quiescence within the budget.

    Returns
    -------
    dict
        The result with plain Python types.
    """
    return {
        "final_active": int(final_active),
        "steps": int(steps),
        "seconds": float(seconds),
        "setup_seconds": float(setup_seconds),
        "completed": bool(completed),
    }


def bare_numpy_ic(
    indptr: np.ndarray, indices: np.ndarray, seeds: np.ndarray, p: float, seed: int
) -> dict:
    """Run IC with a minimal frontier-based numpy loop: the speed floor.

    Each round, only the frontier's (newly active nodes') out-edges are touched: one
    uniform draw per such edge from a ``numpy.random.Generator``, the successful edges
    are mapped back to their targets with a ``searchsorted`` over the frontier's degree
    prefix sums (so the full frontier edge list is never materialised), already-active
    targets are dropped with a boolean mask, and duplicates among the new targets are
    removed in O(k) with a last-writer stamp array instead of ``np.unique``.

    Parameters
    ----------
    indptr : numpy.ndarray
        int64 CSR row pointer of out-edges, length ``n + 1``.
    indices : numpy.ndarray
        int64 CSR column indices (out-neighbours).
    seeds : numpy.ndarray
        int64 ids of the initially active nodes (duplicates are ignored).
    p : float
        Transmission probability per edge.
    seed : int
        Seed for ``numpy.random.default_rng``.

    Returns
    -------
    dict
        ``final_active``, ``steps``, ``seconds``, ``setup_seconds`` (allocating the RNG
        and the state arrays) and ``completed`` (always True: there is no budget).
    """
    t0 = time.perf_counter()
    indptr = np.asarray(indptr, dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64)
    n = indptr.size - 1
    rng = np.random.default_rng(seed)
    active = np.zeros(n, dtype=bool)
    stamp = np.empty(n, dtype=np.int64)  # scratch for O(k) de-duplication
    t1 = time.perf_counter()

    active[np.asarray(seeds, dtype=np.int64)] = True
    frontier = np.flatnonzero(active)
    n_active = frontier.size
    steps = 0
    while frontier.size:
        steps += 1
        starts = indptr[frontier]
        deg = indptr[frontier + 1] - starts
        deg_end = np.cumsum(deg)  # inclusive prefix sums of the frontier's out-degrees
        total = int(deg_end[-1])
        # Positions of the successful edges in the (virtual) concatenated frontier edge list.
        hit = np.flatnonzero(rng.random(total) < p)
        if hit.size == 0:
            break
        owner = np.searchsorted(deg_end, hit, side="right")  # index into frontier
        offset = starts - (deg_end - deg)  # edge position -> CSR slot, per frontier node
        targets = indices[offset[owner] + hit]
        targets = targets[~active[targets]]
        # De-duplicate: whichever write wins, exactly one position per distinct node matches.
        pos = np.arange(targets.size)
        stamp[targets] = pos
        frontier = targets[stamp[targets] == pos]
        active[frontier] = True
        n_active += frontier.size
    t2 = time.perf_counter()
    return _result(n_active, steps, t2 - t1, t1 - t0, True)


def csr_to_networkx(indptr: np.ndarray, indices: np.ndarray) -> nx.Graph | nx.DiGraph:
    """Build a networkx graph with nodes ``0..n-1`` from a CSR of out-edges.

    If the CSR is symmetric (every edge present in both directions, as for the
    benchmark's undirected graphs) an undirected ``nx.Graph`` with each edge once is
    returned, which is how a user of NDlib or Mesa would hold an undirected network;
    otherwise an ``nx.DiGraph`` whose successors are the CSR out-neighbours.

    Parameters
    ----------
    indptr : numpy.ndarray
        int64 CSR row pointer, length ``n + 1``.
    indices : numpy.ndarray
        int64 CSR column indices.

    Returns
    -------
    networkx.Graph or networkx.DiGraph
        The graph; every node id ``0..n-1`` is present, isolated ones included.
    """
    indptr = np.asarray(indptr, dtype=np.int64)
    indices = np.asarray(indices, dtype=np.int64)
    n = indptr.size - 1
    src = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    fwd = np.sort(src * n + indices)
    bwd = np.sort(indices * n + src)
    symmetric = bool(np.array_equal(fwd, bwd))
    g: nx.Graph = nx.Graph() if symmetric else nx.DiGraph()
    g.add_nodes_from(range(n))
    if symmetric:
        keep = src <= indices
        g.add_edges_from(zip(src[keep].tolist(), indices[keep].tolist(), strict=True))
    else:
        g.add_edges_from(zip(src.tolist(), indices.tolist(), strict=True))
    return g


def ndlib_ic(
    indptr: np.ndarray,
    indices: np.ndarray,
    seeds: np.ndarray,
    p: float,
    seed: int,
    time_budget_s: float = 300.0,
) -> dict:
    """Run NDlib's ``IndependentCascadesModel`` on the CSR graph.

    Setup (timed as ``setup_seconds``) builds the networkx graph, the model (seeded, which
    calls ``np.random.seed(seed)`` on numpy's *global* RNG, the one NDlib draws from) and
    a ``ModelConfig.Configuration`` with edge ``"threshold"`` ``p`` on every edge and the
    seeds as the ``"Infected"`` initial set. NDlib only honours per-edge thresholds when
    one is given for each of ``graph.edges`` exactly (otherwise it silently falls back
    to ``1/deg``), so the config is keyed by ``g.edges()``. The run then calls
    ``model.iteration(node_status=False)`` until no node is "Infected". NDlib's
    iteration 0 only reports the initial state, so it is run but not counted as a step;
    each later iteration lets every node that was Infected at its start try each
    Susceptible neighbour once and then become "Removed". Ever-active = Infected +
    Removed. Every iteration scans all ``n`` nodes in Python, whatever the frontier size.

    Parameters
    ----------
    indptr : numpy.ndarray
        int64 CSR row pointer of out-edges, length ``n + 1``.
    indices : numpy.ndarray
        int64 CSR column indices.
    seeds : numpy.ndarray
        int64 ids of the initially active nodes.
    p : float
        Transmission probability per edge.
    seed : int
        Seed passed to the NDlib model (numpy's global RNG).
    time_budget_s : float, optional
        Simulation time after which the run stops early, checked between iterations.

    Returns
    -------
    dict
        ``final_active``, ``steps``, ``seconds``, ``setup_seconds`` and ``completed``.
    """
    import ndlib.models.epidemics as ep
    import ndlib.models.ModelConfig as mc

    t0 = time.perf_counter()
    g = csr_to_networkx(indptr, indices)
    model = ep.IndependentCascadesModel(g, seed=seed)
    config = mc.Configuration()
    for edge in g.edges():
        config.add_edge_configuration("threshold", edge, p)
    config.add_model_initial_configuration("Infected", np.asarray(seeds).tolist())
    model.set_initial_status(config)
    t1 = time.perf_counter()

    infected, removed = 1, 2  # model.available_statuses
    result = model.iteration(node_status=False)  # iteration 0: reports the initial state
    counts = result["node_count"]
    steps = 0
    while counts[infected] > 0:
        if time.perf_counter() - t1 > time_budget_s:
            break
        counts = model.iteration(node_status=False)["node_count"]
        steps += 1
    t2 = time.perf_counter()
    completed = counts[infected] == 0
    return _result(counts[infected] + counts[removed], steps, t2 - t1, t1 - t0, completed)


class State(Enum):
    """IC state of a Mesa agent."""

    INACTIVE = 0
    ACTIVE = 1  # newly active: will try its neighbours on the next step
    SPENT = 2  # active and has had its one chance


def _mesa_classes():
    """Define the Mesa agent and model classes (mesa is imported lazily).

    Returns
    -------
    tuple of type
        ``(ICAgent, ICModel)``.
    """
    import mesa
    from mesa.discrete_space import FixedAgent, Network

    class ICAgent(FixedAgent):
        """A node of the network holding its IC state."""

        def __init__(self, model, cell):
            super().__init__(model)
            self.state = State.INACTIVE
            self.activated_at = -1
            self.cell = cell

        def step(self):
            """Give a node activated before this step its one chance at each neighbour."""
            model = self.model
            if self.state is State.ACTIVE and self.activated_at < model.steps:
                for other in self.cell.neighborhood.agents:
                    if other.state is State.INACTIVE and self.random.random() < model.p:
                        other.state = State.ACTIVE
                        other.activated_at = model.steps
                        model.newly_active += 1
                self.state = State.SPENT

    class ICModel(mesa.Model):
        """Independent cascade on a ``mesa.discrete_space.Network``, one agent per node."""

        def __init__(self, graph, seeds, p, seed=None):
            super().__init__(seed=seed)
            self.p = p
            self.grid = Network(graph, capacity=1, random=self.random)
            ICAgent.create_agents(self, graph.number_of_nodes(), list(self.grid.all_cells))
            for node in seeds:
                agent = self.grid[node].agents[0]
                if agent.state is State.INACTIVE:
                    agent.state = State.ACTIVE
                    agent.activated_at = 0
            self.frontier = sum(1 for a in self.agents if a.state is State.ACTIVE)
            self.ever_active = self.frontier
            self.newly_active = 0

        def step(self):
            """Let every agent act once, in random order; count the new activations."""
            self.newly_active = 0
            self.agents.shuffle_do("step")
            self.frontier = self.newly_active
            self.ever_active += self.newly_active
            self.running = self.frontier > 0

    return ICAgent, ICModel


def mesa_ic(
    indptr: np.ndarray,
    indices: np.ndarray,
    seeds: np.ndarray,
    p: float,
    seed: int,
    time_budget_s: float = 300.0,
) -> dict:
    """Run IC as an idiomatic Mesa 3 agent-based model.

    Setup (timed as ``setup_seconds``) builds the networkx graph, a
    ``mesa.discrete_space.Network`` over it and one ``FixedAgent`` per node, as in Mesa's
    own ``virus_on_network`` example, with ``mesa.Model(seed=seed)`` seeding the model's
    RNG. Each ``model.step()`` calls ``model.agents.shuffle_do("step")``: an agent that
    became active in an earlier step tries each inactive neighbour with probability
    ``p`` once and becomes spent; agents it activates record the step so they act only
    on the next one, which keeps rounds synchronous (one generation per step) although
    agents are updated in place in random order. No ``DataCollector`` is attached.

    Parameters
    ----------
    indptr : numpy.ndarray
        int64 CSR row pointer of out-edges, length ``n + 1``.
    indices : numpy.ndarray
        int64 CSR column indices.
    seeds : numpy.ndarray
        int64 ids of the initially active nodes.
    p : float
        Transmission probability per edge.
    seed : int
        Seed for ``mesa.Model``.
    time_budget_s : float, optional
        Simulation time after which the run stops early, checked between steps.

    Returns
    -------
    dict
        ``final_active``, ``steps``, ``seconds``, ``setup_seconds`` and ``completed``.
    """
    _, ic_model = _mesa_classes()
    t0 = time.perf_counter()
    g = csr_to_networkx(indptr, indices)
    model = ic_model(g, np.asarray(seeds).tolist(), p, seed=seed)
    t1 = time.perf_counter()
    while model.frontier > 0:
        if time.perf_counter() - t1 > time_budget_s:
            break
        model.step()
    t2 = time.perf_counter()
    return _result(model.ever_active, model.steps, t2 - t1, t1 - t0, model.frontier == 0)


def random_symmetric_csr(n: int, mean_degree: float, rng: np.random.Generator):
    """Build a symmetric Erdős–Rényi-like CSR graph with numpy only, as fast as numpy goes.

    ``n * mean_degree / 2`` uniform pairs; self-loops dropped, both directions
    merged by one int64 sort of the edge keys (``np.unique`` would sort too, ~100x
    slower here), repeated pairs merged.

    Parameters
    ----------
    n : int
        Number of nodes.
    mean_degree : float
        Target mean degree.
    rng : numpy.random.Generator
        Random source.

    Returns
    -------
    tuple of numpy.ndarray
        ``(indptr, indices)``, both int64.
    """
    m = int(n * mean_degree / 2)
    u = rng.integers(0, n, m)
    v = rng.integers(0, n, m)
    keep = u != v
    key = np.concatenate([u[keep] * n + v[keep], v[keep] * n + u[keep]])
    del u, v, keep
    key.sort()
    first = np.ones(key.shape[0], dtype=bool)
    first[1:] = key[1:] != key[:-1]
    src, dst = np.divmod(key[first], n)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    return indptr, dst


if __name__ == "__main__":
    n, mean_degree, p, reps = 2000, 8.0, 0.1, 20
    graph_rng = np.random.default_rng(0)
    indptr, indices = random_symmetric_csr(n, mean_degree, graph_rng)
    print(f"graph: n={n}, directed edges={indices.size}, p={p}, seeds=1%, reps={reps}")
    fractions = {"bare_numpy_ic": [], "ndlib_ic": [], "mesa_ic": []}
    for rep in range(reps):
        seeds = np.random.default_rng(1000 + rep).choice(n, n // 100, replace=False)
        for name, fn in (
            ("bare_numpy_ic", bare_numpy_ic),
            ("ndlib_ic", ndlib_ic),
            ("mesa_ic", mesa_ic),
        ):
            res = fn(indptr, indices, seeds, p, rep)
            assert res["completed"], (name, res)
            fractions[name].append(res["final_active"] / n)
            if rep < 2:
                print(f"  rep {rep} {name:>14}: {res}")
    print("mean final active fraction (± standard error):")
    means = {}
    for name, fr in fractions.items():
        arr = np.asarray(fr)
        means[name] = arr.mean()
        se = arr.std(ddof=1) / np.sqrt(arr.size)
        print(f"  {name:>14}: {arr.mean():.4f} ± {se:.4f}")
    spread = max(means.values()) - min(means.values())
    print(f"largest difference between means: {spread:.4f}")
    assert spread < 0.03, "baselines disagree by more than 3 percentage points"
    print("OK")
