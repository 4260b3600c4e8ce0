#!/usr/bin/env python3
"""Render a bench results folder (bench/run.py's output) as a markdown comparison table.

    python3 bench/render.py bench/results/<date>-<profile>     # writes table.md, prints it

One row per target, one column per figure, each peer figure followed by the ratio
Pushnode / peer (for memory and latency lower is better, for rates higher is better).
A figure that was not measured says why in a footnote; a peer held below the profile's
connection count by the 20,000-descriptor limit is marked with a dagger.
"""

import json
import os
import sys

LABEL = {"pushnode": "Pushnode", "pushnode-cap": "Pushnode at the peers' cap", "mosquitto": "mosquitto", "nats-server": "nats-server",
         "rumqttd": "rumqttd", "bare": "ceiling (bench bare-server)"}

# (column header, scenario, extractor, kind) kind: "bytes", "rate", "ms", "count"
COLUMNS = [
    ("user B / idle conn", "idle", lambda d: d.get("user_bytes_per_conn"), "bytes"),
    ("kernel B / idle conn", "idle", lambda d: d.get("kernel_bytes_per_conn"), "bytes"),
    ("connect /s", "connect", lambda d: d.get("connect_rate_per_s"), "rate"),
    ("fan-out deliveries /s (QoS 1)", "fanout", lambda d: d.get("deliveries_per_s"), "rate"),
    ("unicast achieved /s", "unicast", lambda d: d.get("achieved_rate_per_s"), "rate"),
    ("unicast p50 ms", "unicast", lambda d: lat(d, "p50"), "ms"),
    ("unicast p99 ms", "unicast", lambda d: lat(d, "p99"), "ms"),
    ("unicast p99.9 ms", "unicast", lambda d: lat(d, "p999"), "ms"),
]
# Shown only when the run had the `http` scenario (Pushnode's HTTP frontend alone, HTTP/2).
HTTP_COLUMNS = [
    ("HTTP frontend req/s", "http", lambda d: d.get("achieved_rate_per_s"), "rate"),
]
# Shown only when the run had the `http1` scenario (the same over HTTP/1.1 keep-alive).
HTTP1_COLUMNS = [
    ("HTTP/1.1 keep-alive req/s", "http1", lambda d: d.get("achieved_rate_per_s"), "rate"),
]
# Shown only when the run had the `fsync` scenario (Pushnode's HTTP unicast, fsync durability).
FSYNC_COLUMNS = [
    ("fsync p50 ms", "fsync", lambda d: lat(d, "p50"), "ms"),
    ("fsync p99 ms", "fsync", lambda d: lat(d, "p99"), "ms"),
    ("fsync p99.9 ms", "fsync", lambda d: lat(d, "p999"), "ms"),
    ("fsync max ms", "fsync", lambda d: lat(d, "max"), "ms"),
]
# Shown only when the run had the `idle-tls` scenario (idle connections over MQTT-over-TLS).
TLS_COLUMNS = [
    ("user B / idle TLS conn", "idle-tls", lambda d: d.get("user_bytes_per_conn"), "bytes"),
    ("kernel B / idle TLS conn", "idle-tls", lambda d: d.get("kernel_bytes_per_conn"), "bytes"),
]


def lat(d, key):
    v = (d.get("latency_us") or {}).get(key)
    if v is None or not (d.get("latency_us") or {}).get("count", 1):
        return None
    return v / 1000.0


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fmt(v, kind):
    if v is None:
        return None
    if kind == "ms":
        return f"{v:.2f}" if v < 100 else f"{v:,.0f}"
    if kind in ("rate", "bytes", "count"):
        return f"{v:,.0f}"
    return str(v)


def ratio(ours, theirs):
    if ours is None or theirs in (None, 0):
        return ""
    return f" ({ours / theirs:.2f}x)"


class Notes:
    def __init__(self):
        self.items = []

    def ref(self, text):
        if text not in self.items:
            self.items.append(text)
        return f"[{self.items.index(text) + 1}]"


def problem(doc, run):
    """Why a scenario's figures are missing or suspect, or None."""
    if doc is None:
        return "no result file"
    if doc.get("skipped"):
        return doc["skipped"]
    if doc.get("error"):
        return doc["error"]
    if run and run.get("loadgen_rc") not in (0, None):
        return f"loadgen exited {run.get('loadgen_rc')}" + (
            " (killed: over time)" if run.get("loadgen_killed") else "")
    return None


def connected_note(doc, want):
    if not doc:
        return None
    got = doc.get("connected")
    retried = doc.get("connect_retries") or 0
    again = f"; {retried:,} first attempts timed out and were tried again" if retried else ""
    if got is None or want is None or got >= want:
        return f"all {got:,} connected{again}" if retried and got is not None else None
    failed = doc.get("failed") or {}
    reasons = ", ".join(f"{k}: {v:,}" for k, v in sorted(failed.items())) or "no reason given"
    return f"only {got:,} of {want:,} connected ({reasons}){again}"


def render(out_dir):
    meta = load(os.path.join(out_dir, "meta.json")) or {}
    runs = load(os.path.join(out_dir, "runs.json")) or []
    run_of = {(r["target"], r["scenario"]): r for r in runs}
    targets = meta.get("targets") or sorted({r["target"] for r in runs})
    p = meta.get("params", {})
    notes = Notes()
    ran = set(meta.get("scenarios") or [])
    # The TLS columns go next to the plain idle ones.
    columns = COLUMNS[:2] + TLS_COLUMNS + COLUMNS[2:] if "idle-tls" in ran else list(COLUMNS)
    if "http" in ran:
        columns += HTTP_COLUMNS
    if "http1" in ran:
        columns += HTTP1_COLUMNS
    if "fsync" in ran:
        columns += FSYNC_COLUMNS

    docs = {}
    for t in targets:
        for s in {c[1] for c in columns} | {"churn"}:
            docs[(t, s)] = load(os.path.join(out_dir, f"{t}-{s}.json"))

    def value(t, col):
        _, scen, get, _ = col
        if ran and scen not in ran:
            return None, ""
        doc = docs.get((t, scen))
        why = problem(doc, run_of.get((t, scen)))
        if why:
            return None, notes.ref(f"{LABEL.get(t, t)} {scen}: {why}")
        v = get(doc)
        if v is None:
            return None, notes.ref(f"{LABEL.get(t, t)} {scen}: figure missing from loadgen's JSON")
        mark = ""
        cn = connected_note(doc, (run_of.get((t, scen)) or {}).get("connections"))
        if cn:
            mark = " " + notes.ref(f"{LABEL.get(t, t)} {scen}: {cn}")
        return v, mark

    lines = []
    m = meta.get("machine", {})
    lines.append(f"Profile `{meta.get('profile', '?')}`, started {meta.get('started', '?')}, "
                 f"{m.get('nproc', '?')} cores ({m.get('cpu', '?')}), kernel {m.get('kernel', '?')}, "
                 f"{(m.get('mem_total_kib') or 0) / 1048576:.1f} GiB RAM, git {meta.get('versions', {}).get('git', '?')}; "
                 f"run took {meta.get('elapsed_s', '?')} s.")
    sysctl = m.get("sysctl") or {}
    if sysctl:
        lines.append("Host: " + ", ".join(f"`{k}` = {v}" for k, v in sorted(sysctl.items())) + ".")
    lines.append("")
    head = ["target", "MQTT", "connections"] + [c[0] for c in columns] + ["churn lost / dup"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * 3 + ["---:"] * (len(columns) + 1)) + "|")

    ours = {}
    if "pushnode" in targets:
        for col in columns:
            ours[col[0]] = value("pushnode", col)[0]
    for t in targets:
        conns = {r.get("connections") for r in runs if r["target"] == t and r.get("connections")}
        capped = any(r.get("capped") for r in runs if r["target"] == t)
        n = max(conns) if conns else None
        ctext = f"{n:,}" if n else "?"
        if capped:
            ctext += " " + notes.ref(
                f"† peers are capped at {n:,} connections: a process may hold at most "
                f"{meta.get('fd_limit', 20000):,} file descriptors on this machine (hard limit), "
                f"while Pushnode's io_uring direct descriptors are not counted against it")
        ver = "5 (HTTP push)" if t.startswith("pushnode") else str(meta.get("mqtt_version", {}).get(t, "?"))
        row = [LABEL.get(t, t), ver, ctext]
        for col in columns:
            v, mark = value(t, col)
            cell = fmt(v, col[3]) or ("n/a" if mark else "-")
            if not t.startswith("pushnode") and v is not None:
                cell += ratio(ours.get(col[0]), v)
            row.append(cell + mark)
        churn = docs.get((t, "churn"))
        why = problem(churn, run_of.get((t, "churn")))
        if ran and "churn" not in ran:
            row.append("-")
        elif why:
            row.append("n/a" + notes.ref(f"{LABEL.get(t, t)} churn: {why}"))
        else:
            row.append(f"{churn.get('lost', '?')} / {churn.get('duplicates', '?')}")
        lines.append("| " + " | ".join(row) + " |")

    lines.append("")
    lines.append("Ratios in parentheses are Pushnode / peer: above 1 means Pushnode is higher "
                 "(better for rates; worse for memory and latency).")
    if p:
        lines.append(
            f"Scenarios: idle holds {p.get('idle_hold_s')} s; fan-out publishes "
            f"{p.get('fanout_messages')} QoS 1 messages to every subscriber of one topic, "
            + (f"{p.get('fanout_interval_ms')} ms apart" if p.get('fanout_interval_ms') else "back to back")
            + (f" (the median of {p['fanout_repeats']} runs, each on a fresh server)"
               if (p.get("fanout_repeats") or 1) > 1 else "")
            + f"; unicast sends open-loop at "
            f"{p.get('unicast_rate'):,}/s for {p.get('unicast_s')} s to random devices "
            f"(latency from the scheduled send time; Pushnode: {p.get('unicast_batch')} RegIDs "
            f"per HTTP request); churn reconnects {p.get('churn_per_s'):,} "
            f"clients/s for {p.get('churn_s')} s while {p.get('churn_rate'):,} pushes/s flow.")
    if "http" in ran:
        reps = (run_of.get(("pushnode", "http")) or {}).get("repeat_rates")
        lines.append(
            f"http is Pushnode's HTTP frontend alone: {p.get('http_devices'):,} devices register and go "
            f"offline, then loadgen offers {p.get('http_rate'):,} single-RegID `POST /v1/messages`/s "
            f"for {p.get('http_s')} s over 4 HTTP/2 connections (256 in flight); each push is "
            "stored for its offline device (buffered durability)"
            + (f"; median of {len(reps)} runs, each on a fresh node: "
               + " / ".join(f"{r:,.0f}" for r in reps) + " requests/s" if reps else "") + ".")
    if "http1" in ran:
        reps = (run_of.get(("pushnode", "http1")) or {}).get("repeat_rates")
        lines.append(
            "http1 is the same load over HTTP/1.1: 256 keep-alive connections, one request in "
            "flight on each (a send and a receive per request on both sides)"
            + (f"; median of {len(reps)} runs, each on a fresh node: "
               + " / ".join(f"{r:,.0f}" for r in reps) + " requests/s" if reps else "") + ".")
    if "fsync" in ran:
        fs = load(os.path.join(out_dir, "pushnode-fsync.json")) or {}
        lines.append(
            f"fsync is Pushnode's unicast through the HTTP API with `durability = \"fsync\"`: "
            f"{p.get('fsync_devices'):,} devices online, loadgen offers {p.get('fsync_rate'):,} "
            f"target deliveries/s for {p.get('fsync_s')} s, 100 RegIDs per `POST /v1/messages`, "
            "each request's devices spread over two loadgen workers; latency from the scheduled "
            "send time to the device's receipt"
            + (f"; achieved {fs['achieved_rate_per_s']:,.0f}/s, {fs.get('deliveries', 0):,} of "
               f"{fs.get('messages_sent', 0):,} delivered" if fs.get("achieved_rate_per_s") else "") + ".")
    if "idle-tls" in ran:
        lines.append("idle-tls is idle over MQTT-over-TLS (TLS 1.3 unless a side refuses it; "
                     "throwaway CA, ECDSA P-256 certificate): Pushnode's rustls listener, "
                     "mosquitto's OpenSSL listener.")
    if ran:
        lines.append(f"Scenarios run: {', '.join(sorted(ran))}; `-` = not run in this invocation.")
    if notes.items:
        lines.append("")
        for i, text in enumerate(notes.items, 1):
            lines.append(f"[{i}] {text}")

    # Secondary table: what each run cost (loadgen and server), to spot a loadgen bottleneck.
    lines.append("")
    lines.append("Cost of each run (to spot a loadgen bottleneck: loadgen CPU near elapsed x cores):")
    lines.append("")
    lines.append("| target | scenario | connected / wanted | elapsed s | loadgen CPU s | "
                 "loadgen max RSS MiB | server CPU s | server peak RSS MiB |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        d = docs.get((r["target"], r["scenario"])) or load(
            os.path.join(out_dir, f"{r['target']}-{r['scenario']}.json")) or {}
        if r.get("skipped"):
            continue
        lg = d.get("loadgen") or {}
        def mib(b):
            return f"{b / 1048576:,.1f}" if isinstance(b, (int, float)) else "?"

        def num(v, digits=1):
            return f"{v:,.{digits}f}" if isinstance(v, (int, float)) else "?"
        lines.append("| " + " | ".join([
            LABEL.get(r["target"], r["target"]), r["scenario"],
            f"{d.get('connected', '?')} / {r.get('connections', '?')}",
            num(d.get("elapsed_s", r.get("wall_s"))),
            num(lg.get("cpu_s"), 2), mib(lg.get("max_rss_bytes")),
            num(r.get("server_cpu_s"), 2), mib(r.get("server_peak_rss_bytes")),
        ]) + " |")
    return "\n".join(lines) + "\n"


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: render.py RESULTS_DIR")
    out_dir = sys.argv[1]
    text = render(out_dir)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
