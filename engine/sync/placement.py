"""Where a pipeline's sync workers run: the node for a new worker, and the one move that
evens them out after a node joined.

Pure functions of what the supervisor knows each round — the alive Ray nodes (the GCS's
list), the node each of its workers runs on, the nodes where a worker just died — so the
rules are tested without a cluster (``tests/unit/test_placement.py``). Called by
:class:`engine.sync.supervisor.SyncSupervisor`, which starts each worker with a soft node
affinity to :func:`choose_node`'s answer (Ray places it elsewhere if that node cannot take
it) and applies :func:`rebalance_move` by stopping the worker first, so no partition ever
has two owners.

Why not Ray's ``SPREAD``: it is round robin over the feasible nodes and knows nothing of
where this pipeline's workers already are, so a worker restarted after a node loss, or
moved when a node joins, may land anywhere; spreading again needs the choice made here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass

WORKER_CPUS = 0.5
"""The CPU a worker reserves; a node with less in total (a KubeRay head with ``num-cpus: 0``)
takes no workers."""


@dataclass(frozen=True, slots=True)
class Node:
    """An alive Ray node as the supervisor sees it."""

    node_id: str
    ip: str | None
    cpus: float  # its total CPU resource
    head: bool  # the head also runs the supervisors, Serve and the jobs' drivers


def choose_node(nodes: Mapping[str, Node], placed: Iterable[str | None], suspect: Set[str] = frozenset(),
                exclude: str | None = None) -> str | None:
    """The node for a new worker: among the nodes with room for a worker, not suspect (a
    worker died there and the GCS has not said yet whether the node is gone) and not
    ``exclude``, the one with the fewest of the pipeline's workers (``placed``: the node of
    each running worker); on a tie a worker node before the head, then the smallest id.
    When every fitting node is suspect, the suspect ones are chosen from (a single node whose
    worker crashed is still the place to restart it). None when no node fits: Ray places it."""
    fit = [n for n, node in nodes.items() if node.cpus >= WORKER_CPUS and n != exclude]
    choice = [n for n in fit if n not in suspect] or fit
    if not choice:
        return None
    count = {n: 0 for n in choice}
    for n in placed:
        if n in count:
            count[n] += 1
    return min(choice, key=lambda n: (count[n], nodes[n].head, n))


def rebalance_move(nodes: Mapping[str, Node], workers: Mapping[int, str],
                   suspect: Set[str] = frozenset()) -> tuple[int, str, str] | None:
    """``(worker, from_node, to_node)``: the one move that evens the workers out, or None.

    Over the nodes that can take workers and are not suspect, when the busiest node has two
    workers more than the idlest, its highest-numbered worker moves to the idlest (a worker
    node before the head). One move per call: the supervisor calls again a round later, after
    the moved worker runs, so work spreads one worker at a time. ``workers``: slot → node."""
    fit = [n for n, node in nodes.items() if node.cpus >= WORKER_CPUS and n not in suspect]
    if len(fit) < 2:
        return None
    by_node: dict[str, list[int]] = {n: [] for n in fit}
    for slot, n in workers.items():
        if n in by_node:
            by_node[n].append(slot)
    busiest = max(fit, key=lambda n: (len(by_node[n]), n))
    idlest = min(fit, key=lambda n: (len(by_node[n]), nodes[n].head, n))
    if len(by_node[busiest]) - len(by_node[idlest]) < 2:
        return None
    return max(by_node[busiest]), busiest, idlest
