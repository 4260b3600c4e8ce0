"""Changing a node's shard count loses nothing: the store's files are laid out per shard
(`data/store-I-of-N.redb`), and a node started with another count moves every row into
files of its own layout before it serves. Registrations, pending messages (in order),
message counts and aliases survive 2 -> 1 -> 3 shards; the old files are gone."""


def _store_files(node) -> set[str]:
    return {p.name for p in node.data_dir.glob("*.redb") if p.name.startswith(("store-", "partition-"))}


def _restart_with(node, shards: int):
    node.stop()
    node.shards = shards
    node.start()
    assert _store_files(node) == {f"store-{i}-of-{shards}.redb" for i in range(shards)}, _store_files(node)


def test_rows_survive_changes_of_the_shard_count(make_node):
    node = make_node(shards=2)
    app = node.create_app()
    assert _store_files(node) == {"store-0-of-2.redb", "store-1-of-2.redb"}
    devices = [node.register(app) for _ in range(8)]
    # Every device gets two pushes while offline; the first device's are read back later.
    sent = {regid: [node.send(app, [regid], title=f"{regid[:6]}-{i}")["id"] for i in range(2)]
            for regid, _ in devices}
    first_regid, first_token = devices[0]
    auth = {"Authorization": f"key={app['app_secret']}"}
    r = node.http("POST", f"/v1/devices/{first_regid}/aliases", headers=auth, json={"alias": "user-1"})
    assert r.status_code == 200, r.text

    _restart_with(node, 1)
    # Half the devices come back now and get their two messages, in order.
    for regid, token in devices[:4]:
        dev = node.device(app, regid, token)
        dev.connect()
        got = dev.wait_messages(2, timeout=10)
        assert [m["payload"]["id"] for m in got] == sent[regid], got
        dev.expect_no_more(2, wait=0.3)
        for msg_id in sent[regid]:
            node.wait_delivered(app, msg_id, 1)
        dev.disconnect()
    node.close_clients()

    _restart_with(node, 3)
    # The other half, after a second move; the first half has nothing left.
    for regid, token in devices[4:]:
        dev = node.device(app, regid, token)
        dev.connect()
        got = dev.wait_messages(2, timeout=10)
        assert [m["payload"]["id"] for m in got] == sent[regid], got
    dev = node.device(app, first_regid, first_token)
    dev.connect()
    dev.expect_no_more(0, wait=0.5)
    # Counts kept across both moves.
    status = node.status(app, sent[first_regid][0]).json()
    assert (status["targets"], status["delivered"]) == (1, 1), status
    r = node.http("GET", "/v1/aliases/user-1", headers=auth)
    assert r.status_code == 200 and r.json()["regids"] == [first_regid], r.text
