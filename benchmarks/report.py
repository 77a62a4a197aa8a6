"""``python -m benchmarks.report results.json``: a run's results as a Markdown table (for
docs/performance.md), from the file ``--json-out`` wrote."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _value(r: dict[str, Any]) -> str:
    v = float(r["value"])
    return f"{v:,.2f}" if v < 10 else f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def side_by_side(results: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Rows of a workload-by-library table from the results' JSON (``--peers``):
    each peer's median with jobqueue's ratio to it."""
    peer_results = [r for r in results if "peer" in r and r["bench"].startswith("peer_")]
    titles: list[str] = []
    for r in peer_results:
        if r["driver"] not in titles:
            titles.append(r["driver"])
    cells: dict[str, dict[str, str]] = defaultdict(dict)
    for r in peer_results:
        v = float(r["value"])
        text = f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
        if r.get("ratio") is not None:
            text += f" ({r['ratio']:.2f})"
        name = r["bench"].removeprefix("peer_")
        cells[f"{name} ({r['unit']})"][r["driver"]] = text
        machine = r.get("machine_cpu_us_per_job")
        if machine is not None:
            # The library's own process, and the rest of the machine (the server, mostly).
            client = r["client_cpu_us_per_job"]
            cpu = f"{machine:,.0f} = {client:,.0f} + {machine - client:,.0f}"
            cells[f"{name}, CPU µs/job: all = library + rest"][r["driver"]] = cpu
    rows: list[tuple[str, ...]] = [("workload", *titles)]
    rows += [(name, *(row.get(t, "") for t in titles)) for name, row in cells.items()]
    return rows


def markdown(doc: dict[str, Any]) -> str:
    s = doc["settings"]
    lines = [
        f"PostgreSQL {s.get('server_version', '?')}: fsync={s.get('fsync')}, "
        f"synchronous_commit={s.get('synchronous_commit')}, wal_level={s.get('wal_level')}, "
        f"shared_buffers={s.get('shared_buffers')}, full_page_writes={s.get('full_page_writes')}; "
        f"Python {s.get('python')}, {s.get('cpus')} CPUs; {doc['seconds']:.0f} s in all.",
        "",
        "| raw ceiling | rows/s |",
        "|---|---:|",
    ]
    results = doc["results"]
    if s.get("mode") == "peers":
        return "\n".join([lines[0], "", *_peer_table(s, results)])
    lines += [f"| `{r['bench']}` | {_value(r)} |" for r in results if r["driver"] == "raw"]
    lines += [
        "",
        "| result | driver | value | unit | ratio | to | target | met |",
        "|---|---|---:|---|---:|---|---|---|",
    ]
    for r in results:
        if r["driver"] == "raw":
            continue
        ratio = r.get("ratio")
        met = {True: "yes", False: "**no**", None: ""}[r.get("met")]
        lines.append(
            f"| `{r['bench']}` | {r['driver']} | {_value(r)} | {r['unit']} | "
            f"{'' if ratio is None else f'{ratio:.2f}'} | {r.get('ceiling', '')} | "
            f"{r.get('target', '')} | {met} |"
        )
    return "\n".join(lines)


def _peer_table(settings: dict[str, Any], results: list[dict[str, Any]]) -> list[str]:
    """The peer comparison as one table, a library a column, the ratios in brackets."""
    rows = side_by_side(results)
    reps = settings.get("repetitions")
    lines = [
        f"Medians of {reps} interleaved repetitions; in brackets, jobqueue's number divided "
        "by the peer's (above 1 is ahead for jobs/s, below 1 is ahead for ms).",
    ]
    if any(r.get("machine_cpu_us_per_job") is not None for r in results):
        lines.append(
            "CPU rows: the CPU time the whole machine spent per job while the workload ran, "
            "as the library's own process and the rest (the database server, mostly; "
            "anything else running too)."
        )
    lines += [
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|---" + "|---:" * (len(rows[0]) - 1) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return lines


if __name__ == "__main__":
    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
