"""Independent validators of the five AgentsNet coordination tasks, from an event log and a graph.

AgentsNet (Grötschla et al. 2025) asks a network of agents to solve five
distributed problems by talking to their neighbours: colouring, minimal
vertex cover, maximal matching, leader election and binary consensus. This
module checks a run's final answers against each task's definition. It reads
nothing but the event log and the graph, never the env that produced the
run, so that a bug in the env cannot also hide in its own checker.

The log's ``answer`` events carry an agent's answer in ``item`` whenever it
changes; an agent's final answer is its last one (the largest ``step``), and
an agent with none has no answer (AgentsNet's unparsed answer). The codes:

* colouring: the colour, 0..k-1;
* vertex_cover: 1 (in the cover, AgentsNet's "Yes") or 0 ("No");
* matching: the partner's agent id, or -1 ("None"; the engine stores -1 as a
  null ``item``, read back as -1);
* leader_election: the id of the agent named leader (its own id is "Yes");
* consensus: the value settled on (0 or 1; ``propose`` events hold the
  initial values).

Agents with an ``adversary`` event (Byzantine, Sybil) and any ``exclude``
agents (crashed ones, say) are left out: each task is judged on the subgraph
the remaining agents induce. ``validate`` returns the per-instance success
criterion (every agent satisfies the task), AgentsNet's fractional score, and
the agents that break the criterion, for finding failures on a drawing.
Everything is vectorized over the CSR arrays: a million agents take a second
or two.

Examples
--------
A path 0 - 1 - 2 coloured 0, 1, 0, then agent 2 changes to 1 (a conflict):

>>> import pyarrow as pa
>>> from swarm.graph import from_edges
>>> g = from_edges(np.array([0, 1]), np.array([1, 2]), n=3)
>>> ev = pa.table({
...     "step": pa.array([0, 0, 0, 3], pa.int32()),
...     "agent": pa.array([0, 1, 2, 2], pa.int64()),
...     "event": pa.array(["answer"] * 4).dictionary_encode(),
...     "item": pa.array([0, 1, 0, 1], pa.int64()),
...     "value": pa.array([None] * 4, pa.float32())})
>>> r = validate("colouring", ev, g)
>>> r["success"], r["conflict_edges"], r["score"], r["bad_agents"].tolist()
(False, 1, 0.5, [1, 2])
>>> last_change_step(ev)
3
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from swarm.errors import GraphError, LogError

__all__ = [
    "TASKS",
    "adversaries",
    "answers_over_time",
    "final_answers",
    "last_change_step",
    "validate",
]

#: The AgentsNet tasks ``validate`` knows.
TASKS = ("colouring", "vertex_cover", "matching", "leader_election", "consensus")


# ---------------------------------------------------------------- reading the log

def _is_event(events: pa.Table, name: str) -> np.ndarray:
    """Rows of ``events`` whose ``event`` is ``name``, as a bool mask.

    Compares dictionary codes chunk by chunk (each chunk of a concatenated log
    may carry its own dictionary) rather than casting a million strings.
    """
    parts = []
    for chunk in events.column("event").chunks:
        if pa.types.is_dictionary(chunk.type):
            words = chunk.dictionary.to_pylist()
            if name not in words:
                parts.append(np.zeros(len(chunk), dtype=bool))
                continue
            codes = chunk.indices.fill_null(-1).to_numpy(zero_copy_only=False)
            parts.append(codes == words.index(name))
        else:
            hit = pc.equal(chunk, name).fill_null(False)
            parts.append(hit.to_numpy(zero_copy_only=False))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def _rows(events: pa.Table, name: str, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """The given int columns of the ``name`` rows; null ints read as -1."""
    missing = [c for c in ("event", *columns) if c not in events.column_names]
    if missing:
        raise LogError(f"event log lacks column(s) {missing}; an AgentsNet log has "
                       "step, agent, event and item (see swarm.analysis.agentsnet)")
    t = events.select(list(columns)).filter(pa.array(_is_event(events, name)))
    return {c: np.asarray(t.column(c).fill_null(-1).to_numpy(), dtype=np.int64)
            for c in columns}


def _check_agents(agent: np.ndarray, n: int, what: str) -> None:
    if agent.size and (agent.min() < 0 or agent.max() >= n):
        raise LogError(f"{what} names agent ids in [{agent.min()}, {agent.max()}] but the "
                       f"graph has agents 0..{n - 1}; is this the run's graph?")


def final_answers(events: pa.Table, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each agent's last ``answer`` (by step) and whether it answered at all.

    Parameters
    ----------
    events : pyarrow.Table
        An event log with ``step``, ``agent``, ``event`` and ``item``.
    n : int
        The number of agents.

    Returns
    -------
    answer : numpy.ndarray of int64
        The last answer code of every agent; -1 where it never answered (a
        matching answer may be -1 too: tell them apart with ``answered``).
    answered : numpy.ndarray of bool
        Whether the agent has an ``answer`` event.

    Examples
    --------
    >>> ev = pa.table({"step": pa.array([5, 1, 2], pa.int32()), "agent": [0, 0, 2],
    ...                "event": pa.array(["answer", "answer", "answer"]).dictionary_encode(),
    ...                "item": [7, 3, 1]})
    >>> a, ok = final_answers(ev, 4)
    >>> a.tolist(), ok.tolist()
    ([7, -1, 1, -1], [True, False, True, False])
    """
    r = _rows(events, "answer", ("step", "agent", "item"))
    _check_agents(r["agent"], n, "an answer event")
    # Sort by agent, then step; stable, so two rows of one agent in one step keep
    # log order and the later row wins. The last row of each agent is its answer.
    order = np.lexsort((r["step"], r["agent"]))
    agent, item = r["agent"][order], r["item"][order]
    last = np.ones(agent.shape[0], dtype=bool)
    if agent.size:
        np.not_equal(agent[1:], agent[:-1], out=last[:-1])
    answer = np.full(n, -1, dtype=np.int64)
    answered = np.zeros(n, dtype=bool)
    answer[agent[last]] = item[last]
    answered[agent[last]] = True
    return answer, answered


def adversaries(events: pa.Table, n: int) -> np.ndarray:
    """Agents with an ``adversary`` event (Byzantine, Sybil), as a bool mask of length ``n``.

    Examples
    --------
    >>> ev = pa.table({"step": pa.array([0], pa.int32()), "agent": [2],
    ...                "event": pa.array(["adversary"]).dictionary_encode(), "item": [1]})
    >>> adversaries(ev, 3).tolist()
    [False, False, True]
    """
    agent = _rows(events, "adversary", ("agent",))["agent"]
    _check_agents(agent, n, "an adversary event")
    out = np.zeros(n, dtype=bool)
    out[agent] = True
    return out


def _left_out(events: pa.Table, exclude, adversarial: bool) -> np.ndarray:
    """Agent ids whose answers ``answers_over_time`` leaves out."""
    out = [] if exclude is None else [np.asarray(exclude, dtype=np.int64).ravel()]
    if not adversarial:
        out.append(_rows(events, "adversary", ("agent",))["agent"])
    return np.unique(np.concatenate(out)) if out else np.zeros(0, np.int64)


def answers_over_time(events: pa.Table, *, exclude=None, adversarial: bool = False) -> pa.Table:
    """How many answers changed at each step: columns ``step`` (int32) and ``changes`` (int64).

    Adversaries' answers are left out unless ``adversarial`` (a Byzantine agent
    may flip forever); ``exclude`` leaves out more agents. Steps without a
    change have no row.

    Examples
    --------
    >>> ev = pa.table({"step": pa.array([0, 0, 2, 2], pa.int32()), "agent": [0, 1, 0, 1],
    ...                "event": pa.array(["answer"] * 4).dictionary_encode(),
    ...                "item": [0, 1, 1, 1]})
    >>> answers_over_time(ev).to_pydict()
    {'step': [0, 2], 'changes': [2, 2]}
    """
    r = _rows(events, "answer", ("step", "agent"))
    keep = ~np.isin(r["agent"], _left_out(events, exclude, adversarial))
    step, changes = np.unique(r["step"][keep], return_counts=True)
    return pa.table({"step": pa.array(step.astype(np.int32)),
                     "changes": pa.array(changes.astype(np.int64))})


def last_change_step(events: pa.Table, *, exclude=None, adversarial: bool = False) -> int | None:
    """The largest step with an ``answer`` event (None when there is none): rounds to settle.

    Leaves out the same agents as ``answers_over_time``.

    Examples
    --------
    >>> ev = pa.table({"step": pa.array([0, 4], pa.int32()), "agent": [0, 1],
    ...                "event": pa.array(["answer", "answer"]).dictionary_encode(),
    ...                "item": [0, 0]})
    >>> last_change_step(ev)
    4
    """
    t = answers_over_time(events, exclude=exclude, adversarial=adversarial)
    return None if t.num_rows == 0 else int(t.column("step")[-1].as_py())


# ---------------------------------------------------------------- the graph

def _symmetric_edges(graph) -> tuple[int, np.ndarray, np.ndarray]:
    """``n`` and every undirected edge in both directions (``s[i] -> d[i]``), no self-loops."""
    if not hasattr(graph, "indptr"):
        from swarm.graph import from_networkx

        graph, labels = from_networkx(graph)
        if labels is not None:
            raise GraphError("the networkx graph's nodes must be the agent ids 0..n-1; "
                             "relabel it with nx.convert_node_labels_to_integers(G)")
    n = int(graph.indptr.shape[0] - 1)
    indptr = np.asarray(graph.indptr, dtype=np.int64)
    d = np.asarray(graph.indices, dtype=np.int64)
    s = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    if getattr(graph, "directed", False):
        # AgentsNet's tasks are on undirected graphs: an edge either way joins two agents.
        lo, hi = np.minimum(s, d), np.maximum(s, d)
        key = np.unique(lo[lo != hi] * n + hi[lo != hi])
        lo, hi = np.divmod(key, n)
        return n, np.concatenate([lo, hi]), np.concatenate([hi, lo])
    loop = s == d
    if loop.any():
        s, d = s[~loop], d[~loop]
    return n, s, d


# ---------------------------------------------------------------- the tasks

def _ids(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(mask).astype(np.int64)


def _mode(values: np.ndarray) -> int | None:
    """The most frequent value (the smallest of a tie); None when empty."""
    if values.size == 0:
        return None
    u, c = np.unique(values, return_counts=True)
    return int(u[np.argmax(c)])


def _colouring(ans, ok, inc, s, d, colours):
    valid = ok & (ans >= 0) & (ans < colours)
    invalid = inc & ~valid
    up = (s < d) & inc[s] & inc[d]
    u, v = s[up], d[up]
    conflict = ok[u] & ok[v] & (ans[u] == ans[v])
    bad = invalid.copy()
    bad[u[conflict]] = True
    bad[v[conflict]] = True
    n_conflict = int(conflict.sum())
    edges = int(u.shape[0])
    # AgentsNet: all answers valid, times the share of edges whose ends differ.
    score = 0.0 if invalid.any() else (1.0 if edges == 0 else 1.0 - n_conflict / edges)
    return {
        "success": not invalid.any() and n_conflict == 0,
        "score": float(score),
        "violations": n_conflict + int(invalid.sum()),
        "bad_agents": _ids(bad),
        "colours": int(colours),
        "conflict_edges": n_conflict,
        "invalid_answers": int(invalid.sum()),
        "colours_used": int(np.unique(ans[inc & valid]).shape[0]),
        "edges": edges,
    }


def _vertex_cover(ans, ok, inc, s, d):
    invalid = inc & ~(ok & ((ans == 0) | (ans == 1)))
    cover = inc & ok & (ans == 1)
    both = inc[s] & inc[d]
    up = both & (s < d)
    uncovered = up & ~cover[s] & ~cover[d]
    n_uncovered = int(uncovered.sum())
    edges = int(up.sum())
    # A cover agent is needed when some included neighbour is outside the cover.
    outside_nbr = np.bincount(s[both & ~cover[d]], minlength=inc.shape[0]) > 0
    redundant = cover & ~outside_nbr
    size = int(cover.sum())
    covers = n_uncovered == 0
    coverage = 1.0 if edges == 0 else 1.0 - n_uncovered / edges
    # AgentsNet's minimality counts the cover agents whose removal breaks full coverage:
    # with every edge covered, those with a neighbour outside; with some edge uncovered
    # already, all of them (so its score is then the coverage alone). An empty cover is
    # AgentsNet's division by zero: 0 here.
    needed = int((cover & outside_nbr).sum()) if covers else size
    score = 0.0 if size == 0 else coverage * needed / size
    bad = invalid | redundant
    bad[s[uncovered]] = True
    bad[d[uncovered]] = True
    return {
        "success": covers and not redundant.any() and not invalid.any(),
        "score": float(score),
        "violations": n_uncovered + int(redundant.sum()) + int(invalid.sum()),
        "bad_agents": _ids(bad),
        "covers": covers,
        "uncovered_edges": n_uncovered,
        "cover_size": size,
        "redundant": int(redundant.sum()),
        "coverage": float(coverage),
        "minimal_share": 1.0 if size == 0 else float((cover & outside_nbr).sum()) / size,
        "invalid_answers": int(invalid.sum()),
        "edges": edges,
    }


def _matching(ans, ok, inc, s, d):
    n = inc.shape[0]
    both = inc[s] & inc[d]
    names = ok & (ans >= 0)
    # The edge s -> d is the one s names when ans[s] == d: then the partner is an
    # included neighbour. One pass over the edges, no search.
    hit = both & names[s] & (ans[s] == d)
    named_nbr = np.zeros(n, dtype=bool)
    named_nbr[s[hit]] = True
    partner = np.where(named_nbr, ans, 0)
    mutual = named_nbr & (ans[partner] == np.arange(n)) & ok[partner]
    alone = ok & (ans == -1)
    lonely_edge = both & alone[s] & alone[d]
    lonely = np.zeros(n, dtype=bool)
    lonely[s[lonely_edge]] = True
    # AgentsNet's inconsistent agents: no (parsable) answer, a partner that is no
    # neighbour or does not name it back, or "None" beside another "None".
    inconsistent = inc & (~ok | (names & ~mutual) | lonely | (ok & (ans < -1)))
    agents = int(inc.sum())
    bad = int(inconsistent.sum())
    return {
        "success": bad == 0,
        "score": 1.0 if agents == 0 else float((agents - bad) / agents),
        "violations": bad,
        "bad_agents": _ids(inconsistent),
        "matched_pairs": int((inc & mutual).sum()) // 2,
        "unmatched_edges": int((lonely_edge & (s < d)).sum()),
        "edges": int((both & (s < d)).sum()),
    }


def _leader_election(ans, ok, inc):
    n = inc.shape[0]
    valid = ok & (ans >= 0) & (ans < n)
    me = np.arange(n)
    yes = inc & valid & (ans == me)
    leaders = int(yes.sum())
    named = ans[inc & valid]
    majority = _mode(named)
    target = int(np.flatnonzero(yes)[0]) if leaders == 1 else majority
    agents = int(inc.sum())
    bad = inc & (~valid | (ans != (-2 if target is None else target)))
    if leaders != 1:
        bad |= yes
        if leaders == 0 and target is not None:
            if inc[target]:
                bad[target] = True  # the agent most named should have said "Yes"
            else:
                bad |= inc & (ans == target)  # they name an adversary or a left-out agent
    agree = 0 if majority is None else int((named == majority).sum())
    success = leaders == 1 and not bad.any()
    # AgentsNet: every answer valid ("Yes"/"No") and exactly one "Yes".
    score = float(leaders == 1 and not (inc & ~valid).any())
    return {
        "success": bool(success),
        "score": score,
        "violations": int(bad.sum()),
        "bad_agents": _ids(bad),
        "leaders": leaders,
        "leader": target if leaders == 1 else None,
        "majority_leader": majority,
        "agreeing": 0.0 if agents == 0 else agree / agents,
    }


def _consensus(ans, ok, inc, events):
    prop = _rows(events, "propose", ("agent", "item"))
    _check_agents(prop["agent"], inc.shape[0], "a propose event")
    if prop["agent"].size:
        allowed = np.unique(prop["item"][inc[prop["agent"]]])
    else:
        allowed = np.array([0, 1], dtype=np.int64)  # AgentsNet's rule: 0 or 1
    held = ans[inc & ok]
    u, c = np.unique(held, return_counts=True)
    values = {int(k): int(v) for k, v in zip(u, c, strict=True)}
    legit = np.isin(ans, allowed)
    # The value to blame others against: the commonest proposed one if any was chosen.
    target = _mode(ans[inc & ok & legit])
    if target is None:
        target = _mode(held)
    agents = int(inc.sum())
    agree = bool(inc[~ok].sum() == 0 and u.shape[0] <= 1)
    valid = bool(np.isin(u, allowed).all())
    bad = inc & (~ok | ~legit | (ans != (-2 if target is None else target)))
    # AgentsNet: every answer 0 or 1 (here also: any proposed value) and all equal.
    domain = np.union1d(allowed, [0, 1])
    score = float(agree and agents > 0 and bool(np.isin(u, domain).all()))
    return {
        "success": agree and valid,
        "score": score if agents > 0 else 1.0,
        "violations": int(bad.sum()),
        "bad_agents": _ids(bad),
        "values": values,
        "valid": valid,
        "agreed": agree,
        "value": int(u[0]) if agree and u.shape[0] == 1 else None,
        "proposed": [int(x) for x in allowed] if prop["agent"].size else None,
    }


def validate(task: str, events: pa.Table, graph, *, colours: int | None = None,
             exclude: Sequence[int] | np.ndarray | None = None) -> dict:
    """Check a run's final answers against one AgentsNet task.

    Parameters
    ----------
    task : str
        One of ``TASKS``: colouring, vertex_cover, matching, leader_election, consensus.
    events : pyarrow.Table
        The run's event log (``step``, ``agent``, ``event``, ``item``); only
        ``answer``, ``adversary`` and (consensus) ``propose`` rows are read.
    graph : swarm.graph.CSRGraph or networkx.Graph
        The run's graph, nodes 0..n-1; a directed graph is read as undirected.
    colours : int, optional
        Colouring only: the number of colours k; default max degree + 1 of the
        whole graph (AgentsNet's Δ+1 groups).
    exclude : array of int, optional
        More agents to leave out besides the adversaries (crashed ones, say).

    Returns
    -------
    dict
        Always: ``task``; ``success``, the per-instance criterion (every included
        agent satisfies the task); ``score``, AgentsNet's fractional score;
        ``agents`` (included), ``answered`` (included agents with an answer),
        ``adversaries``, ``excluded``; ``violations``, a count of broken
        constraints (colouring: conflict edges + agents without a colour in
        range; vertex_cover: uncovered edges + redundant cover agents + agents
        without a 0/1 answer; the others: ``len(bad_agents)``); and
        ``bad_agents``, the ids of the agents at fault. Then per task:

        * colouring: ``colours`` (k), ``conflict_edges``, ``colours_used``,
          ``invalid_answers``, ``edges``. Score: 0 if an included agent lacks a
          colour in range, else the share of edges whose ends differ.
        * vertex_cover: ``covers``, ``uncovered_edges``, ``cover_size``,
          ``redundant`` (cover agents with no neighbour outside the cover),
          ``coverage``, ``minimal_share``, ``invalid_answers``, ``edges``.
          Success also needs minimality: every cover agent has an included
          neighbour outside the cover. Score: coverage × (cover agents whose
          removal breaks full coverage / cover size), as AgentsNet computes
          it: once some edge is uncovered every cover agent counts, so the
          score is the coverage. 0 for an empty cover (AgentsNet divides by zero).
        * matching: ``matched_pairs``, ``unmatched_edges`` (both ends -1),
          ``edges``. Score: the share of consistent agents; an agent is
          inconsistent with no answer, a partner that is not an included
          neighbour or does not name it back, or -1 beside another -1.
        * leader_election: ``leaders`` (self-naming agents), ``leader`` (the
          one, else None), ``majority_leader``, ``agreeing`` (share of agents
          naming the majority leader). Success: one leader and every agent
          names it. Score: 1 if every agent answered and exactly one says
          "Yes" (AgentsNet asks only Yes/No).
        * consensus: ``values`` (value -> agents), ``valid`` (every value held
          was proposed by an included agent; 0 or 1 when the log has no
          ``propose`` events), ``agreed``, ``value``, ``proposed``. Score: 1 if
          every agent answered the same 0/1 (or proposed) value.

        Edges are undirected and between included agents.

    Examples
    --------
    A triangle where agent 2 is Byzantine: only the edge 0 - 1 counts.

    >>> import networkx as nx
    >>> ev = pa.table({
    ...     "step": pa.array([0, 1, 1, 1], pa.int32()),
    ...     "agent": pa.array([2, 0, 1, 2], pa.int64()),
    ...     "event": pa.array(["adversary", "answer", "answer", "answer"]).dictionary_encode(),
    ...     "item": pa.array([1, 0, 1, 1], pa.int64())})
    >>> r = validate("colouring", ev, nx.complete_graph(3))
    >>> r["success"], r["agents"], r["colours"]
    (True, 2, 3)
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    n, s, d = _symmetric_edges(graph)
    ans, ok = final_answers(events, n)
    adv = adversaries(events, n)
    inc = ~adv
    n_excluded = 0
    if exclude is not None:
        ex = np.asarray(exclude, dtype=np.int64).ravel()
        _check_agents(ex, n, "exclude")
        before = int(inc.sum())
        inc[ex] = False
        n_excluded = before - int(inc.sum())
    if task == "colouring":
        if colours is None:
            colours = int(np.bincount(s, minlength=n).max()) + 1 if n else 1
        elif colours < 1:
            raise ValueError(f"colours must be >= 1; got {colours}")
        out = _colouring(ans, ok, inc, s, d, colours)
    elif colours is not None:
        raise ValueError(f"colours applies to the colouring task only; got task {task!r}")
    elif task == "vertex_cover":
        out = _vertex_cover(ans, ok, inc, s, d)
    elif task == "matching":
        out = _matching(ans, ok, inc, s, d)
    elif task == "leader_election":
        out = _leader_election(ans, ok, inc)
    else:
        out = _consensus(ans, ok, inc, events)
    head = {"task": task, "success": bool(out.pop("success")), "score": out.pop("score"),
            "agents": int(inc.sum()), "answered": int((inc & ok).sum()),
            "adversaries": int(adv.sum()), "excluded": n_excluded}
    return head | out
