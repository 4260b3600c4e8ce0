"""Changing a node's shard count or its store writer count loses nothing: the store's
files are laid out per writer (`data/store-I-of-N.redb`, N writers; shard `s` keeps its
partitions in file `s % N`), and a node started with another count moves every row into
files of its own layout before it serves. Registrations, pending messages (in order),
message counts and aliases survive 2 -> 1 -> 3 shards (one writer each) and then 4 shards
sharing 2 writers; the old files are gone."""

import subprocess

from conftest import PUSHNODE_BIN


def _store_files(node) -> set[str]:
    return {p.name for p in node.data_dir.glob("*.redb") if p.name.startswith(("store-", "partition-"))}


def _restart_with(node, shards: int, writers: int):
    node.stop()
    node.shards = shards
    node.extra_args = ["--store-writers", str(writers)]
    node.start()
    assert _store_files(node) == {f"store-{i}-of-{writers}.redb" for i in range(writers)}, _store_files(node)


def _fetch(node, app, devices, sent):
    """Each device comes back and gets its two messages, in order, and nothing more."""
    for regid, token in devices:
        dev = node.device(app, regid, token)
        dev.connect()
        got = dev.wait_messages(2, timeout=10)
        assert [m["payload"]["id"] for m in got] == sent[regid], got
        dev.expect_no_more(2, wait=0.3)
        for msg_id in sent[regid]:
            node.wait_delivered(app, msg_id, 1)
        dev.disconnect()
    node.close_clients()


def test_rows_survive_changes_of_the_shard_and_writer_counts(make_node):
    node = make_node(shards=2, extra_args=("--store-writers", "2"))
    app = node.create_app()
    assert _store_files(node) == {"store-0-of-2.redb", "store-1-of-2.redb"}
    devices = [node.register(app) for _ in range(8)]
    # Every device gets two pushes while offline; the first device's are read back last.
    sent = {regid: [node.send(app, [regid], title=f"{regid[:6]}-{i}")["id"] for i in range(2)]
            for regid, _ in devices}
    first_regid, first_token = devices[0]
    auth = {"Authorization": f"key={app['app_secret']}"}
    r = node.http("POST", f"/v1/devices/{first_regid}/aliases", headers=auth, json={"alias": "user-1"})
    assert r.status_code == 200, r.text

    _restart_with(node, 1, 1)
    _fetch(node, app, devices[:3], sent)
    _restart_with(node, 3, 3)
    _fetch(node, app, devices[3:5], sent)
    # Four shards, two writers: each writer commits for two shards.
    _restart_with(node, 4, 2)
    _fetch(node, app, devices[5:], sent)
    first = node.device(app, first_regid, first_token)
    first.connect()
    first.expect_no_more(0, wait=0.5)
    # Counts kept across the moves.
    status = node.status(app, sent[first_regid][0]).json()
    assert (status["targets"], status["delivered"]) == (1, 1), status
    r = node.http("GET", "/v1/aliases/user-1", headers=auth)
    assert r.status_code == 200 and r.json()["regids"] == [first_regid], r.text
    # New pushes through the shared writers reach the devices online (the first and the
    # second), and stay across a restart for those offline.
    online = node.device(app, *devices[1])
    online.connect()
    pushed = [node.send(app, [regid], title="after")["id"] for regid, _ in devices]
    assert first.wait_messages(1, timeout=10)[0]["payload"]["id"] == pushed[0]
    assert online.wait_messages(1, timeout=10)[0]["payload"]["id"] == pushed[1]
    node.close_clients()
    _restart_with(node, 4, 2)
    for (regid, token), msg_id in list(zip(devices, pushed))[2:]:
        dev = node.device(app, regid, token)
        dev.connect()
        got = dev.wait_messages(1, timeout=10)
        assert [m["payload"]["id"] for m in got] == [msg_id], got
        node.wait_delivered(app, msg_id, 1)
    node.close_clients()


def test_a_writer_count_that_does_not_divide_the_shards_is_refused(tmp_path):
    out = subprocess.run(
        [str(PUSHNODE_BIN), "serve", "--check", "--data-dir", str(tmp_path / "data"), "--shards", "4",
         "--store-writers", "3"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode != 0, out
    assert "store_writers must divide the shard count (4), got 3" in out.stderr, out.stderr
