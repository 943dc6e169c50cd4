"""The fault table: inject each fault into a running job on real processes and measure recovery.

Runs the scenarios of tests/faults.py (the same ones the test suite asserts) on one deployment —
private PostgreSQL and Redis, `candor serve`, a CPU worker, a GPU worker and `candor beat`, with a
5 s lease — and prints a Markdown table: fault, final state, recovery time, items lost, labels
differing from an uninterrupted run with the same seed, deliveries. With --write, the table
replaces the block between the markers in docs/reliability.md.

Usage: python bench/faults.py [--items 200] [--only NAME ...] [--write]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import faults  # noqa: E402

DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"


def table(outcomes: list[faults.Outcome], seconds: float, items: int) -> str:
    rows = [
        "| fault | final state | recovery (s) | items lost | labels differing | deliveries |",
        "|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        rec = "—" if o.recovery_seconds is None else f"{o.recovery_seconds:.1f}"
        diff = "—" if o.labels_differing is None else f"{o.labels_differing} of {o.items}"
        lost = f"{o.items_lost} of {o.items}" if o.state == "succeeded" else "— (cancelled)"
        rows.append(f"| {o.fault} | {o.state} | {rec} | {lost} | {diff} | {o.attempts} |")
    rows.append("")
    rows.append(
        f"{items} images, tiny backbone, lease {faults.LEASE:g} s, heartbeat every 0.5 s, reaper every 1 s; "
        f"whole run {seconds:.0f} s. Recovery: from the fault to the job's next sign of life (a heartbeat "
        "from a new delivery, or its end)."
    )
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--only", nargs="*", choices=sorted(faults.SCENARIOS), help="run only these scenarios")
    ap.add_argument("--write", action="store_true", help=f"write the table into {DOC.relative_to(ROOT)}")
    args = ap.parse_args()
    start = time.monotonic()
    outcomes = []
    with faults.Deployment(n_items=args.items) as d:
        for name, scenario in faults.SCENARIOS.items():
            if args.only and name not in args.only:
                continue
            out = scenario(d)
            print(out, flush=True)
            outcomes.append(out)
    text = table(outcomes, time.monotonic() - start, args.items)
    print(text)
    if args.write:
        doc = DOC.read_text()
        block = f"{BEGIN}\n{text}\n{END}"
        DOC.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, doc, flags=re.S))
    return 0


if __name__ == "__main__":
    sys.exit(main())
