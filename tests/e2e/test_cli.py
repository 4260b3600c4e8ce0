"""The CLI demo of the README: app create, device, send."""

import json
import subprocess
import time

from conftest import PUSHNODE_BIN, wait_until


def _json_out(out: str):
    out = out.strip()
    try:
        return json.loads(out)
    except ValueError:
        lines = [ln for ln in out.splitlines() if ln.strip()]
        assert lines, "no output"
        return json.loads(lines[-1])


def test_cli_demo(node, tmp_path):
    # app create
    p = subprocess.run(
        [str(PUSHNODE_BIN), "app", "create", "--name", "demo", "--http", node.url,
         "--data-dir", str(node.data_dir)],
        capture_output=True, text=True, timeout=30,
    )
    assert p.returncode == 0, f"app create rc {p.returncode}: {p.stdout!r} {p.stderr!r}"
    app = _json_out(p.stdout)
    for k in ("app_id", "app_key", "app_secret"):
        assert isinstance(app.get(k), str) and app[k], app

    # device in the background
    state = tmp_path / "device-state.json"
    dev_out = tmp_path / "device.out"
    dev_err = tmp_path / "device.err"
    with open(dev_out, "wb") as fo, open(dev_err, "wb") as fe:
        dev = subprocess.Popen(
            [str(PUSHNODE_BIN), "device", "--app-id", app["app_id"], "--app-key", app["app_key"],
             "--mqtt", node.mqtt_addr, "--state", str(state), "--count", "1"],
            stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
        )
    try:
        def read_state():
            if dev.poll() is not None:
                raise AssertionError(
                    f"device exited early rc={dev.returncode}: {dev_out.read_text()!r} "
                    f"{dev_err.read_text()!r}")
            try:
                st = json.loads(state.read_text())
            except (OSError, ValueError):
                return None
            return st if st.get("regid") and st.get("token") else None

        st = wait_until(read_state, 15, interval=0.1, what="device state file")
        time.sleep(0.5)  # let the device connect after saving its state

        # send
        p = subprocess.run(
            [str(PUSHNODE_BIN), "send", "--secret", app["app_secret"], "--regid", st["regid"],
             "--title", "hi", "--http", node.url],
            capture_output=True, text=True, timeout=30,
        )
        assert p.returncode == 0, f"send rc {p.returncode}: {p.stdout!r} {p.stderr!r}"
        res = _json_out(p.stdout)
        assert res["targets"] == 1 and res["invalid"] == [], res

        try:
            rc = dev.wait(15)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"device did not exit within 15 s: {dev_out.read_text()!r} {dev_err.read_text()!r}"
            ) from None
        out = dev_out.read_text()
        assert rc == 0, f"device rc {rc}: {out!r} {dev_err.read_text()!r}"
        lines = [ln for ln in out.splitlines() if "hi" in ln]
        assert lines, f"device printed no line with 'hi': {out!r}"
        env = json.loads(lines[0])
        assert env["title"] == "hi" and env["id"] == res["id"], env
        node.wait_delivered(app, res["id"], 1)

        # Reconnecting with the saved state: a second device run with the same state file
        # reuses the RegID (no new registration) and gets the next push.
        with open(dev_out, "wb") as fo:
            dev = subprocess.Popen(
                [str(PUSHNODE_BIN), "device", "--app-id", app["app_id"], "--app-key",
                 app["app_key"], "--mqtt", node.mqtt_addr, "--state", str(state), "--count", "1"],
                stdin=subprocess.DEVNULL, stdout=fo, stderr=subprocess.DEVNULL,
            )
        res2 = node.send(app, [st["regid"]], title="again")
        rc = dev.wait(15)
        assert rc == 0
        assert json.loads(state.read_text())["regid"] == st["regid"]
        assert "again" in dev_out.read_text()
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait(5)
    assert res2["targets"] == 1


def test_device_tray_keeps_five_categories(node, app, tmp_path):
    """The reference device shows at most 5 notification categories; a new notification of a
    shown category replaces the old one."""
    regid, token = node.register(app)
    state = tmp_path / "tray-state.json"
    state.write_text(json.dumps({"regid": regid, "token": token}))
    for notify_id in [1, 2, 3, 4, 5, 3, 6]:
        node.send(app, [regid], title=f"n{notify_id}", notify_id=notify_id)
    node.send(app, [regid], type="passthrough", payload="not for the tray", title="")
    p = subprocess.run(
        [str(PUSHNODE_BIN), "device", "--app-id", app["app_id"], "--app-key", app["app_key"],
         "--mqtt", node.mqtt_addr, "--state", str(state), "--count", "8"],
        capture_output=True, text=True, timeout=30,
    )
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert len(p.stdout.strip().splitlines()) == 8, p.stdout
    tray = [ln for ln in p.stderr.splitlines() if ln.startswith("tray:")]
    assert len(tray) == 7, p.stderr
    assert "Replaced" in tray[5], tray
    assert "Evicted { notify_id: 1" in tray[6] and tray[6].endswith("categories=[2, 4, 5, 3, 6]"), tray
