#!/usr/bin/env python3
"""Checks a /metrics body with a real Prometheus parser (prometheus_client's).

Reads the text format 0.0.4 from a file argument or stdin, parses it with
prometheus_client.parser.text_string_to_metric_families (which raises on
what Prometheus would reject), and checks that every family
docs/protocol.md "Lame duck and health" promises is there with its type and
its labels. `--expect SERIES=VALUE` (repeatable) checks values too, for an
integration test that knows what it did: `--expect 'echod_connections=3'`,
`--expect 'echod_connections_closed_total{reason="idle"}=1'`.

Exit status: 0 when everything holds, 1 with one line per problem otherwise.

Needs `pip install prometheus_client`. Phase 1 feeds it the sample the
`health::metrics` unit tests render:

    cargo test --lib health::metrics::tests::a_sample_for_an_external_parser \
        -- --ignored --nocapture | python3 tests/prometheus_text.py --from-test-output
"""

import argparse
import sys

from prometheus_client.parser import text_string_to_metric_families

# Family name (as prometheus_client reports it: counters without _total),
# type, and the `reason` labels it must carry (None: no labels).
REQUIRED = {
    "echod_state": ("gauge", None),
    "echod_connections": ("gauge", None),
    "echod_connections_accepted": ("counter", None),
    "echod_connections_closed": (
        "counter",
        {"peer", "error", "idle", "per_ip", "deadline", "forced"},
    ),
    "echod_bytes_echoed": ("counter", None),
    "echod_pending_bytes": ("gauge", None),
    "echod_log_lines_dropped": ("counter", None),
    "process_start_time_seconds": ("gauge", None),
    "process_resident_memory_bytes": ("gauge", None),
    "process_open_fds": ("gauge", None),
    "process_cpu_seconds": ("counter", None),
}
# Present together, or not at all (only when --udp is configured).
UDP = {
    "echod_udp_datagrams_received": ("counter", None),
    "echod_udp_datagrams_echoed": ("counter", None),
    "echod_udp_dropped": ("counter", {"low_port", "bad_source", "rate", "kernel_full"}),
}
BEGIN, END = "--- metrics sample begin ---", "--- metrics sample end ---"


def series_key(sample):
    labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
    return f"{sample.name}{{{labels}}}" if labels else sample.name


def check(text, expects, want_udp):
    problems = []
    if not text.endswith("\n"):
        problems.append("the text does not end with a newline")
    try:
        families = {f.name: f for f in text_string_to_metric_families(text)}
    except Exception as err:  # the parser's own words are the report
        return [f"prometheus_client cannot parse it: {err!r}"]
    required = dict(REQUIRED)
    has_udp = any(name in families for name in UDP)
    if has_udp or want_udp:
        required.update(UDP)
    for name, (kind, reasons) in required.items():
        family = families.get(name)
        if family is None:
            problems.append(f"missing family {name}")
            continue
        if family.type != kind:
            problems.append(f"{name} is a {family.type}, not a {kind}")
        if not family.documentation:
            problems.append(f"{name} has no HELP text")
        labels = [s.labels for s in family.samples]
        if reasons is None:
            if any(labels):
                problems.append(f"{name} has unexpected labels {labels}")
        else:
            seen = {l.get("reason") for l in labels}
            if not reasons <= seen:
                problems.append(f"{name} lacks reasons {sorted(reasons - seen)}")
    values = {
        series_key(s): s.value for f in families.values() for s in f.samples
    }
    for expect in expects:
        series, _, value = expect.rpartition("=")
        got = values.get(series)
        if got is None:
            problems.append(f"no series {series}")
        elif got != float(value):
            problems.append(f"{series} is {got}, expected {value}")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", help="metrics text (default: stdin)")
    parser.add_argument("--expect", action="append", default=[], metavar="SERIES=VALUE")
    parser.add_argument("--udp", action="store_true", help="UDP families must be present")
    parser.add_argument(
        "--from-test-output",
        action="store_true",
        help=f"take the text between '{BEGIN}' and '{END}' lines",
    )
    args = parser.parse_args()
    text = open(args.file).read() if args.file else sys.stdin.read()
    if args.from_test_output:
        start, end = text.find(BEGIN + "\n"), text.find(END)
        if start < 0 or end < start:
            print("prometheus_text: no sample between the markers", file=sys.stderr)
            return 1
        text = text[start + len(BEGIN) + 1 : end]
    problems = check(text, args.expect, args.udp)
    for problem in problems:
        print(f"prometheus_text: {problem}", file=sys.stderr)
    if not problems:
        print(f"prometheus_text: ok ({text.count(chr(10))} lines)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
