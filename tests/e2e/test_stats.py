"""Statistics and metrics: /v1/stats/push and /v1/stats/users against a run whose counts
are known in advance (N sends to M devices, K online, C clicks, drops, expiries), across a
graceful restart, a kill -9 after the periodic flush, and a UTC day boundary (the node's
clock shifted with `clock_offset_secs`); CSV export; /metrics in the Prometheus text
format; `pushnode stats`."""

from __future__ import annotations

import calendar
import csv
import io
import re
import subprocess
import time

import pytest

from conftest import PUSHNODE_BIN, wait_until

PUSH_KEYS = ["date", "total", "single", "group", "delivered", "clicked", "expired", "dropped"]
USERS_KEYS = ["date", "online", "peak_online", "peak_at", "new", "active"]
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


# ------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------


def day_text(unix_s: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(unix_s))


def midnight_of(date: str) -> int:
    """Unix time of 00:00 UTC of YYYY-MM-DD."""
    return calendar.timegm(time.strptime(date, "%Y-%m-%d"))


def stats(node, app, kind: str = "push", expect: int = 200, secret: str | None = None, **params):
    r = node.http(
        "GET", f"/v1/stats/{kind}", params=params,
        headers={"Authorization": f"key={secret if secret is not None else app['app_secret']}"},
    )
    assert r.status_code == expect, f"GET /v1/stats/{kind} {params} -> {r.status_code} {r.text}"
    if expect != 200:
        return r
    if params.get("format") == "csv":
        return r
    rows = r.json()
    assert isinstance(rows, list), rows
    keys = PUSH_KEYS if kind == "push" else USERS_KEYS
    for row in rows:
        assert sorted(row) == sorted(keys), row
    return rows


def today_row(node, app, kind: str = "push") -> dict:
    rows = stats(node, app, kind)
    assert len(rows) == 1, rows
    return rows[0]


def counts(row: dict, keys) -> dict:
    return {k: row[k] for k in keys}


def click(dev, msg_id: str, timeout: float = 5.0) -> None:
    """The device reports a click: PUBLISH QoS 1 of the message id to `ack/click`."""
    info = dev.client.publish("ack/click", msg_id.encode(), qos=1)
    info.wait_for_publish(timeout)
    assert info.is_published(), f"no PUBACK for the click on {msg_id}"


def wait_row(node, app, expected: dict, kind: str = "push", timeout: float = 10.0, **params) -> dict:
    """Polls until the row of `expected['date']` (or today's) holds `expected`."""
    last = {}

    def check():
        nonlocal last
        rows = stats(node, app, kind, **params)
        rows = [r for r in rows if "date" not in expected or r["date"] == expected["date"]]
        last = rows
        return rows and all(rows[0][k] == v for k, v in expected.items())

    try:
        wait_until(check, timeout, interval=0.2, what=f"{kind} stats {expected}")
    except AssertionError as e:
        raise AssertionError(f"{e}; last rows {last}") from None
    return last[0]


def config(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


METRIC_LINE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"'
    r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*)?\})? (-?[0-9.]+(?:[eE][+-]?[0-9]+)?|NaN|[+-]Inf)$'
)


def metrics(node) -> dict:
    """GET /metrics parsed: {(name, frozenset(labels)): value}; checks every line."""
    r = node.http("GET", "/metrics", headers={"Authorization": f"Bearer {node.admin_token}"})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4"), r.headers
    out = {}
    typed = set()
    for line in r.text.splitlines():
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram"), line
            typed.add(name)
            continue
        if line.startswith("# HELP "):
            continue
        m = METRIC_LINE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels = m.group(1), m.group(3) or ""
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in typed or base in typed, f"sample without a TYPE line: {line!r}"
        pairs = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', labels))
        key = (name, pairs)
        assert key not in out, f"duplicate sample {line!r}"
        out[key] = float(m.group(4))
    return out


def metric(samples: dict, name: str, **labels) -> float:
    want = frozenset(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


# ------------------------------------------------------------------------------------
# known counts
# ------------------------------------------------------------------------------------

N, M, K, C = 3, 4, 2, 2  # sends, devices, online devices, clicks


def known_run(node, app):
    """N sends to all M devices (K online, acking; pending queue of 2 so each offline device
    drops its oldest; the last send lives 2 s so it expires for the offline ones), one topic
    send to the K online devices, C clicks. Returns the expected push and users counts."""
    devices = [node.register(app) for _ in range(M)]
    regids = [r for r, _ in devices]
    online = []
    for regid, token in devices[:K]:
        dev = node.device(app, regid, token)
        dev.connect()
        assert dev.subscribe("topic/stats") == [1]
        online.append(dev)
    ids = []
    for i in range(N):
        ttl = 2 if i == N - 1 else 3600
        res = node.send(app, regids, title=f"m{i}", ttl=ttl)
        assert res["targets"] == M and res["invalid"] == [], res
        node.wait_delivered(app, res["id"], K)
        ids.append(res["id"])
    r = node.http("POST", "/v1/messages", headers={"Authorization": f"key={app['app_secret']}"},
                  json={"target": {"topic": "stats"}, "type": "passthrough", "payload": "g"})
    assert r.status_code == 200 and r.json()["targets"] == K, r.text
    node.wait_delivered(app, r.json()["id"], K)
    for dev in online:
        dev.wait_messages(N + 1)
    for msg_id in ids[:C]:
        click(online[0], msg_id)
    push = {
        "total": N * M + K, "single": N * M, "group": K,
        "delivered": N * K + K, "clicked": C,
        "dropped": (M - K) * (N - 2),  # queue of 2: each offline device dropped N - 2
        "expired": M - K,              # the last send, still queued on each offline device
    }
    users = {"new": M, "active": K}
    return push, users, online


@pytest.fixture
def capped(make_node, tmp_path):
    return make_node(extra_args=("--config", str(config(tmp_path, "capped.toml", "max_pending_per_device = 2\n"))))


def test_known_counts(capped):
    node = capped
    app = node.create_app()
    other = node.create_app(name="other")
    push, users, online = known_run(node, app)
    today = stats(node, app)[0]["date"]
    row = wait_row(node, app, push, timeout=20)  # expiry is swept every 10 s
    assert row["date"] == today
    urow = today_row(node, app, "users")
    assert counts(urow, ["new", "active", "online"]) == {**users, "online": K}, urow
    assert urow["peak_online"] >= K and RFC3339.match(urow["peak_at"]), urow
    # Another app sees its own (zero) figures.
    assert counts(today_row(node, other), PUSH_KEYS[1:]) == dict.fromkeys(PUSH_KEYS[1:], 0)
    assert counts(today_row(node, other, "users"), ["online", "peak_online", "peak_at", "new", "active"]) == {
        "online": 0, "peak_online": 0, "peak_at": None, "new": 0, "active": 0}
    # Message status agrees on the clicks.
    for dev in online:
        dev.disconnect()
    wait_until(lambda: today_row(node, app, "users")["online"] == 0, 5, what="online back to 0")
    assert today_row(node, app, "users")["peak_online"] >= K


def test_known_counts_with_shards_sharing_store_writers(make_node, tmp_path):
    """Four shards on two store writers: a writer commits for two shards and hands its
    counts (drops, expiries, clicks) to the first of them; none is lost or counted twice."""
    capped = config(tmp_path, "capped.toml", "max_pending_per_device = 2\n")
    node = make_node(shards=4, extra_args=("--store-writers", "2", "--config", str(capped)))
    assert {p.name for p in node.data_dir.glob("store-*.redb")} == {"store-0-of-2.redb", "store-1-of-2.redb"}
    app = node.create_app()
    push, users, _online = known_run(node, app)
    wait_row(node, app, push, timeout=20)  # expiry is swept every 10 s
    assert counts(today_row(node, app, "users"), ["new", "active"]) == users


def test_message_stats_days_out_of_its_range_is_refused(tmp_path):
    """How long a message's counts are kept is the operator's (`message_stats_days`,
    1..=3650; its effect: `test_message_status_is_forgotten_after_its_retention`)."""
    for days in (0, 3651):
        bad = config(tmp_path, f"stats-{days}.toml", f"message_stats_days = {days}\n")
        out = subprocess.run(
            [str(PUSHNODE_BIN), "serve", "--check", "--config", str(bad), "--data-dir", str(tmp_path / "data")],
            capture_output=True, text=True, timeout=30,
        )
        assert out.returncode != 0, out
        assert f"message_stats_days must be 1..=3650, got {days}" in out.stderr, out.stderr


def test_range_auth_and_errors(node, app):
    regid, _ = node.register(app)
    node.send(app, [regid])
    today = stats(node, app)[0]["date"]
    t0 = midnight_of(today)
    week_ago = day_text(t0 - 6 * 86400)
    rows = stats(node, app, **{"from": week_ago, "to": today})
    assert [r["date"] for r in rows] == [day_text(t0 - d * 86400) for d in range(6, -1, -1)]
    assert all(r["total"] == 0 for r in rows[:-1]) and rows[-1]["total"] == 1, rows
    users = stats(node, app, "users", **{"from": week_ago, "to": today})
    assert [r["online"] for r in users[:-1]] == [0] * 6 and all(r["peak_at"] is None for r in users[:-1]), users
    assert users[-1]["new"] == 1, users
    # A future range is all zeros; `to` alone is a one-day range.
    future = day_text(t0 + 30 * 86400)
    assert stats(node, app, to=future) == [dict(dict.fromkeys(PUSH_KEYS[1:], 0), date=future)]
    # 366 days is the most.
    assert len(stats(node, app, **{"from": day_text(t0 - 365 * 86400), "to": today})) == 366
    for params in ({"from": day_text(t0 - 366 * 86400), "to": today},
                   {"from": "2026-02-30"}, {"from": "yesterday"}, {"to": "2026-1-1"},
                   {"from": today, "to": week_ago}, {"format": "xml"}, {"form": today}):
        r = stats(node, app, expect=400, **params)
        assert r.json()["code"] == "bad_request", r.text
    for kind in ("push", "users"):
        assert stats(node, app, kind, expect=401, secret="wrong").json()["code"] == "unauthorized"
        r = node.http("GET", f"/v1/stats/{kind}")
        assert r.status_code == 401, r.text
        assert node.http("POST", f"/v1/stats/{kind}").status_code == 405


def test_csv_export(node, app):
    regid, token = node.register(app)
    dev = node.device(app, regid, token)
    dev.connect()
    res = node.send(app, [regid])
    node.wait_delivered(app, res["id"], 1)
    today = stats(node, app)[0]["date"]
    yesterday = day_text(midnight_of(today) - 86400)
    for kind, keys in (("push", PUSH_KEYS), ("users", USERS_KEYS)):
        r = stats(node, app, kind, format="csv", **{"from": yesterday, "to": today})
        assert r.headers["Content-Type"].startswith("text/csv"), r.headers
        assert "attachment" in r.headers.get("Content-Disposition", ""), r.headers
        table = list(csv.reader(io.StringIO(r.text)))
        assert table[0] == keys, table
        assert [row[0] for row in table[1:]] == [yesterday, today], table
        as_json = stats(node, app, kind, **{"from": yesterday, "to": today})
        for line, row in zip(table[1:], as_json):
            expected = ["" if row[k] is None else str(row[k]) for k in keys]
            assert line == expected, (line, row)
    push = list(csv.DictReader(io.StringIO(stats(node, app, format="csv").text)))
    assert len(push) == 1 and push[0]["total"] == "1" and push[0]["delivered"] == "1", push
    users = list(csv.DictReader(io.StringIO(stats(node, app, "users", format="csv").text)))
    assert users[0]["online"] == "1" and RFC3339.match(users[0]["peak_at"]), users


# ------------------------------------------------------------------------------------
# restarts
# ------------------------------------------------------------------------------------


def test_counts_survive_graceful_restart(capped):
    node = capped
    app = node.create_app()
    push, users, online = known_run(node, app)
    before = wait_row(node, app, push, timeout=20)
    ubefore = today_row(node, app, "users")
    for dev in online:
        dev.close()
    node.close_clients()
    node.stop()  # SIGTERM: the shards flush their counts on the way out
    assert node.last_exit == 0 and not node.last_stop_forced
    node.start()
    assert today_row(node, app) == before
    after = today_row(node, app, "users")
    assert counts(after, ["new", "active", "peak_online", "peak_at"]) == \
        counts(ubefore, ["new", "active", "peak_online", "peak_at"]), (ubefore, after)
    assert after["online"] == 0
    # Counting goes on from there; a device already active today is not counted again.
    regid, token = node.register(app)
    node.send(app, [regid])
    dev = node.device(app, regid, token)
    dev.connect()
    wait_row(node, app, {"total": push["total"] + 1, "delivered": push["delivered"] + 1})
    wait_row(node, app, {"new": M + 1, "active": K + 1, "online": 1}, kind="users")


def test_counts_flushed_before_kill_survive(node, app):
    regids = [node.register(app) for _ in range(3)]
    regid, token = regids[0]
    dev = node.device(app, regid, token)
    dev.connect()
    res = node.send(app, [r for r, _ in regids])
    node.wait_delivered(app, res["id"], 1)
    click(dev, res["id"])
    expected = {"total": 3, "single": 3, "delivered": 1, "clicked": 1}
    wait_row(node, app, expected)
    time.sleep(7)  # > the 5 s flush period + the 1 s sync of relaxed commits
    before = today_row(node, app)
    ubefore = today_row(node, app, "users")
    dev.close()
    node.kill()
    node.start()
    assert today_row(node, app) == before
    after = today_row(node, app, "users")
    assert counts(after, ["new", "active", "peak_online", "peak_at"]) == \
        counts(ubefore, ["new", "active", "peak_online", "peak_at"]) == \
        {"new": 3, "active": 1, "peak_online": 1, "peak_at": ubefore["peak_at"]}, (ubefore, after)


# ------------------------------------------------------------------------------------
# day boundary
# ------------------------------------------------------------------------------------


def offset_before_midnight(seconds: float) -> int:
    """A clock offset putting the node `seconds` before the next UTC midnight."""
    now = time.time()
    return int((now // 86400 + 1) * 86400 - seconds - now)


def node_day(offset: int) -> str:
    return day_text(time.time() + offset)


def test_day_boundary_live(make_node, tmp_path):
    """The node runs across midnight: the counts before it stay on day D, the rest go to D+1."""
    offset = offset_before_midnight(40)
    path = config(tmp_path, "clock.toml", f"clock_offset_secs = {offset}\n")
    node = make_node(extra_args=("--config", str(path)))
    app = node.create_app()
    day_d = node_day(offset)
    (r0, t0), (r1, _), (r3, t3) = node.register(app), node.register(app), node.register(app)
    d0 = node.device(app, r0, t0)
    d0.connect()
    d3 = node.device(app, r3, t3)  # stays connected across midnight without a packet
    d3.connect()
    res = node.send(app, [r0, r1])
    node.wait_delivered(app, res["id"], 1)
    wait_row(node, app, {"date": day_d, "total": 2, "delivered": 1})
    assert node_day(offset) == day_d, "day D's events took too long; the test needs them before midnight"

    # Wait for midnight on the node's clock (with a margin), the device staying connected.
    midnight = (time.time() + offset) // 86400 * 86400 + 86400
    time.sleep(max(0.0, midnight - (time.time() + offset)) + 1.5)
    day_d1 = node_day(offset)
    assert day_d1 != day_d
    r2, t2 = node.register(app)
    res = node.send(app, [r0, r1, r2])
    node.wait_delivered(app, res["id"], 1)  # d0 is still connected from day D
    d0.disconnect()
    d0 = node.device(app, r0, t0)
    d0.connect()
    d2 = node.device(app, r2, t2)
    d2.connect()
    node.wait_delivered(app, res["id"], 2)

    expect_push = {
        day_d: {"total": 2, "single": 2, "group": 0, "delivered": 1},
        day_d1: {"total": 3, "single": 3, "group": 0, "delivered": 2},
    }
    # d3, connected across midnight, is active (and online) on D+1 without reconnecting.
    expect_users = {day_d: {"new": 3, "active": 2, "online": 0}, day_d1: {"new": 1, "active": 3, "online": 3}}

    def check_rows():
        rows = stats(node, app, **{"from": day_d, "to": day_d1})
        assert [r["date"] for r in rows] == [day_d, day_d1], rows
        for r in rows:
            assert counts(r, expect_push[r["date"]]) == expect_push[r["date"]], rows
        users = stats(node, app, "users", **{"from": day_d, "to": day_d1})
        for r in users:
            assert counts(r, expect_users[r["date"]]) == expect_users[r["date"]], users
        assert users[0]["peak_online"] == 2 and users[0]["peak_at"].startswith(day_d), users
        assert users[1]["peak_online"] == 3 and users[1]["peak_at"].startswith(day_d1), users
        return rows, users

    wait_until(lambda: _passes(check_rows), 10, interval=0.2, what="day split")
    check_rows()
    # Today (on the node's clock) is D+1 by default.
    assert today_row(node, app)["date"] == day_d1
    # And the split survives a restart.
    node.close_clients()
    node.stop()
    node.start()
    expect_users[day_d1]["online"] = 0
    rows, users = check_rows()


def _passes(check) -> bool:
    try:
        check()
        return True
    except AssertionError:
        return False


def test_day_boundary_across_restart(make_node, tmp_path):
    """Stop on day D at 23:59:30, start again with the clock moved past midnight."""
    offset = offset_before_midnight(30)
    path = config(tmp_path, "clock.toml", f"clock_offset_secs = {offset}\n")
    node = make_node(extra_args=("--config", str(path)))
    app = node.create_app()
    day_d = node_day(offset)
    regid, token = node.register(app)
    dev = node.device(app, regid, token)
    dev.connect()
    res = node.send(app, [regid])
    node.wait_delivered(app, res["id"], 1)
    click(dev, res["id"])
    assert node_day(offset) == day_d
    node.close_clients()
    node.stop()

    offset += 90
    path.write_text(f"clock_offset_secs = {offset}\n")
    node.start()
    day_d1 = node_day(offset)
    assert day_d1 != day_d
    dev = node.device(app, regid, token)
    dev.connect()
    for _ in range(2):
        res = node.send(app, [regid])
        node.wait_delivered(app, res["id"], 1)
    rows = stats(node, app, **{"from": day_d, "to": day_d1})
    assert [counts(r, ["date", "total", "delivered", "clicked"]) for r in rows] == [
        {"date": day_d, "total": 1, "delivered": 1, "clicked": 1},
        {"date": day_d1, "total": 2, "delivered": 2, "clicked": 0},
    ], rows
    users = stats(node, app, "users", **{"from": day_d, "to": day_d1})
    assert [counts(r, ["new", "active", "online", "peak_online"]) for r in users] == [
        {"new": 1, "active": 1, "online": 0, "peak_online": 1},
        {"new": 0, "active": 1, "online": 1, "peak_online": 1},
    ], users


# A message's counts answer status queries for 28 days from its send (7 days' scheduling
# plus the 14-day TTL plus a week) by default, `message_stats_days` if set; then the store
# forgets them.
STATS_KEPT_SECS = (7 + 14 + 7) * 86_400


@pytest.mark.parametrize("days", [None, 1], ids=["default-28-days", "message_stats_days-1"])
def test_message_status_is_forgotten_after_its_retention(make_node, tmp_path, days):
    kept_secs = STATS_KEPT_SECS if days is None else days * 86_400
    retention = "" if days is None else f"message_stats_days = {days}\n"
    path = config(tmp_path, "clock.toml", "clock_offset_secs = 0\n" + retention)
    node = make_node(extra_args=("--config", str(path)))
    app = node.create_app()
    regid, token = node.register(app)
    dev = node.device(app, regid, token)
    dev.connect()
    old = node.send(app, [regid])["id"]
    node.wait_delivered(app, old, 1)
    click(dev, old)
    wait_until(lambda: node.status(app, old).json().get("clicked") == 1, 5, what="the click counted")
    node.close_clients()
    node.stop()

    path.write_text(f"clock_offset_secs = {kept_secs + 60}\n" + retention)
    node.start()
    dev = node.device(app, regid, token)
    dev.connect()
    new = node.send(app, [regid])["id"]
    node.wait_delivered(app, new, 1)
    # The store's expiry sweep runs every 10 s.
    wait_until(lambda: node.status(app, old).status_code == 404, 30, interval=0.5, what="old status gone")
    assert node.status(app, old).json()["code"] == "not_found"
    # A click on the forgotten message counts nothing; the new message is untouched.
    click(dev, old)
    click(dev, new)
    wait_until(lambda: node.status(app, new).json().get("clicked") == 1, 5, what="the new click counted")
    assert node.status(app, new).json()["delivered"] == 1
    assert node.status(app, old).status_code == 404


# ------------------------------------------------------------------------------------
# /metrics
# ------------------------------------------------------------------------------------


def test_metrics(node, app):
    first = metrics(node)
    for name in ("pushnode_connects_total", "pushnode_messages_accepted_total",
                 "pushnode_messages_delivered_total", "pushnode_messages_expired_total",
                 "pushnode_messages_dropped_total", "pushnode_pending_messages", "pushnode_store_file_bytes",
                 "pushnode_delivery_latency_ms_count", "pushnode_store_commit_latency_us_count",
                 "pushnode_store_commit_batch_ops_count"):
        assert any(n == name for n, _ in first), f"{name} missing"
    shards = {dict(ls)["shard"] for n, ls in first if n == "pushnode_connections"}
    assert shards == {str(i) for i in range(node.shards)}, shards
    reasons = {dict(ls)["reason"] for n, ls in first if n == "pushnode_disconnects_total"}
    assert {"client", "timeout", "malformed"} <= reasons, reasons
    for hist in ("pushnode_delivery_latency_ms", "pushnode_store_commit_latency_us",
                 "pushnode_store_commit_batch_ops"):
        buckets = sorted((float(dict(ls)["le"]), v) for (n, ls), v in first.items() if n == f"{hist}_bucket")
        assert buckets[-1][0] == float("inf") and buckets[-1][1] == metric(first, f"{hist}_count"), buckets
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), f"{hist} is not cumulative"

    devices = []
    regids = []
    for _ in range(3):
        regid, token = node.register(app)
        dev = node.device(app, regid, token)
        dev.connect()
        devices.append(dev)
        regids.append(regid)
    offline, _ = node.register(app)
    res = node.send(app, regids + [offline])
    node.wait_delivered(app, res["id"], 3)
    second = metrics(node)
    assert metric(second, "pushnode_connections") == 3, second
    assert metric(second, "pushnode_connects_total") - metric(first, "pushnode_connects_total") == 3
    assert metric(second, "pushnode_online", app=app["app_id"]) == 3
    assert metric(second, "pushnode_messages_accepted_total") - metric(first, "pushnode_messages_accepted_total") == 4
    assert metric(second, "pushnode_messages_delivered_total") - \
        metric(first, "pushnode_messages_delivered_total") == 3
    assert metric(second, "pushnode_pending_messages") >= 1
    # The store's files as the node sees them: the same bytes the folder holds (asked
    # again if a commit grew a file between the two reads).
    files = sorted(node.data_dir.glob("store-*-of-*.redb"))
    assert files, list(node.data_dir.iterdir())
    wait_until(lambda: metric(metrics(node), "pushnode_store_file_bytes") == sum(f.stat().st_size for f in files),
               5, what="pushnode_store_file_bytes == the store files' sizes")
    assert metric(second, "pushnode_delivery_latency_ms_count") - \
        metric(first, "pushnode_delivery_latency_ms_count") == 3
    assert metric(second, "pushnode_store_commit_latency_us_count") > 0
    assert metric(second, "pushnode_http_requests_total", status="200") > \
        metric(first, "pushnode_http_requests_total", status="200")
    assert metric(second, "pushnode_http_requests_total", status="201") >= 5  # app + 4 devices

    node.http("GET", "/v1/stats/push")  # 401
    for dev in devices:
        dev.disconnect()
    wait_until(lambda: metric(metrics(node), "pushnode_connections") == 0, 5, what="connections back to 0")
    third = metrics(node)
    assert metric(third, "pushnode_disconnects_total", reason="client") - \
        metric(first, "pushnode_disconnects_total", reason="client") == 3
    assert metric(third, "pushnode_http_requests_total", status="401") >= 1
    assert metric(third, "pushnode_online", app=app["app_id"]) == 0
    # No auth, and only GET.
    assert node.http("POST", "/metrics").status_code == 405


# ------------------------------------------------------------------------------------
# pushnode stats
# ------------------------------------------------------------------------------------


def run_cli(*args, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run([str(PUSHNODE_BIN), *args], capture_output=True, text=True, timeout=timeout)


def test_cli_stats_table(node, app):
    regids = [node.register(app) for _ in range(3)]
    regid, token = regids[0]
    dev = node.device(app, regid, token)
    dev.connect()
    for _ in range(2):
        res = node.send(app, [r for r, _ in regids])
        node.wait_delivered(app, res["id"], 1)
    today = stats(node, app)[0]["date"]
    p = run_cli("stats", "--secret", app["app_secret"], "--http", node.url)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == PUSH_KEYS, p.stdout
    row = next(line.split() for line in lines if line.startswith(today))
    assert row == [today, "6", "6", "0", "2", "0", "0", "0"], p.stdout

    yesterday = day_text(midnight_of(today) - 86400)
    p = run_cli("stats", "--secret", app["app_secret"], "--http", node.url, "--from", yesterday, "--to", today)
    assert p.returncode == 0, p.stderr
    assert next(line.split() for line in p.stdout.splitlines() if line.startswith(yesterday))[1:] == ["0"] * 7
    assert next(line.split() for line in p.stdout.splitlines() if line.startswith("total"))[1:3] == ["6", "6"]

    p = run_cli("stats", "--secret", app["app_secret"], "--http", node.url, "--users")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == USERS_KEYS, p.stdout
    row = next(line.split() for line in lines if line.startswith(today))
    assert row[0] == today and row[1:3] == ["1", "1"] and RFC3339.match(row[3]) and row[4:] == ["3", "1"], p.stdout

    p = run_cli("stats", "--secret", "wrong", "--http", node.url)
    assert p.returncode != 0 and "401" in p.stderr, (p.stdout, p.stderr)
    p = run_cli("stats", "--secret", app["app_secret"], "--http", node.url, "--from", "2026-02-30")
    assert p.returncode != 0 and "400" in p.stderr, (p.stdout, p.stderr)


def test_repeated_click_counted_once(node, app):
    regid, token = node.register(app)
    dev = node.device(app, regid, token)
    dev.connect()
    res = node.send(app, [regid])
    node.wait_delivered(app, res["id"], 1)
    click(dev, res["id"])
    click(dev, res["id"])  # the same device reports the same click again
    wait_until(lambda: node.status(app, res["id"]).json()["clicked"] == 1, 5, what="message clicked == 1")
    time.sleep(0.5)
    assert today_row(node, app)["clicked"] == 1
