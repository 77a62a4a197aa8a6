"""``python -m benchmarks``: run the workloads, print a JSON line per result, then a table."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jobqueue.drivers.engines import describe_url

from .common import QUICK, Bench, Result, Sizes, dump_results, resized, scaled

#: Workload name -> module, in the order they run. Raw ceilings come first: every other
#: result is divided by one of them.
WORKLOADS = {
    "raw": "benchmarks.raw",
    "enqueue": "benchmarks.enqueue",
    "drain": "benchmarks.drain",
    "fair": "benchmarks.fair",
    "limits": "benchmarks.limits",
    "latency": "benchmarks.latency",
    "backlog": "benchmarks.backlog",
    "memory": "benchmarks.memory",
    "execution": "benchmarks.execution",
    "contention": "benchmarks.contention",
    "position": "benchmarks.position",
    "scaleout": "benchmarks.scaleout",
    "cost": "benchmarks.cost",
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="jobqueue benchmarks: throughput, latency and memory, with raw ceilings.",
    )
    p.add_argument(
        "--url",
        help="database URL (default: a SQLite file in a temporary directory); tables are "
        "created with unique names and dropped at the end",
    )
    p.add_argument("--quick", action="store_true", help="small sizes: the whole run < 60 s")
    p.add_argument(
        "--only",
        help="comma-separated workloads to run: " + ", ".join(WORKLOADS) + " (the raw "
        "ceilings always run first unless --no-raw)",
    )
    p.add_argument("--no-raw", action="store_true", help="skip the raw ceilings (no ratios)")
    p.add_argument("--scale", type=float, help="multiply every size by this factor")
    p.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="NAME=N",
        help="set one size (after --scale), e.g. --size drain=5000; repeatable; the names "
        "are the fields of benchmarks.common.Sizes",
    )
    p.add_argument("--json-out", type=Path, help="also write all results to this JSON file")
    p.add_argument(
        "--peers",
        nargs="?",
        const="all",
        metavar="NAMES",
        help="instead of the workloads above, compare jobqueue with peer libraries on the "
        "same PostgreSQL server, each in a virtualenv made for it: pgqueuer, procrastinate, "
        "oban (comma-separated; default all, and pgqueuer alone with --quick, which runs "
        "one small drain); --only then picks among drain_c1, drain_c10, drain_c50, "
        "enqueue_one, enqueue_batch, pickup",
    )
    p.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help="with --peers: interleaved repetitions, reported as medians (default 3; "
        "1 with --quick)",
    )
    return p.parse_args(argv)


def table(results: list[Result]) -> str:
    rows = [("bench", "driver", "value", "unit", "ratio", "to ceiling", "target", "met")]
    for r in results:
        if r.driver == "raw":
            continue
        rows.append(
            (
                r.bench,
                r.driver,
                f"{r.value:,.1f}" if r.value < 100 else f"{r.value:,.0f}",
                r.unit,
                "" if r.ratio is None else f"{r.ratio:.2f}",
                r.ceiling or "",
                r.target or "",
                {True: "yes", False: "NO", None: ""}[r.met],
            )
        )
    ceilings = [("raw ceiling", "value", "unit")] + [
        (r.bench, f"{r.value:,.0f}", r.unit) for r in results if r.driver == "raw"
    ]
    if len(ceilings) == 1:  # --no-raw, --peers
        return grid(rows)
    return grid(ceilings) + "\n\n" + grid(rows)


def grid(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    sizes: Sizes = QUICK if args.quick else Sizes()
    if args.scale:
        sizes = scaled(sizes, args.scale)
    sizes = resized(sizes, args.size)
    if args.peers is not None:
        from .peers import compare  # imports the workloads it reuses: only when asked

        sys.exit(compare.main(args, sizes))
    chosen = list(WORKLOADS)
    if args.only:
        chosen = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in chosen if w not in WORKLOADS]
        if unknown:
            sys.exit(f"unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}")
        if "raw" not in chosen and not args.no_raw:
            chosen.insert(0, "raw")
    if args.no_raw and "raw" in chosen:
        chosen.remove("raw")

    with tempfile.TemporaryDirectory(prefix="jobqueue-bench-") as tmp:
        url = args.url or f"sqlite:///{tmp}/bench.db"
        bench = Bench(url, sizes)
        started = time.perf_counter()
        settings = {"bench": "settings", "url": describe_url(url), **bench.server_settings()}
        settings["sizes"] = "quick" if args.quick else "full"
        print(json.dumps(settings), flush=True)
        try:
            for name in WORKLOADS:
                if name not in chosen:
                    continue
                bench.note(f"{name} ...")
                module: Any = importlib.import_module(WORKLOADS[name])
                t0 = time.perf_counter()
                module.run(bench)
                bench.note(f"{name} took {time.perf_counter() - t0:.1f} s")
        finally:
            bench.cleanup()
        total = time.perf_counter() - started
        print()
        print(table(bench.results))
        print(f"\n{len(bench.results)} results in {total:.1f} s on {describe_url(url)}")
        if args.json_out:
            dump_results(args.json_out, settings, total, bench.results)
