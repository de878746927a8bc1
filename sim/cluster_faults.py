"""Nemesis kinds that know the cluster: membership changes and leadership transfers, which
act through the cluster's own requests, and the isolation of the current leader
(`--nemesis membership,transfer,leader-partition`, all three in `all`).

    membership  one of, whichever the current configuration allows (drawn at random):
                - remove a voter, add it back after `step-ms` as a standby or spare, and
                  promote it to voter after another `step-ms` (a removed-then-re-added
                  node must rejoin with its old log and catch up: one that stopped on
                  learning it was removed is restarted, as an operator would, once the
                  request to add it back is sent);
                - add a node that is not a member (the run's extra, non-founding node,
                  or a removed one) as a standby or spare, promote it after `step-ms`;
                - promote a standby or spare to voter.
    transfer    hand leadership to a random other voter (TimeoutNow); half of the
                transfers (`cut-ms` > 0) also lose every message from the new leader to
                the old one for `cut-ms` from the moment the TimeoutNow leaves: the old
                leader then learns of the new term only from a follower's response (a
                path no symmetric fault reaches, pre-vote and leases being what they are).
    leader-partition  isolate the node that leads now (Jepsen's nemesis of that name):
                it keeps serving the requests it receives as a stale leader until
                check-quorum deposes it, so its log gains uncommitted entries that the
                new leader's log, or snapshot, must replace.

Each request goes to every node that believes it leads (a stale leader among them must
refuse or lose it), or, with none, to the lowest-numbered up node (which refuses). The
cluster's one-change-at-a-time rules make many of these refusals: a refusal is part of
the workload, not a failed fault. What was decided (action, node, role, delays) is drawn
when the fault is chosen and recorded in the event; applying it draws nothing, so a
replayed event sends exactly the same requests.

A run with the membership kind gets `EXTRA_NODES` more nodes, started with no
configuration, so that growing the cluster has a node to add.
"""

from typing import Any, Callable

from ..actors.raft_node import ChangeMembership, TransferLeadership
from ..core.raft import REMOVED_FROM_CLUSTER
from ..core.raft_messages import TimeoutNow
from ..core.raft_types import Role
from .network import isolate
from .simulation import NodeState, Simulation

__all__ = ["CLUSTER_EVENT_PARAMETERS", "CLUSTER_FAULT_KINDS", "EXTRA_NODES", "apply_cluster_fault",
           "choose_cluster_fault", "extra_nodes_for", "install_voter_minority_guard"]

CLUSTER_FAULT_KINDS = ("membership", "transfer", "leader-partition")
CLUSTER_EVENT_PARAMETERS: dict[str, dict[str, str]] = {
    "membership": {"action": "word", "node": "int", "role": "word", "step-ms": "float"},
    "transfer": {"node": "int", "cut-ms": "float"},
    "leader-partition": {"node": "int", "duration-ms": "float"},
}
EXTRA_NODES = 1
_ROLE_NAMES = {"voter": Role.VOTER, "standby": Role.STANDBY, "spare": Role.SPARE, "none": None}


def extra_nodes_for(kinds, actor: str) -> int:
    """Non-founding nodes a run needs for its nemesis kinds."""
    return EXTRA_NODES if "membership" in kinds and actor in ("raft", "database") else 0


def _current_leader(sim: Simulation) -> int | None:
    """The up node leading the highest term: the configuration a client would see."""
    leaders = sim.leaders()
    return max(leaders, key=lambda node: sim.nodes[node].actor.raft.term) if leaders else None


def choose_cluster_fault(sim: Simulation, kind: str, duration_ms: float, rng) -> dict[str, Any] | None:
    """The parameters of a `kind` fault now, drawn from `rng` (None: nothing to do, e.g.
    no leader to ask)."""
    leader = _current_leader(sim)
    if leader is None:
        return None
    if kind == "leader-partition":
        return {"node": leader, "duration_ms": round(duration_ms, 3)}
    configuration = sim.nodes[leader].actor.raft.configuration
    if kind == "transfer":
        others = [voter for voter in configuration.voters if voter != leader]
        if not others:
            return None
        target = rng.choice(others)
        return {"node": target, "cut_ms": round(duration_ms, 3) if rng.random() < 0.5 else 0.0}
    options = []
    outsiders = [node for node in sim.node_ids if configuration.role(node) is None]
    non_voters = [node for node, role in configuration.members if role != Role.VOTER]
    if outsiders:
        options.append("add")
    if non_voters:
        options.append("promote")
    # Storage damaged at rest (the disk nemesis) may stop a node for good; it is allowed
    # on a minority of nodes only, so a removal must keep the damaged nodes a minority of
    # the voters that remain, or the cluster could lose its quorum for good.
    damaged = set().union(*sim.corrupted.values()) if sim.corrupted else set()
    removable = [voter for voter in configuration.voters
                 if 2 * len(damaged & (set(configuration.voters) - {voter})) < len(configuration.voters) - 1]
    if len(configuration.voters) > 1 and removable:
        options.append("remove")
    if not options:
        return None
    action = rng.choice(options)
    rejoin_role = rng.choice(("standby", "spare"))
    step_ms = round(duration_ms / 2, 3)
    if action == "add":
        return {"action": "add", "node": rng.choice(outsiders), "role": rejoin_role, "step_ms": step_ms}
    if action == "promote":
        return {"action": "promote", "node": rng.choice(non_voters), "role": "voter", "step_ms": step_ms}
    return {"action": "remove", "node": rng.choice(removable), "role": rejoin_role, "step_ms": step_ms}


class _CutAfterTimeoutNow:
    """Once a leader sends TimeoutNow to `target`, lose the target's messages to that
    leader for `cut_ms` (the TimeoutNow itself still arrives: the cut is one way). Disarmed
    after `cut_ms` if no TimeoutNow was sent by then (the transfer was refused), and at
    the final heal: no fault may start after it."""

    def __init__(self, sim: Simulation, target: int, cut_ms: float, later: Callable[..., None],
                 heal_at_ms: float) -> None:
        self.sim, self.target, self.cut_ms, self.later = sim, target, cut_ms, later
        self.heal_at_ms = heal_at_ms

    def arm(self) -> None:
        self.sim.send_observers.append(self._on_send)
        self.later(self.cut_ms, self._disarm)

    def _disarm(self) -> None:
        # A new list, not an in-place removal: this runs while `Simulation.transmit`
        # iterates the old one, and must not make it skip the next observer.
        self.sim.send_observers = [observer for observer in self.sim.send_observers if observer != self._on_send]

    def _on_send(self, src: int, dst: int, message: Any) -> None:
        if self.sim.now_ms >= self.heal_at_ms:
            self._disarm()
            return
        if dst != self.target or type(message) is not TimeoutNow:
            return
        self._disarm()
        self.sim.partition(frozenset({(self.target, src)}), "transfer-cut")
        self.later(self.cut_ms, self.sim.heal)


def _ask_leaders(sim: Simulation, request: Any) -> bool:
    targets = sim.leaders((NodeState.UP, NodeState.PAUSED))
    if not targets:
        up = sim.up_nodes()
        if not up:
            return False
        targets = up[:1]
    for node in targets:
        sim.submit(node, request)
    return True


def _add_back(sim: Simulation, node: int, role: Role | None) -> bool:
    """Ask for `node` to be added (back) with `role`. A node that stopped because the
    leader told it it was removed starts again with its old log, as an operator starts
    it again to rejoin (after the request: the client's request reaches the leader long
    before the restarted node could campaign and hear "removed" once more)."""
    if not _ask_leaders(sim, ChangeMembership(node=node, role=role)):
        return False
    stopped = sim.nodes[node]
    if stopped.state == NodeState.HALTED and (stopped.halt_reason or "").startswith(REMOVED_FROM_CLUSTER):
        sim.restart(node)
    return True


def apply_cluster_fault(sim: Simulation, kind: str, params: dict[str, Any],
                        later: Callable[..., None], heal_at_ms: float) -> bool:
    """Send the fault's requests (and schedule its follow-ups with `later(delay, f, *args)`,
    which drops them after the final heal at `heal_at_ms`). False when no node can be
    asked."""
    node = params["node"]
    if kind == "leader-partition":
        if sim.nodes[node].state not in (NodeState.UP, NodeState.PAUSED):
            return False
        sim.partition(isolate(node, sim.node_ids), "isolate-leader")
        later(params["duration-ms"], sim.heal)
        return True
    if kind == "transfer":
        if not _ask_leaders(sim, TransferLeadership(target=node)):
            return False
        if params["cut-ms"] > 0:
            _CutAfterTimeoutNow(sim, node, params["cut-ms"], later, heal_at_ms).arm()
        return True
    action, step_ms = params["action"], params["step-ms"]
    role = _ROLE_NAMES[params["role"]]
    promote = ChangeMembership(node=node, role=Role.VOTER)
    if action == "promote":
        return _ask_leaders(sim, promote)
    if action == "add":
        if not _add_back(sim, node, role):
            return False
        later(step_ms, _ask_leaders, sim, promote)
        return True
    if not _ask_leaders(sim, ChangeMembership(node=node, role=None)):
        return False
    later(step_ms, _add_back, sim, node, role)
    later(2 * step_ms, _ask_leaders, sim, promote)
    return True


def install_voter_minority_guard(sim: Simulation) -> None:
    """Keep damage at rest (which may stop a node for good) on a minority of the *current*
    voters, not of the nodes the run started with: once a membership fault has shrunk the
    voters to two, one damaged voter would be half of them and the cluster could never
    recover its quorum. The voters are those of the newest configuration any live node holds."""
    default_guard = sim.corruption_guard

    def guard(node_id: int, file: str, offset: int) -> bool:
        newest = None
        for other in sim.node_ids:
            raft = getattr(sim.nodes[other].actor, "raft", None)
            if raft is not None and (newest is None or raft.configuration_index > newest.configuration_index):
                newest = raft
        if newest is None:
            return default_guard(node_id, file, offset)
        voters = set(newest.configuration.voters)
        damaged = set().union(*sim.corrupted.values()) if sim.corrupted else set()
        if node_id in damaged:
            return True
        return 2 * len((damaged | {node_id}) & voters) < len(voters) and default_guard(node_id, file, offset)

    sim.corruption_guard = guard

