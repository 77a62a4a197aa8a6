"""``python -m benchmarks --peers``: jobqueue side by side with PgQueuer, procrastinate and
Oban for Python, on the same PostgreSQL server, interleaved.

For each repetition, for each workload, jobqueue and then each peer run in turn (the order
of the libraries moves on by one at each repetition, so none always runs first). jobqueue
runs in this process through `AsyncJobQueue` and `Worker` on psycopg, with the drain,
enqueue and latency workloads' own code; each peer runs in a subprocess in its own
virtualenv (venvs.py), through a script of ours written against its public API
(``bench_<peer>.py``). Every run counts by SQL that each job was enqueued, or ran, exactly
once. The results are the medians of the repetitions, and jobqueue's ratio to each peer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from jobqueue import AsyncJobQueue, __version__
from jobqueue.drivers.engines import describe_url

from .. import drain, enqueue, latency
from ..common import Bench, Result, Sizes, dump_results, percentile
from ..report import side_by_side
from . import harness, raw_side
from .venvs import PEERS, PeerSkipped, PeerSpec, PeerUnavailable, ensure_venv

OURS = "jobqueue"
OURS_TITLE = f"jobqueue {__version__}"
#: The driver jobqueue's side runs on (the library's default).
OURS_DRIVER = "psycopg"
#: Concurrency of the idle worker in the pickup workload (as in `latency`).
PICKUP_CONCURRENCY = 10
#: The longest one peer run may take before it counts as failed.
RUN_TIMEOUT = 1800.0

#: Issue 15's targets against PgQueuer: (workload, metric) -> jobqueue / PgQueuer at least.
TARGETS = {
    ("drain_c1", "rate"): 1.3,
    ("drain_c10", "rate"): 1.5,
    ("drain_c50", "rate"): 1.5,
    ("enqueue_one", "rate"): 1.3,
    ("enqueue_batch", "rate"): 2.0,
}
TARGET_PEER = "pgqueuer"


@dataclass(frozen=True)
class Workload:
    """One of the compared workloads, with its size."""

    name: str
    kind: str
    jobs: int
    concurrency: int

    @property
    def metrics(self) -> tuple[str, ...]:
        return ("p50", "p99") if self.kind == harness.PICKUP else ("rate",)

    def bench(self, metric: str) -> str:
        return f"peer_{self.name}" if metric == "rate" else f"peer_{self.name}_{metric}"

    def task(self, url: str) -> harness.Task:
        return harness.Task(url, self.kind, self.jobs, self.concurrency)


def workloads(sizes: Sizes, *, quick: bool) -> list[Workload]:
    """Issue 15's workloads at these sizes; ``--quick`` keeps one small drain."""
    if quick:
        return [Workload("drain_c10", harness.DRAIN, sizes.drain, 10)]
    out = [
        Workload(
            f"drain_c{c}",
            harness.DRAIN,
            sizes.drain_one if c == 1 else sizes.drain,
            c,
        )
        for c in sizes.drain_concurrency
    ]
    out.append(Workload("enqueue_one", harness.ENQUEUE_ONE, sizes.enqueue_one, 1))
    out.append(Workload("enqueue_batch", harness.ENQUEUE_BATCH, sizes.enqueue_many, 1))
    out.append(Workload("pickup", harness.PICKUP, sizes.latency_samples, PICKUP_CONCURRENCY))
    return out


def schedule(
    chosen: Sequence[Workload], libraries: Sequence[str], repetitions: int
) -> list[tuple[int, Workload, str]]:
    """The runs in order: repetition by repetition, workload by workload, every library in
    turn, the libraries' order rotated by one at each repetition."""
    runs = []
    for rep in range(repetitions):
        shift = rep % len(libraries)
        order = [*libraries[shift:], *libraries[:shift]]
        runs += [(rep, w, lib) for w in chosen for lib in order]
    return runs


def metrics(w: Workload, run: dict[str, Any]) -> dict[str, float]:
    """A run's numbers from its JSON line: jobs/s, or pickup p50 and p99 in ms. The same
    arithmetic for every library."""
    if w.kind == harness.PICKUP:
        samples = run["samples_s"]
        return {q: percentile(samples, int(q[1:])) * 1000 for q in w.metrics}
    return {"rate": w.jobs / run["seconds"]}


def cpu_per_job(w: Workload, runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Median CPU microseconds per job over the runs that timed it: the library's process
    (``client``) and the whole machine's (``machine``: the library, the database server
    and anything else running), where every run reported it."""
    out: dict[str, float] = {}
    for key, name in (("client_cpu_s", "client"), ("machine_cpu_s", "machine")):
        values = [v for r in runs if (v := r.get(key)) is not None]
        if values and len(values) == len(runs):
            out[name] = statistics.median(v * 1e6 / w.jobs for v in values)
    return out


def medians(runs: Iterable[dict[str, float]]) -> dict[str, float]:
    by_metric: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for name, value in run.items():
            by_metric[name].append(value)
    return {name: statistics.median(values) for name, values in by_metric.items()}


def ratio(ours: float, theirs: float) -> float | None:
    """jobqueue's number divided by the peer's: above 1 is ahead for a rate, below 1 for a
    latency."""
    return ours / theirs if theirs else None


def met(w: Workload, metric: str, peer: str, value: float | None) -> bool | None:
    """Whether a ratio meets its target (docs/performance.md): the rates against
    PgQueuer; the pickup latencies below every peer's."""
    if value is None:
        return None
    if metric != "rate":
        return value < 1
    goal = TARGETS.get((w.name, metric))
    return None if goal is None or peer != TARGET_PEER else value >= goal


def target(w: Workload, metric: str, spec: PeerSpec) -> str | None:
    if metric != "rate":
        return f"jobqueue below {spec.label}"
    goal = TARGETS.get((w.name, metric))
    if goal is None or spec.name != TARGET_PEER:
        return None
    return f"jobqueue >= {goal}x {spec.label}"


# -- jobqueue's side (in this process) ------------------------------------------------------


async def _ours(bench: Bench, w: Workload) -> dict[str, Any]:
    """One jobqueue run of the workload, as a peer script's JSON line."""
    task = w.task(bench.libpq_url())
    driver = f"{OURS_DRIVER} {version(OURS_DRIVER)}"
    fields: dict[str, Any] = {"peer": OURS, "version": __version__, "driver": driver}
    url = bench.async_url(OURS_DRIVER)
    if w.kind == harness.DRAIN:
        table = drain.backlog(bench, f"peer_drain{w.concurrency}", w.jobs)
        done = await drain.drain(bench, url, table, concurrency=w.concurrency)
        checked = drain.check(bench, table, w.jobs, done.seen)
        rows = checked.outcome["completed_once"] if checked.once else -1
        fields.update(done.timed.fields())
        return harness.result(task, rows=rows, handled=done.seen, **fields)
    if w.kind == harness.PICKUP:
        picked = await latency.pickups(bench, OURS_DRIVER, listen=True, floor=False)
        rows = picked.outcome["completed_once"]
        return harness.result(task, rows=rows, samples=picked.samples, **fields)
    table = bench.table(f"peer_{w.kind}")
    async with AsyncJobQueue(url, table=table) as q:
        await enqueue.one_by_one(q, -1, 1)  # connect and warm up outside the timing
        if w.kind == harness.ENQUEUE_ONE:
            with harness.Stopwatch() as timed:
                await enqueue.one_by_one(q, 0, w.jobs)
            fields.update(timed.fields())
        else:
            _, timed = await enqueue.batch(q, w.jobs)
            fields.update(timed.fields())
    rows = bench.outcome(table)["total"]
    bench.drop(table)
    return harness.result(task, rows=rows, **fields)


def run_ours(bench: Bench, w: Workload) -> dict[str, Any]:
    return asyncio.run(_ours(bench, w))


# -- the peers' side (a subprocess each) ----------------------------------------------------


class PeerFailed(RuntimeError):
    """A peer run exited with an error, printed no result, or did not run every job once."""


def run_peer(python: Path, spec: PeerSpec, task: harness.Task) -> dict[str, Any]:
    """Run one workload through the peer's script in its virtualenv; its JSON line."""
    # The peer's virtualenv alone decides what it imports.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    try:
        proc = subprocess.run(
            [str(python), str(spec.script), *task.argv()],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            env=env,
        )
    except subprocess.TimeoutExpired as e:
        raise PeerFailed(f"{spec.name} {task.kind}: no result after {e.timeout:.0f} s") from e
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-8:])
        raise PeerFailed(f"{spec.name} {task.kind}: exit {proc.returncode}: {tail}")
    out: dict[str, Any] = json.loads(lines[-1])
    return out


# -- the comparison -------------------------------------------------------------------------


@dataclass
class Library:
    """jobqueue or a peer, ready to run a workload."""

    name: str
    title: str
    driver: str
    python: str
    run: Callable[[Workload], dict[str, Any]]


def _peers(names: Sequence[str], bench: Bench, *, quick: bool) -> tuple[list[Library], list[str]]:
    """The peers ready to run (virtualenvs made), and a line for each one skipped."""
    ready: list[Library] = []
    skipped: list[str] = []
    url = bench.libpq_url()
    for name in names:
        spec = PEERS[name]
        try:
            venv = ensure_venv(spec, bench.note)
        except PeerSkipped as e:
            skipped.append(f"{spec.title}: skipped: {e}")
            bench.note(skipped[-1])
            continue
        except PeerUnavailable as e:
            if quick:  # CI's smoke run must not fail on the network
                print(f"peer comparison skipped: {spec.title}: {e}", flush=True)
                raise SystemExit(0) from e
            raise SystemExit(f"peer comparison: {spec.title}: {e}") from e

        def run(w: Workload, python: Path = venv.python, spec: PeerSpec = spec) -> dict[str, Any]:
            return run_peer(python, spec, w.task(url))

        ready.append(Library(spec.name, spec.title, spec.driver, venv.python_version, run))
    return ready, skipped


def _emit(
    bench: Bench,
    w: Workload,
    libraries: Sequence[Library],
    runs: dict[tuple[str, str], list[dict[str, Any]]],
) -> None:
    """The medians of one workload as results: jobqueue's, then each peer's with the ratio."""
    numbers = {lib.name: [metrics(w, r) for r in runs[(w.name, lib.name)]] for lib in libraries}
    middle = {name: medians(values) for name, values in numbers.items()}
    unit = {"rate": "jobs/s", "p50": "ms", "p99": "ms"}
    for metric in w.metrics:
        ours = middle[OURS][metric]
        for lib in libraries:
            value = middle[lib.name][metric]
            extra: dict[str, Any] = {
                "peer": lib.name,
                "workload": w.name,
                "jobs": w.jobs,
                "concurrency": w.concurrency,
                "repetitions": len(numbers[lib.name]),
                "runs": [round(r[metric], 3) for r in numbers[lib.name]],
                "drivers": sorted({r["driver"] for r in runs[(w.name, lib.name)]}),
            }
            if metric == "rate":
                cpu = cpu_per_job(w, runs[(w.name, lib.name)])
                extra.update({f"{k}_cpu_us_per_job": round(v, 1) for k, v in cpu.items()})
            result = Result(
                w.bench(metric), value, unit[metric], driver=f"{lib.title} ({lib.driver})"
            )
            if lib.name != OURS:
                spec = PEERS.get(lib.name)  # None: PostgreSQL's own column, with no target
                result.ceiling = f"jobqueue / {raw_side.TITLE if spec is None else spec.label}"
                result.ratio = ratio(ours, value)
                if spec is not None:
                    result.target = target(w, metric, spec)
                    result.met = met(w, metric, lib.name, result.ratio) if result.target else None
                extra["jobqueue"] = round(ours, 3)
            result.extra = extra
            bench.emit(result)


def main(args: argparse.Namespace, sizes: Sizes) -> int:
    """Run the comparison; the exit status."""
    if not args.url or not args.url.startswith("postgres"):
        raise SystemExit("the peer comparison needs PostgreSQL: --url postgresql://...")
    chosen = _chosen(args, sizes)
    repetitions = args.repeat or (1 if args.quick else 3)
    bench = Bench(args.url, sizes)
    started = time.perf_counter()
    try:
        peers, skipped = _peers(_peer_names(args.peers, quick=args.quick), bench, quick=args.quick)
        here = ".".join(map(str, sys.version_info[:2]))
        ours = Library(OURS, OURS_TITLE, OURS_DRIVER, here, lambda w: run_ours(bench, w))
        url = bench.libpq_url()
        bare = Library(
            raw_side.NAME,
            raw_side.TITLE,
            raw_side.DRIVER,
            here,
            lambda w: raw_side.run(bench, w.task(url)),
        )
        libraries = [ours, *peers, bare]
        settings = _settings(bench, args, chosen, libraries, repetitions)
        print(json.dumps(settings), flush=True)
        runs = _run_all(bench, chosen, libraries, repetitions)
        for w in chosen:
            _emit(bench, w, libraries, runs)
    except PeerFailed as e:
        raise SystemExit(f"peer comparison failed: {e}") from e
    finally:
        bench.cleanup()
    total = time.perf_counter() - started
    _summary(bench.results, repetitions, skipped)
    print(f"\n{len(bench.results)} results in {total:.1f} s on {describe_url(args.url)}")
    if args.json_out:
        dump_results(args.json_out, settings, total, bench.results)
    return 0


def _chosen(args: argparse.Namespace, sizes: Sizes) -> list[Workload]:
    if not args.only:
        return workloads(sizes, quick=args.quick)
    every = workloads(sizes, quick=False)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in {w.name for w in every}]
    if unknown:
        raise SystemExit(
            f"unknown peer workload(s) {unknown}; choose from {[w.name for w in every]}"
        )
    return [w for w in every if w.name in names]


def _settings(
    bench: Bench,
    args: argparse.Namespace,
    chosen: Sequence[Workload],
    libraries: Sequence[Library],
    repetitions: int,
) -> dict[str, Any]:
    """The run's first line: the server, and what ran where."""
    out: dict[str, Any] = {"bench": "settings", "url": describe_url(args.url)}
    out.update(bench.server_settings())
    out.update(
        mode="peers",
        repetitions=repetitions,
        sizes="quick" if args.quick else "full",
        workloads={w.name: w.jobs for w in chosen},
        libraries={
            lib.name: f"{lib.title} ({lib.driver}), Python {lib.python}" for lib in libraries
        },
    )
    return out


def _summary(results: Sequence[Result], repetitions: int, skipped: Sequence[str]) -> None:
    from ..cli import grid, table  # the CLI imports this module lazily

    print()
    print(table(list(results)))
    print()
    print(f"medians of {repetitions} interleaved repetition(s); (x) = jobqueue / the peer:")
    print("above 1 is ahead for jobs/s, below 1 is ahead for ms")
    print(grid(side_by_side([r.as_json() for r in results])))
    for line in skipped:
        print(line)


def _peer_names(option: str, *, quick: bool) -> list[str]:
    if option == "all":
        return [TARGET_PEER] if quick else list(PEERS)
    names = [n.strip().lower() for n in option.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise SystemExit(f"unknown peer(s) {unknown}; choose from {', '.join(PEERS)}")
    return names


def _run_all(
    bench: Bench, chosen: Sequence[Workload], libraries: Sequence[Library], repetitions: int
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Every run in `schedule` order; a run that did not do every job exactly once stops
    the comparison."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    by_name = {lib.name: lib for lib in libraries}
    for rep, w, name in schedule(chosen, [lib.name for lib in libraries], repetitions):
        bench.note(f"repetition {rep + 1}/{repetitions}: {w.name} through {name} ...")
        t0 = time.perf_counter()
        out = by_name[name].run(w)
        if not out["exactly_once"]:
            raise PeerFailed(f"{name} {w.name}: not every job exactly once: {out}")
        runs[(w.name, name)].append(out)
        shown = ", ".join(f"{k} {v:,.2f}" for k, v in metrics(w, out).items())
        bench.note(f"  {shown} ({time.perf_counter() - t0:.1f} s)")
    return runs
