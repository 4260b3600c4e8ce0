"""Callback receipts under a delivery burst: only messages sent with a `callback` hand
receipts to the callback dispatcher, so a fan-out of 200,000 deliveries without one neither
fills its queue (65,536 receipts between its once-a-second drains) nor pushes out the
receipt of a message that asked for one, sent in the middle of the burst."""

from __future__ import annotations

import json
import subprocess
import time

from conftest import LOADGEN_BIN, NO_CONNECT_LIMIT, ReceiptSink
from test_stats import metric, metrics

SUBSCRIBERS = 10_000
MESSAGES = 20


def test_a_burst_without_callbacks_leaves_the_receipt_queue_to_those_with_one(make_node, tmp_path):
    node = make_node(extra_args=NO_CONNECT_LIMIT)
    sink = ReceiptSink()
    app = node.create_app()
    regid, token = node.register(app)
    device = node.raw(version=5)
    assert device.connect(regid, app["app_id"], token)["rc"] == 0
    out = tmp_path / "fanout.json"
    cmd = [str(LOADGEN_BIN), "fanout", "--mqtt", node.mqtt_addr, "--http", node.url,
           "--admin-token-file", str(node.data_dir / "admin.token"), "--workers", "2",
           "--subscribers", str(SUBSCRIBERS), "--messages", str(MESSAGES), "--interval-ms", "0",
           "--timeout-secs", "90", "--straggler-secs", "20", "--json", str(out)]
    loadgen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Mid-burst: the node has delivered some of the fan-out but not all of it.
        deadline = time.monotonic() + 60
        while metric(metrics(node), "pushnode_messages_delivered_total") < SUBSCRIBERS:
            assert loadgen.poll() is None and time.monotonic() < deadline, "the fan-out did not start"
            time.sleep(0.02)
        url = sink.url("/receipts")
        sent = node.send(app, [regid], title="in the burst", callback=url)
        msg = device.read_publish()
        device.puback(msg["pid"])
        stdout, stderr = loadgen.communicate(timeout=120)
        assert loadgen.returncode == 0, f"{stdout}\n{stderr[-3000:]}"
        report = json.loads(out.read_text())
        assert report["deliveries"] == SUBSCRIBERS * MESSAGES, report
        assert sink.wait_for(lambda: any(r["id"] == sent["id"] for r in sink.receipts()), 15), sink.posts[:2]
        assert all(r["id"] == sent["id"] for r in sink.receipts()), "only the message with a callback has receipts"
        assert metric(metrics(node), "pushnode_receipts_dropped_total") == 0
    finally:
        if loadgen.poll() is None:
            loadgen.kill()
            loadgen.wait()
        device.disconnect()
        sink.close()
