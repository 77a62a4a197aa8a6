"""``python -m benchmarks.report results.json``: a run's results as a Markdown table (for
docs/performance.md), from the file ``--json-out`` wrote."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _value(r: dict[str, Any]) -> str:
    v = float(r["value"])
    return f"{v:,.2f}" if v < 10 else f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


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


if __name__ == "__main__":
    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
