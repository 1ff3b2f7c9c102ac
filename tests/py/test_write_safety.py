"""Crash safety, full disk, readers during commits, and outside changes (DESIGN §4.3).

* test_kill_during_commits (zip, legacy, plain pickle): a chain of changes (alternating
  `device` cuda:0/cpu writes, truncate-rewrites of one tensor and in-place patches of another,
  each tensor write with a value never used before) is applied through a mount while the daemon
  is SIGKILLed at random points (during the write, or within ~1.3x the measured commit time after
  close() started). The expected file after every step of the chain is made beforehand by an
  undisturbed mount of a copy (so "the new version" is known byte for byte). After every kill the
  model file must be byte-identical to the version before the change or the one after it, and the
  one after it when close() had returned 0 before the kill. Temporary `.NAME.picklefs-XXXXXX`
  files left by a kill must be hidden by the next mount and gone once it has listed the folder;
  the remounted tree must show the version on disk. At the end torch loads the file and finds
  the last committed values and device.
* test_full_disk_*: the model on a small tmpfs whose free space holds a written tensor's spool
  but not the new model file: close() (or fsync()) of a valid write returns ENOSPC, the model file
  is unchanged, no temporary file is left, reads show the old tensor, and once the filler is
  removed the same write commits.
* test_readers_during_commits: 8 reader threads (numpy.load and one-go os.read of the tensor
  file) and 1 torch.load reader of the model file outside the mount, while a writer makes 32
  commits (rename-over and truncate-rewrite of a 2 MiB tensor whose every element is the version
  number, plus device toggles). A read may only be torn or short when it overlaps a
  truncate-rewrite's write phase (open O_TRUNC .. write() returned: the file is in flux there, as
  on a local disk), and then only with that rewrite's two values; everywhere else, commits
  included, each read is one whole version; a reader never sees an older version after a newer
  one; the outside torch.load never fails.
* test_meta_json_readers_during_device_changes: 4 meta.json and 2 device readers while `device`
  toggles 80 times (both change length): meta.json always parses, device reads cpu or cuda:0.
* test_reader_of_old_version_*: the same two properties made deterministic: a handle opened
  before a rewrite (its pages dropped as memory pressure would) must not leave the old version in
  the page cache for later opens; a meta.json/device handle opened before a device change reads
  one whole version.
* test_changed_behind_mount*: the model file is replaced in SOURCE (os.replace) while a write is
  pending: close() / fsync() returns ESTALE (also when the tree was looked at in between), the
  outside version stays byte-identical, the tree then shows the outside version, and a new write
  commits on top of it. For a timer commit (rename-over) the outside version is kept and the next
  fsync of a written file returns ESTALE.

Counts are printed (run with -s to see them). Needs root (tmpfs mount) for the full-disk tests.
Run:  PF_BUILD=/work/main/build /usr/bin/python3 -m pytest tests/py/test_write_safety.py -q
"""

import collections
import errno
import hashlib
import io
import json
import os
import pickle
import random
import re
import shutil
import signal
import statistics
import subprocess
import threading
import time
import zlib

import numpy as np
import pytest

import mounting
from mounting import FUSERMOUNT, mounted

# a writer whose daemon died sees one of these (the kernel aborts the connection; a write
# caught in the abort may get EIO)
DEAD = (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO)
TEMP_RE = re.compile(r"^\..+\.picklefs-[0-9a-f]{6}$")
SEED = int(os.environ.get("PF_SAFETY_SEED", "0")) or random.randrange(1, 1 << 30)


# no FUSE here: fail (or skip where allowed) every test of this file, once
pytestmark = pytest.mark.usefixtures("mount_feature")


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _npy(arr):
    b = io.BytesIO()
    np.save(b, arr)
    return b.getvalue()


def _temps(folder):
    return sorted(n for n in os.listdir(folder) if TEMP_RE.match(n))


def _rc(fn, *a):
    """errno of fn(*a), or 0."""
    try:
        fn(*a)
    except OSError as e:
        return e.errno
    return 0


def _write_file(path, data, trunc=True, offset=0, sync=False):
    """open / write / (fsync) / close; (errno of the first failing step or 0, step name)."""
    fd = os.open(path, os.O_WRONLY | (os.O_TRUNC if trunc else 0))
    try:
        n = os.pwrite(fd, data, offset)
        assert n == len(data), f"short write to {path}: {n} of {len(data)}"
        if sync:
            os.fsync(fd)
    except OSError as e:
        _rc(os.close, fd)
        return e.errno, "fsync" if sync else "write"
    return _rc(os.close, fd), "close"


def _load_any(path):
    """(state dict of CPU tensors, set of saved storage locations) for a zip/legacy torch.save
    file or a plain pickle whose storages are torch.save blobs (_load_from_bytes)."""
    import torch
    locs = set()

    def where(storage, loc):
        locs.add(loc)
        return storage

    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":
        return torch.load(path, map_location=where), locs
    try:
        return torch.load(path, map_location=where), locs
    except Exception:  # a plain pickle: its storages are torch.save blobs
        pass

    class U(pickle.Unpickler):
        def find_class(self, mod, name):
            if (mod, name) == ("torch.storage", "_load_from_bytes"):
                return lambda b: torch.load(io.BytesIO(b), map_location=where)
            return super().find_class(mod, name)

    with open(path, "rb") as f:
        return U(f).load(), locs


def _is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == path:
                return True
    return False


# ------------------------------------------------------------------------------------------
# 1. SIGKILL at random points of 200 commits


def _make_models(folder):
    import torch
    g = torch.Generator().manual_seed(7)
    sd = {"a": torch.zeros(256, 1024),                 # 1 MiB, truncate-rewritten
          "w": torch.ones(512, 512),                   # 1 MiB, patched in place
          "c": torch.rand(768, 1024, generator=g),     # 3 MiB, never written
          "b": torch.arange(10, dtype=torch.int64)}
    torch.save(sd, os.path.join(folder, "zip.pt"))
    torch.save(sd, os.path.join(folder, "legacy.pt"), _use_new_zipfile_serialization=False)
    with open(os.path.join(folder, "plain.pkl"), "wb") as f:
        pickle.dump(sd, f, protocol=2)
    return {k: v.numpy().copy() for k, v in sd.items()}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("orig")
    return str(d), _make_models(str(d))


def _change(step):
    """The chain's step-th change (1-based): ("device", text) / ("trunc", name, value) /
    ("patch", name, value)."""
    r = step % 4
    if r == 1:
        return ("device", "cuda:0\n")
    if r == 3:
        return ("device", "cpu\n")
    return ("trunc", "a.npy", float(step)) if r == 2 else ("patch", "w.npy", float(step))


def _expected_state(step):
    """(value of a, value of w, device) after the first `step` changes (None: the original)."""
    a = w = dev = None
    for s in range(1, step + 1):
        c = _change(s)
        if c[0] == "device":
            dev = c[1].strip()
        elif c[1] == "a.npy":
            a = c[2]
        else:
            w = c[2]
    return a, w, dev


class Writer(threading.Thread):
    """Applies one change through the mount: open, write, close; times the phases."""

    def __init__(self, mdir, change, shapes, headers):
        super().__init__(daemon=True)
        self.mdir, self.change, self.shapes, self.headers = mdir, change, shapes, headers
        self.closing = threading.Event()
        self.rc = None
        self.step = None
        self.t_start = self.t_close = self.t_end = None

    def run(self):
        c = self.change
        self.t_start = time.monotonic()
        try:
            if c[0] == "device":
                path, data, trunc, off = os.path.join(self.mdir, "device"), c[1].encode(), True, 0
            else:
                arr = np.full(self.shapes[c[1]], c[2], np.float32)
                path = os.path.join(self.mdir, c[1])
                if c[0] == "trunc":
                    data, trunc, off = _npy(arr), True, 0
                else:
                    data, trunc, off = arr.tobytes(), False, self.headers[c[1]]
            fd = os.open(path, os.O_WRONLY | (os.O_TRUNC if trunc else 0))
        except OSError as e:
            self.rc, self.step = e.errno, "open"
            self.t_end = time.monotonic()
            return
        try:
            os.pwrite(fd, data, off)
        except OSError as e:
            _rc(os.close, fd)
            self.rc, self.step = e.errno, "write"
            self.t_end = time.monotonic()
            return
        self.t_close = time.monotonic()
        self.closing.set()
        self.rc, self.step = _rc(os.close, fd), "close"
        self.t_end = time.monotonic()


class Daemon:
    """A foreground picklefs we may SIGKILL (mounting.mounted() assumes a clean exit)."""

    def __init__(self, src, mnt, cache, logdir, args=()):
        self.src, self.mnt, self.cache, self.logdir, self.args = src, mnt, cache, logdir, args
        self.proc = None
        self.n = 0
        self.logs = []

    def start(self):
        assert not _is_mounted(self.mnt)
        os.makedirs(self.mnt, exist_ok=True)
        self.n += 1
        log = os.path.join(self.logdir, f"daemon-{self.n}.log")
        self.logs.append(log)
        env = dict(os.environ, XDG_CACHE_HOME=self.cache + ".xdg")
        with open(log, "wb") as lf:
            self.proc = subprocess.Popen(
                [mounting.picklefs_path(), "-f", "-o", f"cache={self.cache}", *self.args, self.src,
                 self.mnt], stdin=subprocess.DEVNULL, stdout=lf, stderr=lf, env=env)
        t0 = time.monotonic()
        while not _is_mounted(self.mnt):
            assert self.proc.poll() is None, f"picklefs exited {self.proc.returncode}: {self.log(log)}"
            assert time.monotonic() - t0 < 10, "picklefs not mounted after 10 s"
            time.sleep(0.002)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        subprocess.run([FUSERMOUNT, "-u", "-z", self.mnt], capture_output=True, timeout=30)
        t0 = time.monotonic()
        while _is_mounted(self.mnt):
            assert time.monotonic() - t0 < 10, f"{self.mnt} still mounted after fusermount3 -u -z"
            time.sleep(0.005)

    def stop(self):
        t0 = time.monotonic()
        while subprocess.run([FUSERMOUNT, "-u", self.mnt], capture_output=True).returncode:
            if time.monotonic() - t0 > 10:
                subprocess.run([FUSERMOUNT, "-u", "-z", self.mnt], capture_output=True)
                raise AssertionError(f"fusermount3 -u {self.mnt} kept failing")
            time.sleep(0.05)
        rc = self.proc.wait(timeout=10)
        assert rc == 0, f"picklefs exited {rc} after fusermount3 -u"

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if _is_mounted(self.mnt):
            subprocess.run([FUSERMOUNT, "-u", "-z", self.mnt], capture_output=True, timeout=30)

    @staticmethod
    def log(path):
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_lines(self):
        out = []
        for p in self.logs:
            out += [f"{os.path.basename(p)}: {ln}" for ln in self.log(p).splitlines() if ln.strip()]
        return out


def _npy_header_len(path):
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        np.lib.format._read_array_header(f, version)
        return f.tell()


class Chain:
    """sha256 of the model file after each step of the change chain, made by an undisturbed
    mount of a copy (extended in batches as the kill loop needs more)."""

    def __init__(self, base, name, shapes, orig, orig_arrays):
        self.orig_arrays = orig_arrays
        self.src = os.path.join(base, "ref-src")
        self.mnt = os.path.join(base, "ref-mnt")
        self.cache = os.path.join(base, "ref-cache")
        self.name, self.shapes = name, shapes
        os.makedirs(self.src)
        shutil.copy(orig, os.path.join(self.src, name))
        self.sha = [_sha(os.path.join(self.src, name))]
        self.close_s = {"device": [], "trunc": [], "patch": []}
        self.write_s = {"device": [], "trunc": [], "patch": []}
        self.headers = None

    def extend(self, n):
        with mounted(self.src, self.mnt, self.cache) as m:
            mdir = m.path(self.name)
            if self.headers is None:
                self.headers = {t: _npy_header_len(os.path.join(mdir, t)) for t in self.shapes}
            for _ in range(n):
                step = len(self.sha)
                w = Writer(mdir, _change(step), self.shapes, self.headers)
                w.run()
                assert w.rc == 0, f"undisturbed step {step} {_change(step)}: {w.step} gave " \
                                  f"{errno.errorcode.get(w.rc, w.rc)}"
                kind = _change(step)[0]
                self.close_s[kind].append(w.t_end - w.t_close)
                self.write_s[kind].append(w.t_close - w.t_start)
                self.sha.append(_sha(os.path.join(self.src, self.name)))
                assert self.sha[-1] != self.sha[-2], f"step {step} left the file unchanged"
                assert not _temps(self.src), f"temporary files after a commit: {_temps(self.src)}"
        # the chain's end is a loadable file with the chain's values
        _check_final(os.path.join(self.src, self.name), len(self.sha) - 1, self.orig_arrays)

    def median(self, table, kind):
        return statistics.median(table[kind])


def _check_final(path, step, orig):
    sd, locs = _load_any(path)
    a, w, dev = _expected_state(step)
    assert set(sd) == set(orig), f"{path}: keys {sorted(sd)}"
    np.testing.assert_array_equal(sd["a"].numpy(), orig["a"] if a is None else np.full_like(orig["a"], a))
    np.testing.assert_array_equal(sd["w"].numpy(), orig["w"] if w is None else np.full_like(orig["w"], w))
    np.testing.assert_array_equal(sd["c"].numpy(), orig["c"])
    np.testing.assert_array_equal(sd["b"].numpy(), orig["b"])
    assert locs == {"cpu" if dev in (None, "cpu") else dev}, f"{path}: storage locations {locs}"


KILL_ATTEMPTS = {"zip.pt": 200, "legacy.pt": 50, "plain.pkl": 40}


@pytest.mark.parametrize("name", ["zip.pt", "legacy.pt", "plain.pkl"])
def test_kill_during_commits(models, tmp_path, name):
    origdir, orig = models
    base = str(tmp_path)
    rng = random.Random(SEED ^ zlib.crc32(name.encode()))
    shapes = {"a.npy": orig["a"].shape, "w.npy": orig["w"].shape}
    chain = Chain(base, name, shapes, os.path.join(origdir, name), orig)
    chain.extend(24)
    t_close = {k: chain.median(chain.close_s, k) for k in chain.close_s}
    t_write = {k: chain.median(chain.write_s, k) for k in chain.write_s}

    src = os.path.join(base, "src")
    os.makedirs(src)
    shutil.copy(os.path.join(origdir, name), os.path.join(src, name))
    model = os.path.join(src, name)
    d = Daemon(src, os.path.join(base, "mnt"), os.path.join(base, "cache"), base)
    mdir = os.path.join(d.mnt, name)
    stats = dict(attempts=0, kills=0, in_write=0, in_commit=0, kept_old=0, got_new=0,
                 done_before_kill=0, leftovers=0)
    pos = 0
    try:
        d.start()
        while stats["attempts"] < KILL_ATTEMPTS[name]:
            if pos + 1 >= len(chain.sha):
                chain.extend(40)
            step = pos + 1
            change = _change(step)
            kind = change[0]
            mode = rng.random()
            w = Writer(mdir, change, shapes, chain.headers)
            stats["attempts"] += 1
            w.start()
            killed = False
            if mode < 0.1:
                pass  # undisturbed
            elif mode < 0.3:  # somewhere in the write phase (open, truncate, write)
                time.sleep(rng.uniform(0, t_write[kind]))
                killed = True
            else:  # somewhere in the commit, or just after it
                assert w.closing.wait(10), f"step {step}: the write did not finish ({w.rc})"
                time.sleep(rng.uniform(0, 1.3 * t_close[kind]))
                killed = True
            finished_first, in_close = w.t_end is not None, w.closing.is_set()
            if killed:
                d.kill()
                stats["kills"] += 1
            w.join(20)
            assert not w.is_alive(), f"step {step}: the writer still hangs after the kill"
            sha = _sha(model)
            old, new = chain.sha[pos], chain.sha[step]
            what = f"step {step} {change} (attempt {stats['attempts']}, " \
                   f"{'killed' if killed else 'no kill'}, writer: {w.step} -> " \
                   f"{errno.errorcode.get(w.rc, w.rc)}, seed {SEED})"
            assert sha in (old, new), f"{what}: the model file is neither the old nor the new version"
            if finished_first or not killed:
                assert w.rc == 0, f"{what}: failed without a kill"
                assert sha == new, f"{what}: close() returned 0 but the commit is not on disk"
            else:
                assert w.rc in DEAD + (0,), f"{what}: unexpected error"
            if killed:
                if finished_first:
                    stats["done_before_kill"] += 1
                else:
                    stats["in_commit" if in_close else "in_write"] += 1
                    stats["kept_old" if sha == old else "got_new"] += 1
            if sha == new:
                pos = step
            if killed:
                left = _temps(src)
                stats["leftovers"] += len(left)
                d.start()
                shown = os.listdir(d.mnt)
                assert shown == [name], f"after a kill, the remounted root lists {shown}"
                assert not _temps(src), f"{_temps(src)} still in the folder after the remount listed it"
                # the remounted tree is the version on disk
                a, wv, dev = _expected_state(pos)
                with open(os.path.join(mdir, "device")) as f:
                    assert f.read() == (dev or "cpu") + "\n", f"{what}: device file after remount"
                got = np.load(os.path.join(mdir, "a.npy"))
                assert (got == (0.0 if a is None else a)).all(), f"{what}: a.npy after remount"
                got = np.load(os.path.join(mdir, "w.npy"))
                assert (got == (1.0 if wv is None else wv)).all(), f"{what}: w.npy after remount"
        d.stop()
        assert not _temps(src)
        assert d.log_lines() == [], "daemon log lines:\n" + "\n".join(d.log_lines())
    finally:
        d.cleanup()
    _check_final(model, pos, orig)
    assert _sha(model) == chain.sha[pos]
    print(f"\n{name}: seed {SEED}; {stats['attempts']} commit attempts, {pos} committed, "
          f"{stats['kills']} SIGKILLs: {stats['in_commit']} during close() (the commit), "
          f"{stats['in_write']} before it ({stats['kept_old']} of these kept the old file, "
          f"{stats['got_new']} had the new one), {stats['done_before_kill']} after close() "
          f"returned; {stats['leftovers']} temp files left by kills (all removed at remount); "
          f"median close {', '.join(f'{k} {v * 1000:.1f} ms' for k, v in t_close.items())}")
    assert stats["attempts"] >= KILL_ATTEMPTS[name]
    # the kills must really have hit commits in flight, not only idle daemons
    assert stats["in_commit"] >= stats["attempts"] // 5, stats


# ------------------------------------------------------------------------------------------
# 2. a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MiB tmpfs with a 5 MiB model (a: 1 MiB, w: 1 MiB, c: 3 MiB) and a filler that leaves
    about 2.5 MiB: room for a written tensor's spool (1 MiB), none for a new model file."""
    import torch
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m,mode=0755", "tmpfs", str(disk)],
                       capture_output=True, text=True)
    if p.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        src = disk / "src"
        src.mkdir()
        sd = {"a": torch.zeros(256, 1024), "w": torch.full((512, 512), 5.0),
              "c": torch.arange(768 * 1024, dtype=torch.float32).reshape(768, 1024)}
        torch.save(sd, str(src / "m.pt"))
        model = str(src / "m.pt")
        assert 4 << 20 < os.path.getsize(model) < 6 << 20
        filler = str(src / "filler")
        st = os.statvfs(str(disk))
        free = st.f_bavail * st.f_frsize
        with open(filler, "wb") as f:
            f.write(b"\0" * (free - (2560 << 10)))
        st = os.statvfs(str(disk))
        assert (1 << 20) + (256 << 10) < st.f_bavail * st.f_frsize < os.path.getsize(model)
        yield tmp_path, str(src), model, filler
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


NOSPACE_LINE = r"^picklefs: m\.pt: not committed: .*(No space left|ENOSPC)"


def _full_disk_case(small_disk, sync):
    base, src, model, filler = small_disk
    before = _sha(model)
    new = _npy(np.full((512, 512), 9.0, np.float32))
    with mounted(src, base / "mnt", base / "cache", expect=[NOSPACE_LINE]) as m:
        wpath = m.path("m.pt", "w.npy")
        # the write fits in the spool, the new model file does not
        rc, step = _write_file(wpath, new, sync=sync)
        assert (rc, step) == (errno.ENOSPC, "fsync" if sync else "close"), \
            f"a commit on a full disk: {step} gave {errno.errorcode.get(rc, rc)}, want ENOSPC"
        assert _sha(model) == before, "the model file changed after a failed commit"
        assert sorted(os.listdir(src)) == ["filler", "m.pt"], "a temporary file was left behind"
        # the mount still works and shows the file as it is on disk
        got = np.load(wpath)
        assert got.shape == (512, 512) and (got == 5.0).all(), "the dropped change is still shown"
        with open(m.path("m.pt", "meta.json")) as f:
            assert json.load(f)["root"]["w"]["tensor"] == "w.npy"
        # room again: the same write commits
        os.unlink(filler)
        rc, step = _write_file(wpath, new, sync=sync)
        assert rc == 0, f"after freeing space: {step} gave {errno.errorcode.get(rc, rc)}"
        assert (np.load(wpath) == 9.0).all()
        assert os.listdir(src) == ["m.pt"]
    sd, _ = _load_any(model)
    assert (sd["w"].numpy() == 9.0).all() and (sd["a"].numpy() == 0).all()
    np.testing.assert_array_equal(sd["c"].numpy().ravel(), np.arange(768 * 1024, dtype=np.float32))


def test_full_disk_close(small_disk):
    _full_disk_case(small_disk, sync=False)


def test_full_disk_fsync(small_disk):
    _full_disk_case(small_disk, sync=True)


# ------------------------------------------------------------------------------------------
# 3. readers during commits


READ_SHAPE = (512, 1024)  # 2 MiB of float32
N_COMMITS = 32


def _parse_npy(buf):
    """(header length, dtype, shape) of .npy bytes, or None when the header is incomplete."""
    f = io.BytesIO(buf)
    try:
        version = np.lib.format.read_magic(f)
        shape, _fortran, dtype = np.lib.format._read_array_header(f, version)
    except (ValueError, EOFError):
        return None
    return f.tell(), dtype, shape


def _values(arr):
    vals, n = np.unique(arr, return_counts=True)
    return dict(zip(vals.tolist()[:6], n.tolist()[:6]))


class Readers:
    """Reader threads; each tensor read is classified as one whole version ("ok"), a mix of
    versions ("torn") or shorter than the tensor ("short"). Torn and short reads are kept with
    their time span and judged against the writer's rewrite windows afterwards."""

    def __init__(self, mdir, model):
        self.mdir, self.model = mdir, model
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.errors = []
        self.anomalies = []  # (t_open, t_done, reader, "torn" | "short", values seen)
        self.counts = dict(npy_load=0, raw_read=0, meta=0, device=0, outside=0)
        self.seen = set()

    def fail(self, msg):
        with self.lock:
            if len(self.errors) < 20:
                self.errors.append(msg)

    def count(self, what):
        with self.lock:
            self.counts[what] += 1

    def _read_once(self, path, n):
        """("ok", k) | ("torn", values) | ("short", values) | ("bad", message)"""
        full = 4 * READ_SHAPE[0] * READ_SHAPE[1]
        if n % 2:
            try:
                arr = np.load(path)
            except ValueError:  # fewer bytes than the header promises
                return "short", {}
            self.count("npy_load")
            if arr.shape != READ_SHAPE or arr.dtype != np.float32:
                return "bad", f"numpy.load gave {arr.dtype} {arr.shape}"
        else:
            fd = os.open(path, os.O_RDONLY)
            try:
                buf = os.read(fd, full + 4096)
            finally:
                os.close(fd)
            self.count("raw_read")
            h = _parse_npy(buf)
            if h is None:
                if not b"\x93NUMPY".startswith(buf[:6]):
                    return "bad", f"read {len(buf)} bytes that are no .npy"
                return "short", {}
            hl, dtype, shape = h
            if dtype != np.float32 or shape != READ_SHAPE:
                return "bad", f"header says {dtype} {shape}"
            data = buf[hl:]
            if len(data) > full:
                return "bad", f"{len(data) - full} bytes past the tensor"
            arr = np.frombuffer(data[:len(data) // 4 * 4], np.float32)
            if len(data) < full:
                return "short", _values(arr)
        k = arr.flat[0]
        if not (arr == k).all():
            return "torn", _values(arr)
        if k != int(k) or not 0 <= k <= N_COMMITS:
            return "bad", f"value {k} was never written"
        return "ok", float(k)

    def tensor_reader(self, i):
        path = os.path.join(self.mdir, "w.npy")
        last = -1.0
        n = 0
        while not self.stop.is_set():
            n += 1
            t0 = time.monotonic()
            try:
                kind, what = self._read_once(path, n)
            except OSError as e:
                self.fail(f"reader {i}: {e}")
                continue
            t1 = time.monotonic()
            if kind == "bad":
                self.fail(f"reader {i}: {what}")
            elif kind in ("torn", "short"):
                with self.lock:
                    self.anomalies.append((t0, t1, i, kind, what))
            else:
                if what < last:
                    self.fail(f"reader {i}: saw version {what} after version {last}")
                last = what
                with self.lock:
                    self.seen.add(what)

    def meta_reader(self, i):
        path = os.path.join(self.mdir, "meta.json")
        while not self.stop.is_set():
            text = b""
            try:
                with open(path, "rb") as f:
                    text = f.read()
                meta = json.loads(text)
                if meta["root"]["w"]["shape"] != list(READ_SHAPE) or \
                        meta["devices"] not in (["cpu"], ["cuda:0"]):
                    self.fail(f"meta reader {i}: {meta['root']['w']} {meta['devices']}")
                self.count("meta")
            except (OSError, ValueError, KeyError) as e:
                self.fail(f"meta reader {i}: {type(e).__name__}: {e}; read {len(text)} bytes "
                          f"ending {text[-40:]!r}")

    def device_reader(self, i):
        path = os.path.join(self.mdir, "device")
        while not self.stop.is_set():
            try:
                with open(path, "rb") as f:
                    text = f.read()
            except OSError as e:
                self.fail(f"device reader {i}: {e}")
                continue
            # b"": the file between the writer's O_TRUNC open and its write, as on a local disk
            if text not in (b"", b"cpu\n", b"cuda:0\n"):
                self.fail(f"device reader {i}: read {text!r}")
            self.count("device")

    def outside_reader(self):
        import torch
        while not self.stop.is_set():
            try:
                sd = torch.load(self.model, map_location="cpu")
                w = sd["w"].numpy()
                if not (w == w.flat[0]).all():
                    self.fail(f"torch.load of the model file: torn tensor {_values(w)}")
                self.count("outside")
            except Exception as e:  # noqa: BLE001 - any failure to load is the finding
                self.fail(f"torch.load of the model file: {type(e).__name__}: {e}")
            time.sleep(0.01)


def r_start(windows):
    return windows[0][0] if windows else 0.0


def _wait_commit(model, key0, timeout=5.0):
    t0 = time.monotonic()
    while True:
        st = os.stat(model)
        if (st.st_ino, st.st_mtime_ns) != key0:
            return
        assert time.monotonic() - t0 < timeout, "a rename-over was not committed in time"
        time.sleep(0.005)


def test_readers_during_commits(tmp_path):
    """A tensor read may only be torn or short when it overlaps a truncate-rewrite's write phase
    (open O_TRUNC .. write returned), as on a local disk, and then only with that rewrite's old
    and new values. Everywhere else, the commits included (close() of the truncate-rewrite,
    timer commits of rename-overs), each read is one whole version."""
    import torch
    src = tmp_path / "src"
    src.mkdir()
    model = str(src / "m.pt")
    torch.save({"w": torch.zeros(READ_SHAPE), "b": torch.ones(4)}, model)
    windows = []  # truncate-rewrite write phases: [t_open, t_written, old k, new k]
    with mounted(src, tmp_path / "mnt", tmp_path / "cache", args=["-o", "commit_delay=20"]) as m:
        mdir = m.path("m.pt")
        wpath = os.path.join(mdir, "w.npy")
        r = Readers(mdir, model)
        threads = [threading.Thread(target=r.tensor_reader, args=(i,), daemon=True) for i in range(8)]
        threads.append(threading.Thread(target=r.outside_reader, daemon=True))
        for t in threads:
            t.start()
        modes = {"rename": 0, "trunc": 0, "device": 0}
        device = "cpu"
        try:
            time.sleep(0.2)
            for k in range(1, N_COMMITS + 1):
                data = _npy(np.full(READ_SHAPE, float(k), np.float32))
                st = os.stat(model)
                key0 = (st.st_ino, st.st_mtime_ns)
                if k % 2:
                    tmp = os.path.join(mdir, f".w.npy.tmp{k}")
                    with open(tmp, "wb") as f:
                        f.write(data)
                    os.rename(tmp, wpath)
                    _wait_commit(model, key0)
                    modes["rename"] += 1
                else:
                    win = [time.monotonic(), float("inf"), k - 1, k]
                    windows.append(win)
                    fd = os.open(wpath, os.O_WRONLY | os.O_TRUNC)
                    assert os.write(fd, data) == len(data)
                    win[1] = time.monotonic()
                    os.close(fd)  # the commit: no longer an excuse for a torn read
                    assert os.stat(model).st_ino != key0[0], f"version {k}: close() did not commit"
                    modes["trunc"] += 1
                if k % 5 == 0:
                    device = "cuda:0" if device == "cpu" else "cpu"
                    rc, step = _write_file(os.path.join(mdir, "device"), device.encode() + b"\n")
                    assert rc == 0, f"device {device}: {step} gave {errno.errorcode.get(rc, rc)}"
                    modes["device"] += 1
                time.sleep(0.03)
            time.sleep(0.2)
        finally:
            r.stop.set()
            for t in threads:
                t.join(30)
        assert not any(t.is_alive() for t in threads), "a reader hangs"
        shown = np.load(wpath)  # checked below, after the readers' findings
    excused, bad = collections.Counter(), []
    for t0, t1, i, kind, vals in r.anomalies:
        win = [w for w in windows if t0 <= w[1] and w[0] <= t1]
        if win and set(vals) <= {v for w in win for v in w[2:]}:
            excused[kind] += 1
        else:
            t_0 = r_start(windows)
            near = [f"{w[3]:g}: +{w[0] - t_0:.3f}..+{w[1] - t_0:.3f}" for w in windows
                    if abs(w[0] - t0) < 0.2]
            bad.append(f"reader {i}: {kind} read {vals} at +{t0 - r_start(windows):.3f}..+"
                       f"{t1 - r_start(windows):.3f} s, outside any rewrite's write phase "
                       f"(write phases of rewrites near it: {near})")
    assert not r.errors and not bad, "\n".join(r.errors + bad[:20]) + \
        f"\n({len(bad)} torn/short reads outside a write phase)"
    assert (shown == N_COMMITS).all(), f"after the last commit the mount shows {_values(shown)}"
    sd, locs = _load_any(model)
    assert (sd["w"].numpy() == N_COMMITS).all(), "the model file does not hold the last version"
    assert locs == {device}
    print(f"\nreaders: {r.counts}; torn/short reads during a write phase (allowed): "
          f"{dict(excused)}; commits {modes}; versions seen by readers: {len(r.seen)}")
    assert r.counts["npy_load"] > 50 and r.counts["raw_read"] > 50
    assert r.counts["outside"] > 5
    assert len(r.seen) > N_COMMITS // 3, f"readers saw only versions {sorted(r.seen)}"


def test_meta_json_readers_during_device_changes(tmp_path):
    """meta.json and device change length with every device write (cpu <-> cuda:0): a reader
    must get one whole version, never one version's text cut or zero-padded to the other's
    length."""
    import torch
    src = tmp_path / "src"
    src.mkdir()
    model = str(src / "m.pt")
    torch.save({"w": torch.zeros(READ_SHAPE), "b": torch.ones(4)}, model)
    with mounted(src, tmp_path / "mnt", tmp_path / "cache") as m:
        mdir = m.path("m.pt")
        r = Readers(mdir, model)
        threads = [threading.Thread(target=r.meta_reader, args=(i,), daemon=True) for i in range(4)]
        threads += [threading.Thread(target=r.device_reader, args=(i,), daemon=True) for i in range(2)]
        for t in threads:
            t.start()
        device = "cpu"
        try:
            for _ in range(80):
                device = "cuda:0" if device == "cpu" else "cpu"
                rc, step = _write_file(os.path.join(mdir, "device"), device.encode() + b"\n")
                assert rc == 0, f"device {device}: {step} gave {errno.errorcode.get(rc, rc)}"
                time.sleep(0.01)
        finally:
            r.stop.set()
            for t in threads:
                t.join(30)
        assert not any(t.is_alive() for t in threads), "a reader hangs"
        print(f"\nmeta/device readers: {r.counts}")
        assert not r.errors, "\n".join(r.errors)
        assert r.counts["meta"] > 100 and r.counts["device"] > 100
    _sd, locs = _load_any(model)
    assert locs == {device}


def _npy_file(path, value, shape=READ_SHAPE):
    with open(path, "wb") as f:
        f.write(_npy(np.full(shape, value, np.float32)))


def test_reader_of_old_version_leaves_no_stale_pages(tmp_path):
    """A handle opened before a truncate-rewrite keeps reading its version; what it reads must
    not stay in the page cache for later opens (they must see the committed version)."""
    import torch
    src = tmp_path / "src"
    src.mkdir()
    model = str(src / "m.pt")
    torch.save({"w": torch.zeros(READ_SHAPE), "b": torch.ones(4)}, model)
    with mounted(src, tmp_path / "mnt", tmp_path / "cache") as m:
        p = m.path("m.pt", "w.npy")
        size = os.path.getsize(p)
        old = os.open(p, os.O_RDONLY)
        try:
            rc, step = _write_file(p, _npy(np.full(READ_SHAPE, 7.0, np.float32)))
            assert rc == 0, f"{step}: {errno.errorcode.get(rc, rc)}"
            with open(p, "rb") as f:
                assert len(f.read()) == size
            os.posix_fadvise(old, 0, 0, os.POSIX_FADV_DONTNEED)  # as memory pressure would
            got = np.frombuffer(os.pread(old, size, 0)[128:], np.float32)
            assert (got == got[0]).all() and got[0] in (0.0, 7.0), f"old handle: {_values(got)}"
        finally:
            os.close(old)
        shown = np.load(p)
        assert (shown == 7.0).all(), f"a new open after the commit shows {_values(shown)}"
    sd, _ = _load_any(model)
    assert (sd["w"].numpy() == 7.0).all()


@pytest.mark.parametrize("first,then", [("cuda:0", "cpu"), ("cpu", "cuda:0")])
def test_reader_of_old_version_across_device_change(tmp_path, first, then):
    """meta.json and device change length with a device write; a handle opened before it reads
    one whole version (old or new), never one version's text cut or padded to the other's size."""
    import torch
    src = tmp_path / "src"
    src.mkdir()
    torch.save({"w": torch.zeros(4), "b": torch.ones(4)}, str(src / "m.pt"))
    with mounted(src, tmp_path / "mnt", tmp_path / "cache") as m:
        meta, dev = m.path("m.pt", "meta.json"), m.path("m.pt", "device")
        if first != "cpu":
            assert _write_file(dev, first.encode() + b"\n") == (0, "close")
        fm, fd = os.open(meta, os.O_RDONLY), os.open(dev, os.O_RDONLY)
        try:
            assert _write_file(dev, then.encode() + b"\n") == (0, "close")
            os.stat(meta), os.stat(dev)
            text, dtext = os.pread(fm, 1 << 16, 0), os.pread(fd, 64, 0)
        finally:
            os.close(fm), os.close(fd)
        try:
            json.loads(text)
        except ValueError as e:
            raise AssertionError(f"meta.json opened before the device change: {e}; "
                                 f"{len(text)} bytes ending {text[-30:]!r}") from None
        assert dtext in (first.encode() + b"\n", then.encode() + b"\n"), \
            f"device opened before the change reads {dtext!r}"
        with open(meta, "rb") as f:
            assert json.loads(f.read())["devices"] == [then]


# ------------------------------------------------------------------------------------------
# 4. the model file changed behind the mount while a write is pending


# the commit finds the file changed (ESTALE), or a look at the tree noticed it first and dropped
# the pending write
STALE_LINE = r"^picklefs: m\.pt(: not committed: |/\S+: not written: the model file changed outside the mount)"


@pytest.fixture
def stale_src(tmp_path):
    import torch
    src = tmp_path / "src"
    src.mkdir()
    torch.save({"w": torch.full((256, 256), 5.0), "b": torch.ones(4)}, str(src / "m.pt"))
    outside = str(tmp_path / "outside.pt")
    torch.save({"w": torch.full((256, 256), 3.0), "b": torch.ones(4)}, outside)
    return tmp_path, src, str(src / "m.pt"), outside


@pytest.mark.parametrize("how", ["close", "fsync", "close-after-looking", "device-close"])
def test_changed_behind_mount(stale_src, how):
    base, src, model, outside = stale_src
    new = _npy(np.full((256, 256), 9.0, np.float32))
    with mounted(src, base / "mnt", base / "cache", expect=[STALE_LINE]) as m:
        mdir = m.path("m.pt")
        assert (np.load(os.path.join(mdir, "w.npy")) == 5.0).all()
        if how == "device-close":
            fd = os.open(os.path.join(mdir, "device"), os.O_WRONLY | os.O_TRUNC)
            os.write(fd, b"cuda:0\n")
        else:
            fd = os.open(os.path.join(mdir, "w.npy"), os.O_WRONLY | os.O_TRUNC)
            os.write(fd, new)
        # someone replaces the model file (another program, a git checkout, rsync)
        tmp = model + ".new"
        shutil.copy(outside, tmp)
        os.replace(tmp, model)
        want = _sha(model)
        if how == "close-after-looking":
            os.listdir(mdir)
            os.stat(os.path.join(mdir, "w.npy"))
            with open(os.path.join(mdir, "meta.json")) as f:
                json.load(f)
        if how == "fsync":
            rc = _rc(os.fsync, fd)
            crc = _rc(os.close, fd)
            assert crc in (0, errno.ESTALE), f"close() after the failed fsync: {errno.errorcode.get(crc)}"
        else:
            rc = _rc(os.close, fd)
        kept = _sha(model) == want
        assert rc == errno.ESTALE and kept, \
            f"{how}: gave {errno.errorcode.get(rc, rc)} (want ESTALE); the outside version was " \
            f"{'kept' if kept else 'OVERWRITTEN (the pending write was committed on top of it)'}"
        assert sorted(os.listdir(src)) == ["m.pt"]
        # the tree shows the outside version
        shown = np.load(os.path.join(mdir, "w.npy"))
        assert (shown == 3.0).all(), f"the tree shows {_values(shown)}, not the outside version"
        with open(os.path.join(mdir, "device")) as f:
            assert f.read() == "cpu\n"
        # and the next write commits on top of the outside version
        assert _write_file(os.path.join(mdir, "w.npy"), new) == (0, "close")
    sd, locs = _load_any(model)
    assert (sd["w"].numpy() == 9.0).all() and locs == {"cpu"}


def test_changed_behind_mount_timer_commit(stale_src):
    """A rename-over is committed by the timer; the model file replaced before that: the
    outside version is kept and the error comes back from the next fsync of a written file
    (once)."""
    base, src, model, outside = stale_src
    with mounted(src, base / "mnt", base / "cache", args=["-o", "commit_delay=300"],
                 expect=[STALE_LINE]) as m:
        mdir = m.path("m.pt")
        tmp = os.path.join(mdir, ".w.npy.XXXX")
        with open(tmp, "wb") as f:
            f.write(_npy(np.full((256, 256), 9.0, np.float32)))
        os.rename(tmp, os.path.join(mdir, "w.npy"))
        t = model + ".new"
        shutil.copy(outside, t)
        os.replace(t, model)
        want = _sha(model)
        time.sleep(0.8)
        assert _sha(model) == want, "the outside version was overwritten by the timer commit"
        assert sorted(os.listdir(src)) == ["m.pt"]
        shown = np.load(os.path.join(mdir, "w.npy"))
        assert (shown == 3.0).all(), f"the tree shows {_values(shown)}, not the outside version"
        # the failure is told by the next fsync of a written file of this model
        rc, step = _write_file(os.path.join(mdir, "w.npy"), _npy(np.full((256, 256), 4.0, np.float32)),
                               sync=True)
        assert (rc, step) == (errno.ESTALE, "fsync"), \
            f"the next fsync after the failed timer commit: {step} gave {errno.errorcode.get(rc, rc)}"
        # told once: the next write commits and says so
        assert _write_file(os.path.join(mdir, "w.npy"), _npy(np.full((256, 256), 6.0, np.float32)),
                           sync=True) == (0, "close")
    sd, _ = _load_any(model)
    assert (sd["w"].numpy() == 6.0).all()
