"""A longer jepsen_like campaign in the simulator: every workload under every nemesis
(each alone, and all together) over a range of seeds, with progress, rate and ETA, and
a summary table at the end.

    python -m raftlite.jepsen_like.campaign [--seeds 1..20] [--workloads all|LIST]
        [--nemesis each,all|LIST] [--time-limit S] [--out DIR]

``--nemesis each`` runs every kind alone; ``all`` runs all kinds at once; a comma list
of kinds runs that combination. Invalid runs write their history, verdict and report
under ``--out`` (default ``jepsen-campaign``), named by workload, nemesis and seed, so any
red cell can be replayed with ``raftlite jepsen`` and the same seed.

Exit status: 0 when every run is valid, 1 when any is invalid, 3 when some are unknown
(and none invalid), 2 for a usage mistake.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Sequence

from .nemesis_schedule import NEMESIS_CHOICES, parse_nemesis_schedule
from .runner import JepsenOptions, run_jepsen, write_outputs
from .workloads import WORKLOADS

__all__ = ["main", "plan_campaign"]


def _seeds(text: str) -> list[int]:
    if ".." in text:
        low, high = text.split("..", 1)
        first, last = int(low), int(high)
    else:
        first = last = int(text)
    if first < 0 or last < first:
        raise ValueError(f"seeds must be A..B with 0 <= A <= B, not {text!r}")
    return list(range(first, last + 1))


def plan_campaign(workloads: Sequence[str], nemesis_sets: Sequence[str], seeds: Sequence[int]) -> list[tuple]:
    """(workload, nemesis kinds, label, seed) for every run, in the order they run."""
    combinations: list[tuple[tuple[str, ...], str]] = []
    for entry in nemesis_sets:
        if entry == "each":
            combinations.extend(((kind,), kind) for kind in NEMESIS_CHOICES)
        elif entry == "all":
            combinations.append((NEMESIS_CHOICES, "all"))
        else:
            kinds = parse_nemesis_schedule(entry.replace("+", ","))
            combinations.append((kinds, "+".join(kinds) or "none"))
    return [(workload, kinds, label, seed) for seed in seeds for workload in workloads for kinds, label in combinations]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raftlite.jepsen_like.campaign",
                                     description="Every workload under every nemesis, over many seeds (simulator).")
    parser.add_argument("--seeds", default="1..10", help="A..B or one seed (default 1..10)")
    parser.add_argument("--workloads", default="all", help="'all' or a comma list of " + ", ".join(WORKLOADS))
    parser.add_argument("--nemesis", default="each,all",
                        help="comma list of: each (every kind alone), all (all kinds at once), or kinds joined by +")
    parser.add_argument("--time-limit", type=float, default=10.0, help="simulated seconds per run (default 10)")
    parser.add_argument("--out", default="jepsen-campaign", help="where invalid runs write their evidence")
    args = parser.parse_args(argv)
    try:
        seeds = _seeds(args.seeds)
        workloads = list(WORKLOADS) if args.workloads == "all" else [w.strip() for w in args.workloads.split(",")]
        unknown = [w for w in workloads if w not in WORKLOADS]
        if unknown:
            raise ValueError(f"unknown workload {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
        if not args.time_limit > 0:
            raise ValueError("--time-limit must be positive")
        runs = plan_campaign(workloads, [part.strip() for part in args.nemesis.split(",") if part.strip()], seeds)
    except ValueError as error:
        print(f"campaign: error: {error}", file=sys.stderr)
        return 2

    started = time.perf_counter()
    cells: dict[tuple[str, str], dict] = {}
    for number, (workload, kinds, label, seed) in enumerate(runs, start=1):
        result = run_jepsen(JepsenOptions(workload=workload, nemesis=kinds, seed=seed, time_limit_s=args.time_limit))
        cell = cells.setdefault((workload, label), {"runs": 0, "valid": 0, "invalid": [], "unknown": [], "ops": 0})
        cell["runs"] += 1
        cell["ops"] += result.counts()["invoke"]
        outcome = {True: "valid", False: "INVALID"}.get(result.valid, "unknown")
        if result.valid is True:
            cell["valid"] += 1
        else:
            cell["invalid" if result.valid is False else "unknown"].append(seed)
            write_outputs(result, os.path.join(args.out, f"{workload}-{label}-seed{seed}"))
        elapsed = time.perf_counter() - started
        rate = number / elapsed if elapsed > 0 else 0.0
        eta = (len(runs) - number) / rate if rate > 0 else 0.0
        print(f"[{number}/{len(runs)}] {workload:<8} {label:<16} seed {seed:<4} {outcome:<8} "
              f"({result.wall_seconds:.1f} s)  {rate:.2f} runs/s  ETA {eta:.0f} s", flush=True)
        if result.valid is False:
            for line in result.summary().splitlines()[3:]:
                print(f"      {line}", flush=True)

    print()
    print(f"{'workload':<9} {'nemesis':<17} {'runs':>5} {'valid':>6} {'ops':>8}  invalid seeds / unknown seeds")
    for (workload, label), cell in sorted(cells.items()):
        print(f"{workload:<9} {label:<17} {cell['runs']:>5} {cell['valid']:>6} {cell['ops']:>8}  "
              f"{cell['invalid'] or '-'} / {cell['unknown'] or '-'}")
    total = sum(cell["runs"] for cell in cells.values())
    invalid = sum(len(cell["invalid"]) for cell in cells.values())
    unknown = sum(len(cell["unknown"]) for cell in cells.values())
    print(f"{total} runs in {time.perf_counter() - started:.0f} s: {total - invalid - unknown} valid, "
          f"{invalid} invalid, {unknown} unknown" + (f"; evidence under {args.out}" if invalid or unknown else ""))
    return 1 if invalid else (3 if unknown else 0)


if __name__ == "__main__":
    sys.exit(main())
