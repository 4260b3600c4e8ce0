"""Greedy set cover over coverage features (COV lines of a libFuzzer merge control file):
picks at most MAX files of fuzz/corpus/T (+ work corpus) that, added to the seeds, cover
the most features. usage: cmin.py BIN TARGET MAX"""
import os, shutil, subprocess, sys, tempfile
binp, t, mx = sys.argv[1], sys.argv[2], int(sys.argv[3])
root = os.path.dirname(os.path.abspath(__file__))
seeds = os.path.join(root, "seeds", t)
cands = [d for d in (os.path.join(root, "corpus", t), os.path.join(root, "target/work", t)) if os.path.isdir(d)]
ctl = tempfile.mktemp()
empty = tempfile.mkdtemp()
env = dict(os.environ, ASAN_OPTIONS="detect_odr_violation=0")
subprocess.run([binp, "-set_cover_merge=1", f"-merge_control_file={ctl}", "-timeout=30", empty, seeds, *cands],
               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
lines = open(ctl).read().splitlines()
nfiles = int(lines[0]); files = lines[2:2 + nfiles]
cov = {}
for l in lines[2 + nfiles:]:
    if l.startswith("FT "):
        parts = l.split(); cov[int(parts[1])] = set(parts[2:])
covered = set()
for i, f in enumerate(files):
    if f.startswith(seeds + "/"): covered |= cov.get(i, set())
seed_features = len(covered)
pool = {i: cov.get(i, set()) for i, f in enumerate(files) if not f.startswith(seeds + "/")}
chosen = []
while len(chosen) < mx:
    best = max(pool, key=lambda i: (len(pool[i] - covered), -os.path.getsize(files[i])), default=None)
    if best is None or not (pool[best] - covered): break
    covered |= pool.pop(best); chosen.append(best)
total = set().union(*cov.values()) if cov else set()
tmpout = tempfile.mkdtemp()
for i in chosen:
    shutil.copy(files[i], tmpout)
out = os.path.join(root, "corpus", t)
shutil.rmtree(out, ignore_errors=True); shutil.copytree(tmpout, out)
size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
print(f"{t}: seeds cover {seed_features} features; {len(chosen)} corpus files bring it to {len(covered)} of {len(total)} features seen; {size} bytes")
