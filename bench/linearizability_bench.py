"""Benchmark: check a 10,000-operation partitioned register history (issue 7: <= 10 s).

    python bench/linearizability_bench.py [--operations N] [--keys K] [--processes P]
                                          [--info-probability X] [--seed S] [--corrupt]

The history comes from a real register run under random concurrency (so it is
linearizable), with compare-and-set, failures and crashed (`info`) operations. With
--corrupt one read is changed to a value never written, and the checker must find it.
Prints the generation and check times and the verdict.
"""

import argparse
import random
import sys
import time

from raftlite.jepsen_like.history import Event, pair_operations
from raftlite.jepsen_like.linearizability import LinearizabilityLimits, check_linearizability
from raftlite.jepsen_like.models import CasRegisterModel, generate_register_history


def corrupt_one_read(events: list[Event], rng: random.Random) -> list[Event]:
    reads = [event for event in events if event.type == "ok" and event.f == "read"]
    victim = rng.choice(reads)
    key, _ = victim.value
    replaced = Event(type="ok", f=victim.f, value=(key, -1), process=victim.process, index=victim.index,
                     time=victim.time)
    return [replaced if event is victim else event for event in events]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=5)
    parser.add_argument("--processes", type=int, default=10)
    parser.add_argument("--info-probability", type=float, default=0.01)
    parser.add_argument("--fail-probability", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--corrupt", action="store_true", help="change one read to a value never written")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds before 'unknown'")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    started = time.perf_counter()
    events = generate_register_history(
        rng, operations=args.operations, processes=args.processes, keys=args.keys,
        info_probability=args.info_probability, fail_probability=args.fail_probability,
    )
    if args.corrupt:
        events = corrupt_one_read(events, rng)
    generated = time.perf_counter()
    operations = pair_operations(events)
    kinds = {kind: sum(1 for operation in operations if operation.type == kind) for kind in ("ok", "fail", "info")}
    verdict = check_linearizability(operations, CasRegisterModel(),
                                    limits=LinearizabilityLimits(time_limit_s=args.time_limit))
    checked = time.perf_counter()
    print(f"history: {len(operations)} operations ({kinds['ok']} ok, {kinds['fail']} fail, {kinds['info']} info), "
          f"{args.keys} keys, {args.processes} processes, seed {args.seed}; generated in {generated - started:.2f} s")
    print(f"check: valid={verdict.valid} in {checked - generated:.2f} s, "
          f"{verdict.details['configurations']} configurations explored")
    expected = False if args.corrupt else True
    return 0 if verdict.valid == expected else 1


if __name__ == "__main__":
    sys.exit(main())
