"""Analysis of run directories (``swarm.analysis``); built in a later issue.

Reads run directories (manifest and Arrow logs) only; see ``swarm.open_run``.
"""
