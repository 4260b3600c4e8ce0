"""The send budget: a shard holds at most its share of `send_buffer_bytes` in encoded
messages the kernel has not taken yet; past it, deliveries wait in the store and go out as
the sends drain. Here the budget (64 KiB a shard) is a fraction of one burst (5,000 devices x
40 messages), so most deliveries are held back and read from the store again: every device
must still get every message, each once, and in the order the messages were accepted."""

from __future__ import annotations

import time

from conftest import FanoutBurst
from test_stats import metric, metrics

SUBSCRIBERS = 5_000
MESSAGES = 40
ORDERED = 20  # messages the test sends itself, one after another, during the burst


def _group_push(node, app, topic: str, payload: str) -> dict:
    r = node.http("POST", "/v1/messages", headers={"Authorization": f"key={app['app_secret']}"},
                  json={"target": {"topic": topic}, "type": "passthrough", "payload": payload})
    assert r.status_code == 200, f"topic push -> {r.status_code} {r.text}"
    return r.json()


def test_a_burst_over_the_send_budget_reaches_every_device_in_order(make_node, tmp_path):
    config = tmp_path / "budget.toml"
    config.write_text("send_buffer_bytes = 131072\nconnect_rate_per_ip = 0\n")
    node = make_node(extra_args=("--config", str(config)))
    app = node.create_app()
    devices, regids = [], []
    for _ in range(3):
        regid, token = node.register(app)
        dev = node.device(app, regid, token)
        dev.connect()
        assert dev.subscribe("topic/bench") == [1] and dev.subscribe("topic/order") == [1]
        devices.append(dev)
        regids.append(regid)
    burst = FanoutBurst(node, tmp_path / "fanout.json", SUBSCRIBERS, MESSAGES, app=app)
    try:
        burst.wait_until(lambda: metric(metrics(node), "pushnode_messages_delivered_total") >= SUBSCRIBERS)
        # Mid-burst, each answered before the next is sent: topic messages and the devices'
        # own messages, alternating.
        ordered = []
        for i in range(ORDERED):
            payload = f"ordered-{i}"
            if i % 2:
                node.send(app, regids, type="passthrough", payload=payload)
            else:
                _group_push(node, app, "order", payload)
            ordered.append(payload)
        report = burst.finish()
        assert report["deliveries"] == SUBSCRIBERS * MESSAGES, report

        for dev in devices:
            got = dev.wait_messages(MESSAGES + ORDERED, timeout=30)
            dev.expect_no_more(MESSAGES + ORDERED, wait=0.5)
            bench = [m for m in got if m["topic"] == "topic/bench"]
            assert len(bench) == MESSAGES and len({m["payload"]["id"] for m in bench}) == MESSAGES
            mine = [m["payload"]["payload"] for m in got if m["topic"] != "topic/bench"]
            assert mine == ordered, mine

        samples = metrics(node)
        assert metric(samples, "pushnode_send_deferrals_total") > 0, "the budget never held a delivery back"
        deadline = time.monotonic() + 10
        while metric(metrics(node), "pushnode_send_buffered_bytes") > 0:
            assert time.monotonic() < deadline, "send buffers still charged after every device acknowledged"
            time.sleep(0.1)
    finally:
        burst.stop()
