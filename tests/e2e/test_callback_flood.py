"""Callback receipts under a delivery burst: only messages sent with a `callback` hand
receipts to the callback dispatcher, so a fan-out of 200,000 deliveries without one neither
fills its queue (65,536 receipts between its once-a-second drains) nor pushes out the
receipt of a message that asked for one, sent in the middle of the burst."""

from __future__ import annotations

from conftest import NO_CONNECT_LIMIT, FanoutBurst, ReceiptSink
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
    burst = FanoutBurst(node, tmp_path / "fanout.json", SUBSCRIBERS, MESSAGES)
    try:
        # Mid-burst: the node has delivered some of the fan-out but not all of it.
        burst.wait_until(lambda: metric(metrics(node), "pushnode_messages_delivered_total") >= SUBSCRIBERS)
        url = sink.url("/receipts")
        sent = node.send(app, [regid], title="in the burst", callback=url)
        msg = device.read_publish()
        device.puback(msg["pid"])
        report = burst.finish()
        assert report["deliveries"] == SUBSCRIBERS * MESSAGES, report
        assert sink.wait_for(lambda: any(r["id"] == sent["id"] for r in sink.receipts()), 15), sink.posts[:2]
        assert all(r["id"] == sent["id"] for r in sink.receipts()), "only the message with a callback has receipts"
        assert metric(metrics(node), "pushnode_receipts_dropped_total") == 0
    finally:
        burst.stop()
        device.disconnect()
        sink.close()
