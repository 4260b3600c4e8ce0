#!/usr/bin/env python3
"""Runs a server and writes its CPU seconds and context switches per thread kind at exit.

For bench/run.py, whose `PUSHNODE` names the server binary:
    PUSHNODE=bench/thread-cpu.py THREAD_CPU_BIN=$PWD/target/release/pushnode THREAD_CPU_OUT=/tmp/FILE \
        python3 bench/run.py --profile full --only pushnode --scenarios unicast --connections 100000 --out DIR
THREAD_CPU_BIN and THREAD_CPU_OUT must be absolute paths (the server runs in its own
folder). Every quarter second it reads /proc/PID/task/*/{stat,status} and keeps each thread's last
figures (threads that end keep theirs); at exit it sums them by thread name without its
`-N` suffix (shard, store, http, ...) into THREAD_CPU_OUT, one line per kind. SIGTERM and
SIGINT are passed on to the server.
"""
import os
import re
import signal
import subprocess
import sys
import time


def main() -> int:
    server = subprocess.Popen([os.environ["THREAD_CPU_BIN"], *sys.argv[1:]])
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: server.send_signal(s))
    tick = os.sysconf("SC_CLK_TCK")
    last: dict[str, tuple[str, int, int, int, int]] = {}
    task_dir = f"/proc/{server.pid}/task"
    while server.poll() is None:
        try:
            tids = os.listdir(task_dir)
        except OSError:
            tids = []
        for tid in tids:
            try:
                with open(f"{task_dir}/{tid}/stat") as f:
                    stat = f.read()
                with open(f"{task_dir}/{tid}/status") as f:
                    status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
            except OSError:
                continue  # the thread ended between the listing and the read
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            last[tid] = (name, int(fields[11]), int(fields[12]),
                         int(status["voluntary_ctxt_switches"]), int(status["nonvoluntary_ctxt_switches"]))
        time.sleep(0.25)
    kinds: dict[str, list[int]] = {}
    for name, *figures in last.values():
        totals = kinds.setdefault(re.sub(r"-\d+$", "", name), [0, 0, 0, 0])
        for i, figure in enumerate(figures):
            totals[i] += figure
    with open(os.environ["THREAD_CPU_OUT"], "w") as out:
        for kind, (user, system, vol, invol) in sorted(kinds.items()):
            out.write(f"{kind} user {user / tick:.2f} sys {system / tick:.2f} total {(user + system) / tick:.2f} "
                      f"voluntary_switches {vol} involuntary_switches {invol}\n")
    return server.returncode if server.returncode >= 0 else 0


if __name__ == "__main__":
    sys.exit(main())
