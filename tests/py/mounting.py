"""Mount helper for the real-FUSE tests (test_mount.py).

``mounted(source, mountpoint, cache)`` starts ``picklefs -f -o cache=CACHE SOURCE MOUNTPOINT``
with stdout+stderr going to a log file, waits until the mountpoint is mounted (fails with the log
if the daemon dies or 10 s pass), yields a ``Mount``, then unmounts with ``fusermount3 -u``, waits
for the daemon to exit (kills it and fails after 10 s), and checks the log: every regex in
``expect`` must match exactly one line, every regex in ``optional`` at most one line, and no other
line may be there.

A watchdog SIGKILLs the daemon after ``deadline`` seconds, so a deadlocked filesystem makes the
blocked reads fail with ENOTCONN instead of hanging the test session.

Also: ``picklefs_path()``, ``mount_support()`` (why the mount cannot be tested here, or None),
``cache_entries(dir)``, ``walk(root)`` (lstat of every entry below a root, nothing read),
``run(cmd)`` (subprocess with a timeout and a readable failure).
"""

import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import time

import pfhelpers

FUSERMOUNT = shutil.which("fusermount3") or "/usr/bin/fusermount3"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def picklefs_path():
    return os.path.join(pfhelpers.BUILD, "fs", "picklefs")


_support = {}


def mount_support():
    """(kind, reason): kind None when mounting can be tested, "fail" when the binary is not
    built at all, "skip" when the binary has no mount feature yet or FUSE is missing here."""
    if "v" in _support:
        return _support["v"]
    exe = picklefs_path()
    if not os.access(exe, os.X_OK):
        v = ("fail", f"picklefs not built: {exe} (set PF_BUILD)")
    elif not os.path.exists("/dev/fuse"):
        v = ("skip", "no /dev/fuse on this machine")
    elif not os.access(FUSERMOUNT, os.X_OK):
        v = ("skip", "fusermount3 not installed")
    else:
        p = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=10)
        if "MOUNTPOINT" not in p.stdout + p.stderr:
            v = ("skip", f"{exe} has no mount feature yet (`picklefs --help` does not mention "
                         "MOUNTPOINT)")
        else:
            v = (None, None)
    _support["v"] = v
    return v


class Mount:
    def __init__(self, source, mountpoint, cache, log_path, proc):
        self.source = str(source)
        self.mountpoint = str(mountpoint)
        self.cache = str(cache)
        self.log_path = log_path
        self.proc = proc
        self.watchdog_fired = False

    def path(self, *parts):
        return os.path.join(self.mountpoint, *parts)

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_lines(self):
        return [ln for ln in self.log_text().splitlines() if ln.strip()]


def _fail(msg):
    raise AssertionError(msg)


def _unmount(mnt, tries_s=5.0):
    """fusermount3 -u, retried while busy; lazy unmount as the last resort. Returns an error
    text or None."""
    end = time.monotonic() + tries_s
    last = ""
    while True:
        p = subprocess.run([FUSERMOUNT, "-u", mnt], capture_output=True, text=True, timeout=30)
        if p.returncode == 0 or not os.path.ismount(mnt):
            return None
        last = p.stderr.strip()
        if time.monotonic() > end:
            break
        time.sleep(0.1)
    subprocess.run([FUSERMOUNT, "-uz", mnt], capture_output=True, timeout=30)
    return f"fusermount3 -u {mnt} kept failing ({last}); lazily unmounted"


def check_log(lines, expect=(), optional=()):
    """Problems (list of str) with the log lines against the declared expected lines."""
    problems = []
    exp = [re.compile(r) for r in expect]
    opt = [re.compile(r) for r in optional]
    for r in exp:
        n = sum(1 for ln in lines if r.search(ln))
        if n != 1:
            problems.append(f"expected exactly one log line matching /{r.pattern}/, found {n}")
    for r in opt:
        n = sum(1 for ln in lines if r.search(ln))
        if n > 1:
            problems.append(f"at most one log line may match /{r.pattern}/, found {n}")
    for ln in lines:
        if not any(r.search(ln) for r in exp + opt):
            problems.append(f"unexpected log line: {ln!r}")
    return problems


@contextlib.contextmanager
def mounted(source, mountpoint, cache, *, expect=(), optional=(), args=(), deadline=150.0,
            log_path=None, check_exit=True):
    """Foreground picklefs mount for the duration of the with-block (see module docstring)."""
    kind, why = mount_support()
    if kind is not None:
        _fail(why)
    mountpoint = str(mountpoint)
    os.makedirs(mountpoint, exist_ok=True)
    assert not os.path.ismount(mountpoint), f"{mountpoint} is already mounted"
    log_path = log_path or (mountpoint.rstrip("/") + ".log")
    cmd = [picklefs_path(), "-f", "-o", f"cache={cache}", *args, str(source), mountpoint]
    # XDG_CACHE_HOME points at an empty scratch dir so an ignored -o cache= shows up in the
    # cache checks instead of filling ~/.cache
    env = dict(os.environ, XDG_CACHE_HOME=str(cache) + ".xdg")
    logf = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env)
    logf.close()
    m = Mount(source, mountpoint, cache, log_path, proc)

    def fire():
        if proc.poll() is None:
            m.watchdog_fired = True
            proc.send_signal(signal.SIGKILL)

    dog = threading.Timer(deadline, fire)
    dog.daemon = True
    ok = False
    try:
        t0 = time.monotonic()
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None:
                _fail(f"{' '.join(cmd)} exited {proc.returncode} before the mount was ready; "
                      f"log:\n{m.log_text()}")
            if time.monotonic() - t0 > START_TIMEOUT:
                _fail(f"{mountpoint} not mounted {START_TIMEOUT:.0f} s after starting "
                      f"{' '.join(cmd)}; log:\n{m.log_text()}")
            time.sleep(0.02)
        dog.start()
        yield m
        ok = True
    finally:
        dog.cancel()
        problems = []
        if os.path.ismount(mountpoint):
            err = _unmount(mountpoint)
            if err:
                problems.append(err)
        try:
            rc = proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            rc = None
            problems.append(f"picklefs still running {STOP_TIMEOUT:.0f} s after fusermount3 -u "
                            "(killed)")
        if m.watchdog_fired:
            problems.append(f"watchdog: the mount was still up after {deadline:.0f} s (hung?); "
                            "picklefs was killed")
        elif rc is not None and rc != 0 and check_exit:
            problems.append(f"picklefs exited {rc} after fusermount3 -u (want 0)")
        if ok:
            problems += check_log(m.log_lines(), expect, optional)
            if problems:
                _fail("; ".join(problems) + f"\n--- picklefs log ({log_path}):\n{m.log_text()}")
        else:
            # the with-block failed already: keep its exception, show the log in captured output
            print(f"--- picklefs log ({log_path}):\n{m.log_text()}")
            for p in problems:
                print(p)


def cache_entries(cache):
    """Regular files below the index cache dir (relative paths, sorted)."""
    out = []
    for dirpath, _dirs, files in os.walk(cache):
        for f in files:
            full = os.path.join(dirpath, f)
            if os.path.isfile(full) and not os.path.islink(full):
                out.append(os.path.relpath(full, cache))
    return sorted(out)


def walk(root, errors=None):
    """{relative path: lstat result} for root ("") and every entry below it; reads no file.
    With an errors list, an entry that cannot be listed or stat'ed is recorded there as
    (relative path, exception) and the walk goes on; without one the error is raised."""
    out = {"": os.lstat(root)}
    stack = [""]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel) if rel else root
        try:
            names = sorted(os.listdir(full))
        except OSError as e:
            if errors is None:
                raise
            errors.append((rel, e))
            continue
        for name in names:
            r = f"{rel}/{name}" if rel else name
            try:
                st = os.lstat(os.path.join(root, r))
            except OSError as e:
                if errors is None:
                    raise
                errors.append((r, e))
                continue
            out[r] = st
            if stat.S_ISDIR(st.st_mode):
                stack.append(r)
    return out


def read_tree(root):
    """{relative path: ("d",) | ("f", bytes) | ("l", target)} for everything below root."""
    out = {}
    for rel, st in walk(root).items():
        if rel == "":
            continue
        full = os.path.join(root, rel)
        if stat.S_ISDIR(st.st_mode):
            out[rel] = ("d",)
        elif stat.S_ISLNK(st.st_mode):
            out[rel] = ("l", os.readlink(full))
        elif stat.S_ISREG(st.st_mode):
            with open(full, "rb") as f:
                out[rel] = ("f", f.read())
        else:
            out[rel] = ("?", stat.S_IFMT(st.st_mode))
    return out


def run(cmd, timeout=60, ok=True, **kw):
    """subprocess.run with captured text output; asserts exit 0 when ok."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{' '.join(map(str, cmd))} did not finish in {timeout} s") from e
    if ok:
        assert p.returncode == 0, (f"{' '.join(map(str, cmd))} exited {p.returncode}\n"
                                   f"stdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-2000:]}")
    return p


def write_file(path, data, flags=os.O_WRONLY | os.O_TRUNC):
    """Write like cp or `echo > f`: open, write, close; the errno of the step that failed, or 0
    (a commit through the mount reports its error from close)."""
    fd = os.open(path, flags)
    try:
        os.write(fd, data)
    except OSError as e:
        os.close(fd)
        return e.errno
    try:
        os.close(fd)
    except OSError as e:
        return e.errno
    return 0
