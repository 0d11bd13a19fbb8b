"""The checks of a drill under load (scripts/lib/drill.sh): every accepted request ends in
exactly one result and one subscription, nothing is left in the queues, no worker handed a job
back. Prints a markdown table and exits 1 when a check fails.

Reads loadgen's --json report, single-partner or `--pace` (each partner's full single-partner
report is under `detail`; the figures are summed), and the simulator's /_sim/stats.
"""
import argparse
import json
import sys
from collections import Counter


def single_reports(report):
    """The single-partner reports a loadgen report holds, by partner."""
    if report.get("mode") == "partners":
        return {p["partner"]: p["detail"] for p in report["partners"]}
    return {"": report}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--report", required=True, help="loadgen's --json report")
    parser.add_argument("--stats", required=True, help="the simulator's /_sim/stats")
    parser.add_argument("--queued", type=int, required=True, help="messages left in the work queues")
    parser.add_argument("--handed-back", type=int, required=True)
    parser.add_argument("--title", required=True, help="the first line")
    parser.add_argument("--line", action="append", default=[], help="a line under it (repeat)")
    parser.add_argument("--check", nargs=3, action="append", default=[],
                        metavar=("NAME", "MEASURED", "OK"),
                        help="one more row of the drill's own; OK is yes or no (repeat)")
    parser.add_argument("--faults", action="store_true",
                        help="the simulator injected 500s: count only the creates it answered 200")
    args = parser.parse_args()

    report, stats = json.load(open(args.report)), json.load(open(args.stats))
    reports = single_reports(report)
    results = [r["results"] or {} for r in reports.values()]
    jobs = sum(r.get("followed", 0) for r in results)
    received = sum(r.get("received", 0) for r in results)
    lost = sum(r.get("no_result", 0) for r in results)
    outcomes = sum((Counter(r.get("outcomes", {})) for r in results), Counter())
    different = sum(r.get("duplicate_events", {}).get("different_id", 0) for r in results)
    same = sum(r.get("duplicate_events", {}).get("same_id", 0) for r in results)
    unexpected = sum(r.get("unexpected_events", 0) for r in results)
    answers = sum((Counter(r["answers"]) for r in reports.values()), Counter())
    refused = {k: v for k, v in sorted(answers.items()) if not k.startswith("200")}
    p99s = [r["latency_ms"]["accepted"]["p99"] for r in reports.values() if r["latency_ms"].get("accepted")]
    by_partner = ", ".join(f"{code} {r['results']['followed'] if r['results'] else 0}"
                           for code, r in reports.items() if code)

    subscriptions = stats["subscriptions_by_pay_id"]
    twice = sum(1 for n in subscriptions.values() if n > 1)
    creates_by_status = stats["requests"].get("POST /v1/subscriptions", {})
    if args.faults:
        creates = creates_by_status.get("200", 0)
        creates_name = "simulator subscription creates answered 200"
    else:
        creates = sum(creates_by_status.values())
        creates_name = "simulator subscription creates"

    checks = [
        ("requests accepted (jobs)", f"{jobs}" + (f" ({by_partner})" if by_partner else ""), jobs > 0),
        ("lost (accepted, no result event)", lost, lost == 0),
        ("jobs with a final result", f"{received} of {jobs} {dict(outcomes)}", received == jobs),
        ("payIds with a subscription at the simulator", f"{len(subscriptions)} for {jobs} jobs",
         len(subscriptions) == jobs),
        ("payIds with two subscriptions", twice, twice == 0),
        (creates_name, f"{creates} for {jobs} jobs", creates == jobs),
        ("second outcome for a payId", different, different == 0),
        ("event published twice (same id)", same, same == 0),
        ("result events for payIds never accepted", unexpected, unexpected == 0),
        ("jobs handed back by a stopping worker", args.handed_back, args.handed_back == 0),
        ("messages left in jobs/lanes/delay/retry queues", args.queued, args.queued == 0),
    ]
    checks += [(name, value, ok == "yes") for name, value, ok in args.check]
    print(args.title)
    for line in args.line:
        print(f"  {line}")
    p99 = max(p99s) if p99s else None
    print(f"  answers other than 200: {refused or 'none'}; accepted p99 {p99} ms")
    print("| check | measured | ok |")
    print("|---|---|---|")
    failed = False
    for name, value, ok in checks:
        failed |= not ok
        print(f"| {name} | {value} | {'yes' if ok else 'NO'} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
