"""Every fault kind of the simulator, observed through actors (issue: foundation)."""

import pytest

from raftlite.actors.config import Config
from raftlite.actors.contract import Context, IoResult
from raftlite.actors.heartbeat import HeartbeatDetector, StatusRequest, StatusResponse
from raftlite.sim.disk import SECTOR_BYTES
from raftlite.sim.network import bridge, halves, isolate, majorities_ring, one_way
from raftlite.sim.rng import derive_rng
from raftlite.sim.simulation import NodeState, Simulation
from raftlite.sim.trace import Trace

pytestmark = pytest.mark.timeout(60)

FAST = Config(heartbeat_interval_ms=10.0, election_timeout_ms=100.0)


def heartbeat_cluster(nodes=3, seed=1, **kwargs) -> Simulation:
    sim = Simulation(
        seed=seed, node_ids=range(1, nodes + 1), actor_factory=lambda n: HeartbeatDetector(),
        config=FAST, trace=Trace(keep=True), **kwargs,
    )
    sim.start()
    return sim


def received_from(sim: Simulation, node: int, src: int) -> int:
    return sum(1 for e in sim.trace.events() if e["ev"] == "deliver" and e["n"] == node and e["src"] == src)


def drops(sim: Simulation, **match) -> list[dict]:
    return [e for e in sim.trace.events() if e["ev"] == "drop" and all(e.get(k) == v for k, v in match.items())]


# -- network ----------------------------------------------------------------------------


def test_one_way_partition_loses_messages_in_one_direction_only():
    sim = heartbeat_cluster()
    sim.run_for(200)
    sim.partition(one_way([2], [1]), "2 -> 1")
    before_1_from_2, before_2_from_1 = received_from(sim, 1, 2), received_from(sim, 2, 1)
    sim.run_for(500)
    assert received_from(sim, 1, 2) == before_1_from_2          # 2 -> 1 is cut
    assert received_from(sim, 2, 1) > before_2_from_1 + 40      # 1 -> 2 still flows
    assert drops(sim, n=1, src=2, why="partition")
    assert 2 in sim.actor(1).suspected and 1 not in sim.actor(2).suspected
    sim.heal()
    sim.run_for(100)
    assert sim.actor(1).suspected == set()


def test_partition_shapes_follow_jepsen():
    nodes = [1, 2, 3, 4, 5]
    rng = derive_rng(3, "test")
    assert isolate(3, nodes) == {(3, n) for n in nodes if n != 3} | {(n, 3) for n in nodes if n != 3}
    blocked = halves(nodes, rng)
    reachable = {n: {m for m in nodes if (n, m) not in blocked} for n in nodes}
    assert sorted(len(r) for r in reachable.values()) == [2, 2, 3, 3, 3]
    ring = majorities_ring(nodes, rng)
    heard_by = {n: frozenset(m for m in nodes if (m, n) not in ring) for n in nodes}
    assert all(len(h) == 3 and n in h for n, h in heard_by.items())   # each hears a majority
    assert len(set(heard_by.values())) == 5                           # ... all different
    cut = bridge(nodes, rng)
    middle = [n for n in nodes if all((n, m) not in cut for m in nodes)]
    assert len(middle) == 1
    others = [n for n in nodes if n != middle[0]]
    assert sum(1 for a in others for b in others if (a, b) in cut) == 8  # 2x2 both ways


def test_partition_in_flight_messages_are_lost_and_majorities_ring_suspicions_differ():
    sim = heartbeat_cluster(nodes=5)
    sim.run_for(200)
    sim.partition(majorities_ring(sim.node_ids, sim.rng), "ring")
    sim.run_for(500)
    suspected = {n: frozenset(sim.actor(n).suspected) for n in sim.node_ids}
    assert all(len(s) == 2 for s in suspected.values())
    assert len(set(suspected.values())) == 5


def test_loss_drops_a_share_of_messages():
    sim = heartbeat_cluster()
    sim.adjust_network(loss_probability=0.5)
    sim.run_for(2000)
    sends = [e for e in sim.trace.events() if e["ev"] == "send"]
    lost = sum(1 for e in sends if e.get("dropped") == "loss")
    assert 0.4 < lost / len(sends) < 0.6


def test_duplication_and_reordering_show_up_as_stale_heartbeats():
    quiet = heartbeat_cluster()
    quiet.run_for(1000)
    assert all(quiet.actor(n).stale_heartbeats == 0 for n in quiet.node_ids)

    duplicated = heartbeat_cluster()
    duplicated.adjust_network(duplicate_probability=1.0)
    duplicated.run_for(1000)
    assert all(duplicated.actor(n).stale_heartbeats >= 150 for n in duplicated.node_ids)

    reordered = heartbeat_cluster()
    reordered.adjust_network(reorder_probability=0.5, reorder_delay_ms=40.0)
    reordered.run_for(1000)
    assert all(reordered.actor(n).stale_heartbeats >= 10 for n in reordered.node_ids)


def test_bandwidth_and_queue_limits_delay_then_drop():
    sim = heartbeat_cluster()
    # 64-byte heartbeats over a 1 byte/ms link: 64 ms each on the wire, slower than they
    # are produced (one per 10 ms), so the 256-byte queue overflows.
    sim.adjust_network(bandwidth_bytes_per_ms=1.0, queue_bytes_max=256, jitter_ms=0.0)
    sim.run_for(1000)
    sends = [e for e in sim.trace.events() if e["ev"] == "send"]
    assert sum(1 for e in sends if e.get("dropped") == "queue-full") > len(sends) / 2
    arrivals = [e["t"] for e in sim.trace.events() if e["ev"] == "deliver" and e["n"] == 2 and e["src"] == 1]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert min(gaps) >= 63.9


def test_clog_holds_messages_then_delivers_them_all():
    sim = heartbeat_cluster()
    sim.run_for(100)
    sim.clog(1, 300)
    before = received_from(sim, 2, 1)
    sim.run_for(250)
    assert received_from(sim, 2, 1) == before and 1 in sim.actor(2).suspected
    sim.run_for(100)
    assert received_from(sim, 2, 1) >= before + 25       # the held messages arrived
    assert not drops(sim)                                # nothing was lost
    assert 1 not in sim.actor(2).suspected


# -- processes and clocks ---------------------------------------------------------------


def test_crash_loses_volatile_state_and_restart_reads_durable_state():
    sim = heartbeat_cluster()
    sim.run_for(500)
    assert sim.actor(2).heartbeats_received > 50 and sim.actor(2).incarnation == 1
    sim.crash(2)
    assert sim.node(2).state == NodeState.CRASHED and sim.actor(2) is None
    sim.run_for(300)
    assert 2 in sim.actor(1).suspected
    assert drops(sim, n=2, why="down")
    sim.restart(2)
    sim.run_for(1)
    assert sim.actor(2).heartbeats_received == 0          # volatile state is gone
    assert sim.actor(2).incarnation == 2                  # durable state came back
    sim.run_for(200)
    assert sim.actor(1).peer_incarnation[2] == 2 and 2 not in sim.actor(1).suspected


def test_pause_holds_inputs_and_resume_replays_them():
    sim = heartbeat_cluster()
    sim.run_for(100)
    sim.pause(3)
    received = sim.actor(3).heartbeats_received
    sim.run_for(300)
    assert sim.actor(3).heartbeats_received == received   # frozen while paused
    assert 3 in sim.actor(1).suspected
    backlog = len(sim.node(3).backlog)
    assert backlog >= 50
    sim.resume(3)
    assert sim.actor(3).heartbeats_received > received    # the backlog was processed
    sim.run_for(100)
    assert 3 not in sim.actor(1).suspected


def test_clock_drift_changes_timer_rate_and_skew_jumps_the_clock():
    sim = heartbeat_cluster()
    sim.drift_clock(1, 2.0)
    sim.run_for(1000)
    beats = {n: sim.actor(n).sequence for n in sim.node_ids}
    assert 190 <= beats[1] <= 202 and 95 <= beats[2] <= 101
    local_before = sim.actor(3).ctx.now_ms()
    sim.skew_clock(3, -5000.0)
    assert sim.actor(3).ctx.now_ms() == pytest.approx(local_before - 5000.0)


# -- disk -------------------------------------------------------------------------------


class DiskProbe:
    """Test actor: runs a list of disk commands at start; records what it read back."""

    def __init__(self, plan, seen):
        self.plan, self.seen, self.results = plan, seen, []

    def on_start(self, ctx: Context) -> None:
        self.ctx = ctx
        self.seen.append(dict(ctx.files))
        for step in self.plan:
            step(ctx)
        self.plan = []

    def on_message(self, src, message):
        pass

    def on_timer(self, timer):
        pass

    def on_io_done(self, token, result: IoResult):
        self.results.append((token, result))

    def status(self):
        return {}


def probe(plan, seed=1, **kwargs):
    seen = []
    sim = Simulation(seed=seed, node_ids=[1], actor_factory=lambda n: DiskProbe(plan, seen), trace=Trace(keep=True), **kwargs)
    sim.start()
    return sim, seen


def test_unsynced_bytes_are_gone_after_a_crash_while_synced_bytes_survive():
    sim, seen = probe([
        lambda c: c.write("a", "f", 0, b"synced"),
        lambda c: c.sync("s", "f"),
        lambda c: c.write("b", "f", 6, b"+unsynced"),
        lambda c: c.write("c", "g", 0, b"durable-write", durable=True),
    ])
    sim.run_for(50)
    assert [token for token, result in sim.actor(1).results if result.ok] == ["a", "s", "b", "c"]
    sim.crash(1, "lose")
    sim.restart(1)
    assert seen[-1] == {"f": b"synced", "g": b"durable-write"}


@pytest.mark.parametrize("mode, expected", [("lose", b""), ("keep", b"x")])
def test_a_write_in_flight_at_a_crash_is_at_the_crash_mercy(mode, expected):
    # Submitted, not completed, durable or not: the kernel may have written it or not.
    sim, seen = probe([lambda c: c.write("a", "f", 0, b"x", durable=True)])
    sim.crash(1, mode)
    sim.restart(1)
    assert seen[-1].get("f", b"") == expected


def test_torn_write_keeps_whole_sectors_only():
    payload = bytes(range(256)) * (8 * SECTOR_BYTES // 256)   # 8 sectors
    for seed in range(1, 30):
        sim, seen = probe([lambda c: c.write("w", "f", 0, payload)], seed=seed)
        sim.run_for(10)
        sim.crash(1, "tear")
        sim.restart(1)
        image = seen[-1].get("f", b"").ljust(len(payload), b"\0")
        kept = [image[i:i + SECTOR_BYTES] == payload[i:i + SECTOR_BYTES] for i in range(0, len(payload), SECTOR_BYTES)]
        zero = [image[i:i + SECTOR_BYTES] == bytes(SECTOR_BYTES) for i in range(0, len(payload), SECTOR_BYTES)]
        assert all(k or z for k, z in zip(kept, zero))        # each sector all-or-nothing
        if 0 < sum(kept) < len(kept):
            return                                            # a genuinely torn write seen
    pytest.fail("no seed tore a write")


def test_garbage_replaces_an_unsynced_write():
    sim, seen = probe([lambda c: c.write("w", "f", 0, b"A" * 1000)])
    sim.run_for(10)
    sim.crash(1, "garbage")
    sim.restart(1)
    image = seen[-1]["f"]
    assert len(image) == 1000 and image != b"A" * 1000 and image.strip(b"\0")


def test_injected_eio_fails_operations_and_the_actor_sees_it():
    sim = heartbeat_cluster()
    sim.run_for(100)
    sim.disk_errors(1, 2)
    sim.partition(isolate(2, sim.node_ids), "isolate 2")   # suspicions cause journal writes
    sim.run_for(300)
    assert sim.actor(1).disk_errors == 2
    assert any(e["ev"] == "disk-done" and e["n"] == 1 and e["error"] == "EIO" for e in sim.trace.events())


def test_a_full_disk_fails_writes_with_enospc_until_space_returns():
    sim, seen = probe([lambda c: c.write("a", "f", 0, b"0123456789")])
    sim.run_for(5)
    sim.fill_disk(1)
    actor = sim.actor(1)
    actor.ctx.write("grow", "f", 10, b"more")
    actor.ctx.write("overwrite", "f", 0, b"ABCD")          # in place: needs no space
    sim.node(1)._dispatch(actor.ctx.take_commands())
    sim.run_for(5)
    assert dict(actor.results)["grow"].error == "ENOSPC" and dict(actor.results)["overwrite"].ok
    sim.disk_capacity(1, None)
    actor.ctx.write("grow-again", "f", 10, b"more")
    sim.node(1)._dispatch(actor.ctx.take_commands())
    sim.run_for(5)
    assert dict(actor.results)["grow-again"].ok


def test_bit_flip_at_rest_is_detected_by_the_actor_on_restart():
    sim = heartbeat_cluster()
    sim.run_for(100)
    sim.partition(isolate(2, sim.node_ids), "isolate 2")
    sim.run_for(300)
    sim.heal()
    sim.run_for(300)    # node 1 journals: suspect 2, trust 2 (two records, both synced)
    journal = sim.node(1).disk.files["journal"]
    assert journal.last_durable_write[0] > 0
    sim.corrupt(1)
    flipped = [e for e in sim.trace.events() if e["ev"] == "corrupt"][-1]["flipped"]
    file, offset, _ = flipped
    assert not (journal.last_durable_write[0] <= offset < journal.last_durable_write[1]) or file != "journal"
    sim.restart(1)
    status = sim.status()[1]
    if file == "journal":
        assert status["journal_corrupt_offset"] == 0
    else:
        assert status["state"] == NodeState.HALTED and "incarnation" in status["halt"]


def test_corruption_spares_the_last_durable_write_and_never_hits_a_majority():
    sim = heartbeat_cluster(nodes=3)
    sim.run_for(50)
    # Each node has only its incarnation record: its last durable write. Nothing to flip.
    assert all(sim.corrupt(n) is None for n in sim.node_ids)
    assert sim.corruption_guard(1, "journal", 5)
    sim.corrupted[("journal", 5)] = {1}
    assert not sim.corruption_guard(2, "journal", 5)   # a second node would make a majority of 3
    assert not sim.corruption_guard(2, "journal", 99)  # ... wherever it is
    assert sim.corruption_guard(1, "journal", 99)      # the same node again is still a minority


def test_client_requests_get_replies():
    sim = heartbeat_cluster()
    sim.run_for(50)
    client = sim.submit(2, StatusRequest())
    sim.run_for(5)
    (reply,) = sim.replies[client]
    assert isinstance(reply, StatusResponse) and reply.node_id == 2 and reply.status["started"]


def test_per_link_latency_profiles():
    from raftlite.sim.network import LinkProfile

    sim = heartbeat_cluster()
    sim.network.set_profile(LinkProfile(latency_ms=40.0, jitter_ms=0.0), links=[(1, 2)])
    sim.run_for(500)
    sends = {e["id"]: e["t"] for e in sim.trace.events() if e["ev"] == "send"}
    delays = {}
    for event in sim.trace.events():
        if event["ev"] == "deliver":
            delays.setdefault((event["src"], event["n"]), []).append(event["t"] - sends[event["id"]])
    assert min(delays[(1, 2)]) >= 40.0 and max(delays[(1, 2)]) < 40.1   # the slow link
    assert max(delays[(2, 1)]) < 10.0                                     # the way back is not
