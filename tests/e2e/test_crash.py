"""Crash safety: pushes flow at a steady rate to online and offline devices while the node
is killed with SIGKILL at random moments and restarted on the same data dir and ports.

At the end every device is connected and the test checks, from what the devices received:
- every acknowledged message (POST /v1/messages answered 200) reached every target at
  least once (lost = 0);
- no device received a message that was never acknowledged, except the requests whose
  answer was lost to a kill (in flight at kill time; each request carries a nonce in its
  `payload`, so a received envelope names the request it came from);
- per device, the first arrivals of acknowledged messages follow the order in which they
  were accepted wherever that order is defined: a message whose request was answered before
  another request was sent arrives before that request's message. Concurrent requests have
  no order (two HTTP threads may take ids in one order and reach the device's shard in the
  other), so their ids may arrive out of order;
- nothing was delivered after its `expires_at`, and offline targets of short-TTL messages
  that connect after expiry never get them;
- each restart is ready within seconds and logs how many pending messages it found (never
  fewer than the acknowledged ones still waiting for offline devices).

The same scenario runs longer from `scripts/crash-soak` (it imports `run_crash` from here).
Seed: $CRASH_SEED (printed; a failing run prints it too). Every wait is bounded; only the
node process started by the fixture is signalled, by its PID.
"""

from __future__ import annotations

import heapq
import json
import os
import random
import re
import socket
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import pytest
import requests
from requests.adapters import HTTPAdapter

DAY14 = 14 * 24 * 3600


@dataclass
class CrashParams:
    seed: int
    devices: int = 40
    offline: int = 20           # connect only at the end
    flappers: int = 4           # part of the online ones: drop or leave and come back
    manual_ack_every: int = 3   # every Nth online device acknowledges by hand, late
    duration: float = 40.0      # seconds of traffic
    kills: int = 5
    rate: float = 120.0         # requests per second (all senders together)
    senders: int = 12           # concurrent requests (each waits for its fsync)
    max_targets: int = 10
    short_ttl: int = 3
    short_ttl_every: int = 15   # every Nth request gets the short TTL ...
    short_ttl_stop: float = 6.0  # ... except in the last seconds of traffic
    offline_cap: int = 700      # requests per offline device (node keeps 1000 per device)
    drain_timeout: float = 30.0
    quiet: float = 1.5          # no new arrival for this long ends the drain
    restart_bound: float = 15.0
    expiry_allowance: float = 1.0
    request_timeout: float = 20.0
    schedule_probe: bool = True  # a far-future scheduled send: its count must be logged


@dataclass
class Req:
    k: int
    targets: list
    ttl: int | None
    t_start: float
    wall_start: float
    t_end: float = 0.0
    wall_end: float = 0.0
    status: int | None = None
    id: str | None = None
    error: str | None = None
    body_check: str | None = None

    @property
    def acked(self) -> bool:
        return self.status == 200 and self.id is not None

    @property
    def ttl_s(self) -> int:
        return self.ttl if self.ttl is not None else DAY14


# ------------------------------------------------------------------------------------
# devices
# ------------------------------------------------------------------------------------


class Phone:
    """A paho device that reconnects by itself (clean session false) and records every
    PUBLISH with its arrival time and connection generation."""

    def __init__(self, idx: int, kind: str, regid: str, token: str, app_id: str, port: int,
                 version: int, manual_ack: bool, acker: "Acker"):
        self.idx = idx
        self.kind = kind  # online | flapper | offline
        self.regid = regid
        self.port = port
        self.version = version
        self.manual_ack = manual_ack
        self.acker = acker
        self.lock = threading.Lock()
        self.receipts: list[tuple] = []  # (wall, id_text, nonce, dup, gen, expires_at, sent_at, raw)
        self.gen = 0
        self.connected = False
        self.first_connect: float | None = None
        self.refusals: list = []
        self.started = False
        self.away = False  # a flapper that left on purpose
        kw = dict(client_id=regid, protocol=mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311,
                  manual_ack=manual_ack, reconnect_on_failure=True)
        if version != 5:
            kw["clean_session"] = False
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kw)
        c.username_pw_set(app_id, token)
        c.reconnect_delay_set(0.2, 1.0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self.client = c

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        failure = bool(getattr(reason_code, "is_failure", False))
        with self.lock:
            if failure:
                self.refusals.append((time.time(), str(reason_code)))
                return
            self.gen += 1
            self.connected = True
            if self.first_connect is None:
                self.first_connect = time.time()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self.lock:
            self.connected = False

    def _on_message(self, client, userdata, msg):
        now = time.time()
        try:
            env = json.loads(msg.payload)
            rec = (now, env.get("id"), env.get("payload"), bool(msg.dup), self.gen,
                   env.get("expires_at"), env.get("sent_at"), None)
        except ValueError:
            rec = (now, None, None, bool(msg.dup), self.gen, None, None, bytes(msg.payload))
        with self.lock:
            self.receipts.append(rec)
            gen = self.gen
        if self.manual_ack:
            self.acker.later(self, gen, msg.mid, msg.qos)

    def start(self) -> None:
        kw = {"keepalive": 10}
        if self.version == 5:
            kw["clean_start"] = False
        self.client.connect_async("127.0.0.1", self.port, **kw)
        self.client.loop_start()
        self.started = True
        self.away = False

    def leave(self) -> None:
        """Clean DISCONNECT; stays away until start()."""
        self.away = True
        try:
            self.client.disconnect()
        except Exception:
            pass
        self.client.loop_stop()
        self.started = False

    def drop(self) -> None:
        """Cuts the TCP connection without DISCONNECT (paho reconnects by itself)."""
        try:
            s = self.client.socket()
            if s is not None:
                s.shutdown(socket.SHUT_RDWR)
        except Exception:
            pass

    def close(self) -> None:
        if self.started:
            try:
                self.client.disconnect()
            except Exception:
                pass
            self.client.loop_stop()
            self.started = False

    def count(self) -> int:
        with self.lock:
            return len(self.receipts)

    def snapshot(self) -> list:
        with self.lock:
            return list(self.receipts)


class Acker:
    """Sends the PUBACKs of manual-ack devices after a random delay, only on the
    connection the PUBLISH came in on."""

    def __init__(self, rng: random.Random, max_delay: float = 0.3):
        self.rng = rng
        self.max_delay = max_delay
        self.heap: list = []
        self.cv = threading.Condition()
        self.stopped = False
        self.n = 0
        self.thread = threading.Thread(target=self._run, name="acker", daemon=True)
        self.thread.start()

    def later(self, dev: Phone, gen: int, mid: int, qos: int) -> None:
        with self.cv:
            self.n += 1
            due = time.monotonic() + self.rng.uniform(0, self.max_delay)
            heapq.heappush(self.heap, (due, self.n, dev, gen, mid, qos))
            self.cv.notify()

    def _run(self) -> None:
        while True:
            with self.cv:
                if self.stopped:
                    return
                if not self.heap:
                    self.cv.wait(0.5)
                    continue
                due = self.heap[0][0]
                now = time.monotonic()
                if due > now:
                    self.cv.wait(min(due - now, 0.5))
                    continue
                _, _, dev, gen, mid, qos = heapq.heappop(self.heap)
            with dev.lock:
                current = dev.gen == gen and dev.connected
            if current:
                try:
                    dev.client.ack(mid, qos)
                except Exception:
                    pass

    def stop(self) -> None:
        with self.cv:
            self.stopped = True
            self.cv.notify()
        self.thread.join(5)


# ------------------------------------------------------------------------------------
# the scenario
# ------------------------------------------------------------------------------------


def _wait_until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _register_mqtt5(node, app: dict, timeout: float = 10.0) -> tuple[str, str]:
    """Registers over MQTT 5 (empty client id, app key as password): the accepting shard
    (SO_REUSEPORT) creates the device, so these spread over the shards."""
    got: dict = {}
    done = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        got["rc"] = str(reason_code)
        got["regid"] = getattr(properties, "AssignedClientIdentifier", None)
        got["token"] = dict(getattr(properties, "UserProperty", []) or []).get("token")
        done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv5,
                    reconnect_on_failure=False)
    c.username_pw_set(app["app_id"], app["app_key"])
    c.on_connect = on_connect
    c.connect("127.0.0.1", node.mqtt_port, keepalive=10, clean_start=False)
    c.loop_start()
    try:
        assert done.wait(timeout), "no CONNACK to an MQTT 5 registration"
        assert got.get("regid") and got.get("token"), f"registration CONNACK lacks RegID/token: {got}"
    finally:
        try:
            c.disconnect()
        except Exception:
            pass
        c.loop_stop()
    return got["regid"], got["token"]


def _kv(line: str) -> dict:
    return dict(re.findall(r"(\w+)=(\S+)", line))


def _start_log(node, start_no: int, timeout: float = 5.0) -> list[str]:
    """The node log lines of start number `start_no` (conftest writes a marker per start)."""
    marker = f"===== start #{start_no}:"
    deadline = time.monotonic() + timeout
    while True:
        text = node.log_path.read_text(errors="replace")
        i = text.find(marker)
        lines = text[i:].splitlines()[1:] if i >= 0 else []
        loaded = [ln for ln in lines if "shard loaded" in ln]
        if len(loaded) >= node.shards or time.monotonic() >= deadline:
            return lines
        time.sleep(0.1)


def _shard_pending(lines: list[str]) -> dict[int, int]:
    out = {}
    for ln in lines:
        if "shard loaded" in ln:
            kv = _kv(ln)
            out[int(kv["shard"])] = int(kv["pending"])
    return out


def _kill_times(rng: random.Random, p: CrashParams) -> list[float]:
    """One kill at a random moment in each of `kills` equal slots of the traffic time."""
    lo, hi = 2.0, p.duration - 4.0
    slot = (hi - lo) / max(p.kills, 1)
    return [lo + i * slot + rng.uniform(0.1, max(slot - 1.5, 0.2)) for i in range(p.kills)]


def run_crash(node, p: CrashParams, say=print) -> dict:
    """Runs the scenario against a started `node` (conftest Node) and returns the report;
    the caller asserts on it (see check_report)."""
    rng = random.Random(p.seed)
    say(f"crash test seed={p.seed} (rerun with CRASH_SEED={p.seed}) devices={p.devices} "
        f"offline={p.offline} flappers={p.flappers} duration={p.duration}s kills={p.kills} "
        f"rate={p.rate}/s")
    app = node.create_app(name="crash", package="com.example.crash")
    acker = Acker(random.Random(rng.random()))
    phones: list[Phone] = []
    report: dict = {"seed": p.seed, "restarts": [], "problems": {}}
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        # devices: the first `offline` wait for the end, the rest stay (or flap) online
        for i in range(p.devices):
            version = 5 if i % 2 == 0 else 4
            # MQTT 5 devices register over MQTT (spread over the shards), 3.1.1 over HTTP
            regid, token = _register_mqtt5(node, app) if version == 5 else node.register(app)
            if i < p.offline:
                kind = "offline"
            elif i < p.offline + p.flappers:
                kind = "flapper"
            else:
                kind = "online"
            manual = kind != "offline" and i % p.manual_ack_every == 0
            if kind == "offline":
                manual = i % 4 == 1
            phones.append(Phone(i, kind, regid, token, app["app_id"], node.mqtt_port, version,
                                manual, acker))
        for ph in phones:
            if ph.kind != "offline":
                ph.start()
        _wait_until(lambda: all(ph.connected for ph in phones if ph.kind != "offline"), 15,
                   what="online devices connected")

        scheduled = None
        if p.schedule_probe:
            r = node.push(app, [phones[0].regid], title="later", send_at=int(time.time()) + 86400)
            if r.status_code == 200 and r.json().get("state") == "scheduled":
                scheduled = r.json()["id"]
            else:
                say(f"note: no scheduled-send probe ({r.status_code} {r.text[:100]})")

        # --- traffic --------------------------------------------------------------
        reqs: list[Req] = []
        sent_to = {ph.regid: 0 for ph in phones}
        by_regid = {ph.regid: ph for ph in phones}
        offline_ids = {ph.regid for ph in phones if ph.kind == "offline"}
        lock = threading.Lock()
        counter = [0]
        t0 = time.monotonic()
        t_end = t0 + p.duration
        url = node.url + "/v1/messages"
        headers = {"Authorization": f"key={app['app_secret']}"}

        def choose(trng: random.Random) -> list[str]:
            n = trng.randint(1, p.max_targets)
            with lock:
                pool = [ph.regid for ph in phones
                        if ph.kind != "offline" or sent_to[ph.regid] < p.offline_cap]
                picked = trng.sample(pool, min(n, len(pool)))
                for r_ in picked:
                    sent_to[r_] += 1
            return picked

        def sender(i: int) -> None:
            # each sender keeps its share of the rate; a backlog (slow answers, node down)
            # is dropped rather than sent in a burst later
            trng = random.Random(p.seed * 1009 + i)
            sess = requests.Session()
            sess.mount("http://", HTTPAdapter(max_retries=0, pool_connections=1, pool_maxsize=1))
            interval = p.senders / p.rate
            due = t0 + i * interval / p.senders
            while not stop.is_set():
                now = time.monotonic()
                if due < now - 0.25:
                    due = now
                if due >= t_end:
                    return
                while not stop.is_set() and time.monotonic() < due:
                    time.sleep(max(0.0, min(due - time.monotonic(), 0.05)))
                due += interval
                with lock:
                    k = counter[0]
                    counter[0] += 1
                targets = choose(trng)
                short = k % p.short_ttl_every == 0 and time.monotonic() < t_end - p.short_ttl_stop
                body = {"target": {"regids": targets}, "type": "notification",
                        "title": f"crash {k}", "payload": f"r{k}"}
                if short:
                    body["ttl"] = p.short_ttl
                rec = Req(k, targets, p.short_ttl if short else None,
                          time.monotonic(), time.time())
                try:
                    r = sess.post(url, json=body, headers=headers, timeout=p.request_timeout)
                    rec.status = r.status_code
                    if r.status_code == 200:
                        js = r.json()
                        rec.id = js.get("id")
                        if js.get("targets") != len(targets) or js.get("invalid"):
                            rec.body_check = r.text[:200]
                except (requests.RequestException, ValueError) as e:
                    rec.error = type(e).__name__
                rec.t_end = time.monotonic()
                rec.wall_end = time.time()
                with lock:
                    reqs.append(rec)
                if rec.error:
                    stop.wait(0.05)  # the node is probably down: do not spin

        def flap() -> None:
            frng = random.Random(p.seed * 7 + 3)
            flappers = [ph for ph in phones if ph.kind == "flapper"]
            nxt = {ph.regid: time.monotonic() + frng.uniform(0.5, 3) for ph in flappers}
            while not stop.is_set() and time.monotonic() < t_end:
                now = time.monotonic()
                for ph in flappers:
                    if now < nxt[ph.regid]:
                        continue
                    if ph.away:
                        ph.start()
                        nxt[ph.regid] = now + frng.uniform(1, 5)
                    elif frng.random() < 0.5:
                        ph.drop()
                        nxt[ph.regid] = now + frng.uniform(1, 4)
                    else:
                        ph.leave()
                        nxt[ph.regid] = now + frng.uniform(0.3, 6)
                stop.wait(0.05)
            for ph in flappers:
                if ph.away:
                    ph.start()

        thread_errors: list[str] = []

        def guarded(fn, *args):
            def run():
                try:
                    fn(*args)
                except Exception:  # a dead sender would quietly lower the load
                    import traceback
                    thread_errors.append(traceback.format_exc(limit=3))
            return run

        for i in range(p.senders):
            threads.append(threading.Thread(target=guarded(sender, i), name=f"sender-{i}", daemon=True))
        threads.append(threading.Thread(target=guarded(flap), name="flapper", daemon=True))
        for t in threads:
            t.start()

        # --- kills ------------------------------------------------------------------
        kill_windows: list[tuple[float, float]] = []
        for n, at in enumerate(_kill_times(rng, p), 1):
            while time.monotonic() < t0 + at:
                time.sleep(max(0.0, min(t0 + at - time.monotonic(), 0.05)))
            k_before = time.monotonic()
            node.kill()  # SIGKILL to the node's PID, waits for it
            k_after = time.monotonic()
            kill_windows.append((k_before, k_after))
            with lock:
                done = list(reqs)
            # acknowledged before the kill, long TTL, for devices that never connected yet
            bound = sum(1 for q in done if q.acked and q.ttl is None and q.t_end <= k_before
                        for r_ in q.targets if r_ in offline_ids)
            time.sleep(rng.uniform(0.1, 1.2))
            s0 = time.monotonic()
            node.start(timeout=p.restart_bound + 15)
            ready = time.monotonic() - s0
            lines = _start_log(node, node.starts)
            pend = _shard_pending(lines)
            sched = [_kv(ln).get("scheduled") for ln in lines if "scheduled messages waiting" in ln]
            devs = {int(_kv(ln)["shard"]): int(_kv(ln).get("devices", -1)) for ln in lines if "shard loaded" in ln}
            info = {"kill": n, "at": round(k_before - t0, 2), "ready_s": round(ready, 2),
                    "pending": pend, "pending_floor": bound, "scheduled_logged": sched,
                    "devices": devs}
            report["restarts"].append(info)
            say(f"kill #{n} at t={info['at']}s exit={node.last_exit}; ready in {ready:.2f}s; "
                f"log pending per shard={pend} (>= {bound} acked for offline devices), devices={devs}; "
                f"scheduled logged={sched}")
        for t in threads:
            t.join(p.request_timeout + 10)
        stop.set()
        traffic_end = time.monotonic()

        # --- the end: everyone connects, wait until quiet ----------------------------
        for ph in phones:
            if ph.kind == "offline":
                ph.start()
        _wait_until(lambda: all(ph.connected for ph in phones), 20, what="all devices connected")
        acked = [q for q in reqs if q.acked]
        want = {(r_, q.id) for q in acked if q.ttl is None for r_ in q.targets}

        def have() -> set:
            got = set()
            for ph in phones:
                for rec in ph.snapshot():
                    got.add((ph.regid, rec[1]))
            return got

        deadline = time.monotonic() + p.drain_timeout
        last_total, last_change, complete = -1, time.monotonic(), False
        while time.monotonic() < deadline:
            total = sum(ph.count() for ph in phones)
            if total != last_total:
                last_total, last_change = total, time.monotonic()
                complete = False
            elif not complete and time.monotonic() - last_change >= 0.5:
                complete = want <= have()  # only once arrivals pause: the set is large
            if complete and time.monotonic() - last_change >= p.quiet:
                break
            time.sleep(0.2)
        report["drain_s"] = round(time.monotonic() - traffic_end, 2)
        report["healthy_at_end"] = node.healthy()
        if scheduled is not None:
            report["scheduled_id"] = scheduled

        report.update(verify(p, reqs, phones, kill_windows, by_regid))
        report["problems"]["thread_errors"] = thread_errors
        report["achieved_rate"] = round(len(reqs) / max(report["traffic_s"], 0.001), 1)
        return report
    finally:
        stop.set()
        for t in threads:
            t.join(p.request_timeout + 10)
        for ph in phones:
            ph.close()
        acker.stop()


def verify(p: CrashParams, reqs: list[Req], phones: list[Phone], kill_windows, by_regid) -> dict:
    problems: dict[str, list] = {k: [] for k in (
        "lost", "unacked_delivered", "wrong_id", "not_a_target", "order", "after_expiry",
        "offline_got_expired", "bad_envelope", "refused_connects", "bad_answer")}
    by_k = {q.k: q for q in reqs}
    acked = [q for q in reqs if q.acked]
    acked_ids = {q.id for q in acked}

    def overlaps_kill(q: Req) -> bool:
        return any(q.t_start <= after and q.t_end >= before for before, after in kill_windows)

    in_flight = [q for q in reqs if not q.acked and overlaps_kill(q)]
    timeouts = [q for q in reqs if not q.acked and not overlaps_kill(q) and q.error
                and "Timeout" in q.error]
    for q in reqs:
        if q.acked and q.body_check:
            problems["bad_answer"].append((q.k, q.body_check))
        if q.status is not None and q.status != 200:
            problems["bad_answer"].append((q.k, q.status))

    received = 0
    duplicates = 0
    delivered_pairs = set()
    for ph in phones:
        recs = ph.snapshot()
        if ph.refusals:
            problems["refused_connects"].append((ph.regid, ph.refusals[:3]))
        seen: set = set()
        latest_sent: tuple | None = None
        for wall, mid, nonce, dup, gen, exp, sent, raw in recs:
            received += 1
            if mid is None:
                problems["bad_envelope"].append((ph.regid, raw[:120] if raw else raw))
                continue
            if mid in seen:
                duplicates += 1
                continue
            seen.add(mid)
            q = by_k.get(int(nonce[1:])) if isinstance(nonce, str) and nonce[:1] == "r" \
                and nonce[1:].isdigit() else None
            if q is None:
                problems["unacked_delivered"].append((ph.regid, mid, nonce, "unknown request"))
                continue
            if ph.regid not in q.targets:
                problems["not_a_target"].append((ph.regid, mid, q.k, q.targets))
            if q.acked:
                if mid != q.id and not overlaps_kill(q):
                    problems["wrong_id"].append((ph.regid, mid, q.k, q.id))
            elif not overlaps_kill(q) and not (q.error and "Timeout" in q.error):
                problems["unacked_delivered"].append(
                    (ph.regid, mid, q.k, q.status or q.error, round(q.t_start, 3)))
            if isinstance(exp, int) and isinstance(sent, int):
                if exp - sent != q.ttl_s:
                    problems["bad_envelope"].append((ph.regid, mid, "expires_at-sent_at", exp - sent, q.ttl_s))
                if not (int(q.wall_start) - 2 <= sent <= int(q.wall_end) + 2):
                    problems["bad_envelope"].append((ph.regid, mid, "sent_at", sent, q.wall_start, q.wall_end))
                if wall > exp + p.expiry_allowance:
                    problems["after_expiry"].append(
                        (ph.regid, mid, q.k, f"received {wall:.3f} > expires_at {exp}", f"gen {gen}", f"dup {dup}"))
            else:
                problems["bad_envelope"].append((ph.regid, mid, "no sent_at/expires_at"))
            if q.acked and mid == q.id:
                delivered_pairs.add((ph.regid, mid))
                # `latest_sent`: of the messages that arrived before this one, the one whose
                # request was sent last. This message must not have been answered before it.
                if latest_sent is not None and q.t_end < latest_sent[0]:
                    problems["order"].append(
                        (ph.regid, f"{mid} (req {q.k}, answered {q.t_end:.3f}, t={wall:.3f}, gen {gen}, "
                                   f"dup {dup}) after {latest_sent[1]} (req {latest_sent[2]}, sent "
                                   f"{latest_sent[0]:.3f}, t={latest_sent[3]:.3f}, gen {latest_sent[4]})"))
                if latest_sent is None or q.t_start > latest_sent[0]:
                    latest_sent = (q.t_start, mid, q.k, wall, gen)

    lost = []
    expired_skipped = 0
    offline_expired_checked = 0
    for q in acked:
        for r_ in q.targets:
            if (r_, q.id) in delivered_pairs:
                continue
            if q.ttl is None:
                lost.append((r_, q.id, q.k, by_regid[r_].kind))
            else:
                expired_skipped += 1
        if q.ttl is not None:
            for r_ in q.targets:
                ph = by_regid[r_]
                if ph.kind == "offline" and ph.first_connect is not None:
                    exp = int(q.wall_end) + q.ttl_s  # the envelope's expires_at is not later
                    if ph.first_connect > exp + p.expiry_allowance:
                        offline_expired_checked += 1
                        if (r_, q.id) in delivered_pairs:
                            problems["offline_got_expired"].append((r_, q.id, q.k))
    problems["lost"] = lost
    nonces_seen = {rec[2] for ph in phones for rec in ph.snapshot()}
    from collections import Counter
    outcomes = Counter(
        "200" if q.acked else (str(q.status) if q.status is not None else q.error) for q in reqs)
    lat = sorted(q.t_end - q.t_start for q in acked)
    pct = (lambda f: round(lat[min(len(lat) - 1, int(f * len(lat)))] * 1000, 1)) if lat else (lambda f: None)
    span = (max(q.t_end for q in reqs) - min(q.t_start for q in reqs)) if reqs else 0.0
    return {
        "outcomes": dict(outcomes),
        "ack_latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
        "traffic_s": round(span, 1),
        "requests": len(reqs),
        "acked": len(acked),
        "acked_pairs": sum(len(q.targets) for q in acked),
        "short_ttl_acked": sum(1 for q in acked if q.ttl is not None),
        "in_flight_at_kill": len(in_flight),
        "in_flight_delivered": sum(1 for q in in_flight if f"r{q.k}" in nonces_seen),
        "refused_or_failed": sum(1 for q in reqs if not q.acked) - len(in_flight),
        "timeouts_without_kill": len(timeouts),
        "received": received,
        "delivered": len(delivered_pairs),
        "duplicates": duplicates,
        "lost": len(lost),
        "expired_skipped": expired_skipped,
        "offline_expiry_checked": offline_expired_checked,
        "problems": problems,
        "unique_ids_acked": len(acked_ids),
    }


def check_report(r: dict, p: CrashParams) -> list[str]:
    """What failed, as sentences (empty: all good)."""
    bad = []
    for name, items in r["problems"].items():
        if items:
            bad.append(f"{name}: {len(items)}, e.g. {items[:5]}")
    for s in r["restarts"]:
        if s["ready_s"] >= p.restart_bound:
            bad.append(f"restart after kill #{s['kill']} took {s['ready_s']} s (bound {p.restart_bound} s)")
        if len(s["pending"]) != 0 and sum(s["pending"].values()) < s["pending_floor"]:
            bad.append(f"restart after kill #{s['kill']}: log says pending={s['pending']} but "
                       f"{s['pending_floor']} acked rows wait for offline devices")
        if not s["pending"]:
            bad.append(f"restart after kill #{s['kill']}: no 'shard loaded ... pending=N' line in the log")
        if r.get("scheduled_id") and not s["scheduled_logged"]:
            bad.append(f"restart after kill #{s['kill']}: the log does not say how many scheduled "
                       f"messages it found (one is scheduled)")
    if r["acked"] == 0:
        bad.append("nothing was acknowledged")
    if not r.get("healthy_at_end"):
        bad.append("node not healthy at the end")
    return bad


def summary(r: dict) -> str:
    keys = ("outcomes", "ack_latency_ms", "traffic_s", "requests", "achieved_rate", "acked", "acked_pairs", "delivered", "received",
            "duplicates", "lost", "expired_skipped", "offline_expiry_checked", "short_ttl_acked",
            "in_flight_at_kill", "in_flight_delivered", "refused_or_failed",
            "timeouts_without_kill", "drain_s")
    return " ".join(f"{k}={r.get(k)}" for k in keys)


@pytest.mark.parametrize("shards,writers", [(2, None), (4, 2)], ids=["2-shards", "4-shards-on-2-writers"])
def test_crash_kill9_under_load(make_node, shards, writers):
    """`4-shards-on-2-writers`: each store writer (and its write-ahead log) serves two
    shards, and its log is replayed for both after a kill."""
    seed = int(os.environ.get("CRASH_SEED", random.SystemRandom().randrange(1, 2**31)))
    p = CrashParams(seed=seed)
    node = make_node(shards=shards, extra_args=("--store-writers", str(writers)) if writers else ())
    r = run_crash(node, p)
    print("crash result: " + summary(r))
    bad = check_report(r, p)
    assert not bad, f"seed={seed}: " + "\n".join(bad) + "\n" + summary(r)
    assert r["lost"] == 0
