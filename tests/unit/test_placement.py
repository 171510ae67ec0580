"""The placement rules of sync workers over Ray nodes (engine/sync/placement.py), without a
cluster: the node for a new worker, and the one move that evens workers out."""

from __future__ import annotations

from engine.sync.placement import Node, choose_node, rebalance_move

HEAD = Node("h" * 8, "10.0.0.1", 4.0, head=True)
A = Node("a" * 8, "10.0.0.2", 2.0, head=False)
B = Node("b" * 8, "10.0.0.3", 2.0, head=False)
NO_CPU_HEAD = Node("k" * 8, "10.0.0.9", 0.0, head=True)  # a KubeRay head: num-cpus 0


def nodes(*ns: Node) -> dict[str, Node]:
    return {n.node_id: n for n in ns}


def test_a_new_worker_goes_to_the_node_with_the_fewest_workers():
    assert choose_node(nodes(HEAD, A, B), [A.node_id, HEAD.node_id]) == B.node_id
    assert choose_node(nodes(HEAD, A, B), [A.node_id, B.node_id, B.node_id]) == HEAD.node_id


def test_on_a_tie_a_worker_node_before_the_head_then_by_id():
    assert choose_node(nodes(HEAD, A), []) == A.node_id
    assert choose_node(nodes(HEAD, A), [A.node_id]) == HEAD.node_id
    assert choose_node(nodes(B, A), []) == A.node_id


def test_two_workers_on_a_head_and_a_node_take_one_each():
    placed: list[str | None] = []
    for _ in range(2):
        placed.append(choose_node(nodes(HEAD, A), placed))
    assert sorted(placed) == sorted([HEAD.node_id, A.node_id])


def test_a_suspect_node_takes_no_new_worker_unless_it_is_all_there_is():
    # A worker died there: the node may be gone though the GCS still lists it.
    assert choose_node(nodes(HEAD, A), [HEAD.node_id, HEAD.node_id], suspect={A.node_id}) == HEAD.node_id
    assert choose_node(nodes(A), [], suspect={A.node_id}) == A.node_id


def test_a_node_without_room_for_a_worker_takes_none():
    assert choose_node(nodes(NO_CPU_HEAD, A), [A.node_id, A.node_id]) == A.node_id
    assert choose_node(nodes(NO_CPU_HEAD), []) is None
    assert choose_node({}, []) is None


def test_unknown_nodes_of_running_workers_do_not_count():
    assert choose_node(nodes(HEAD, A), [None, "gone", A.node_id]) == HEAD.node_id


def test_a_joined_node_gets_one_worker_from_the_busiest():
    assert rebalance_move(nodes(HEAD, A), {0: HEAD.node_id, 1: HEAD.node_id}) == (1, HEAD.node_id, A.node_id)


def test_moves_go_one_at_a_time_until_no_node_has_two_more_than_another():
    workers = {0: A.node_id, 1: A.node_id, 2: A.node_id, 3: A.node_id}
    moves = []
    while (move := rebalance_move(nodes(A, B), workers)) is not None:
        slot, _, to = move
        workers[slot] = to
        moves.append(move)
    assert moves == [(3, A.node_id, B.node_id), (2, A.node_id, B.node_id)]


def test_even_or_off_by_one_stays():
    assert rebalance_move(nodes(HEAD, A), {0: HEAD.node_id, 1: A.node_id}) is None
    assert rebalance_move(nodes(HEAD, A), {0: HEAD.node_id, 1: A.node_id, 2: A.node_id}) is None
    assert rebalance_move(nodes(A), {0: A.node_id, 1: A.node_id}) is None


def test_no_move_to_a_suspect_node_or_one_without_room():
    assert rebalance_move(nodes(HEAD, A), {0: HEAD.node_id, 1: HEAD.node_id}, suspect={A.node_id}) is None
    assert rebalance_move(nodes(NO_CPU_HEAD, A), {0: A.node_id, 1: A.node_id}) is None
