"""Bad-input cases for picklefs (reliability.md §T2, §T11) and the runner that feeds them to
`picklefs inspect`.

This module is imported by test_malformed.py and also runs as a script:

  /usr/bin/python3 malformed_cases.py batch          JSON case list on stdin -> JSON results on stdout
  /usr/bin/python3 malformed_cases.py torch-fixtures OUTDIR   tiny torch/pickle fixtures (needs torch)
  /usr/bin/python3 malformed_cases.py crafted OUTDIR [NAME...]   write the crafted cases (repro)
  /usr/bin/python3 malformed_cases.py seed-corpus CORPUSDIR TINYDIR   tests/fuzz/corpus seeds

The batch mode exists because forking from a process that has imported torch costs ~15 ms per
child against ~5 ms from a bare interpreter, and the prefix/bit-flip sweeps spawn ~8,000
children.  This module therefore never imports torch or numpy at module level.

Contract checked for every run (check_run):
  * the child exits 0 or 1 (no signal, no other status) within the timeout;
  * exit 1: stderr is exactly one line "picklefs: FILE: offset N: reason (code)" with
    N <= file size and a known code name, and not "out of memory" for an input under 64 MiB
    (limits must refuse a file long before the 1 GiB address-space cap);
  * exit 0: stdout is a JSON document with "format": "picklefs-meta";
  * the input file's sha256 is unchanged.
Children run with RLIMIT_AS = 1 GiB (not for sanitizer builds, which reserve terabytes of
shadow memory); their peak RSS comes from wait4().
"""

import hashlib
import json
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.realpath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PYTHON = "/usr/bin/python3"

AS_LIMIT = 1 << 30
TIMEOUT_S = 10.0
ERR_RE = re.compile(r"^picklefs: (?P<path>.*): offset (?P<off>\d+): (?P<msg>.*) \((?P<code>[a-z ]+)\)$")
CODES = {"truncated", "bad opcode", "bad stack", "bad memo", "limit", "out of memory", "bad zip",
         "bad format", "bad deflate", "unsupported"}


def load_json(text):
    """json.loads for meta.json documents nested up to max_depth (1000) containers."""
    if sys.getrecursionlimit() < 5000:
        sys.setrecursionlimit(5000)
    return json.loads(text)


def build_dir():
    return os.environ.get("PF_BUILD") or os.path.join(REPO, "build")


def shared_dir():
    return os.environ.get("PF_SHARED") or os.path.join(os.path.dirname(REPO), "shared")


def real_dir():
    return os.path.join(shared_dir(), "corpus", "real")


def picklefs_bin():
    return os.path.join(build_dir(), "fs", "picklefs")


_sanitized = {}


def is_sanitized(binary):
    """True when the binary was built with ASan/TSan/MSan (RLIMIT_AS would break it)."""
    if binary not in _sanitized:
        try:
            with open(binary, "rb") as f:
                blob = f.read()
            _sanitized[binary] = (b"__asan_init" in blob or b"__tsan_init" in blob
                                  or b"__msan_init" in blob)
        except OSError:
            _sanitized[binary] = False
    return _sanitized[binary]


# ---------------------------------------------------------------------------------------------
# Running one case

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _limit_as():
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def limit_self():
    """Apply the children's RLIMIT_AS to this process (the batch runner), so that children can be
    started with vfork instead of a fork + preexec_fn (2-3 ms less per child)."""
    if not is_sanitized(picklefs_bin()):
        _limit_as()


GNU_TIME = "/usr/bin/time"


def run_inspect(path, binary=None, timeout=TIMEOUT_S, keep_stdout=1 << 24, limit_as=True, exact_rss=False):
    """Run `picklefs inspect path`; returns a dict (see check_run).  limit_as=False when this
    process already runs under the limit (limit_self), which the child inherits.  exact_rss:
    run it under GNU time (when installed), whose %M is picklefs' own peak RSS, where wait4()
    also counts the pages of the Python process it was forked from."""
    binary = binary or picklefs_bin()
    before = sha256_file(path)
    argv = [binary, "inspect", path]
    timed = exact_rss and os.access(GNU_TIME, os.X_OK)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as errf, \
            tempfile.NamedTemporaryFile(prefix="pf-rss-") as rssf:
        if timed:
            argv = [GNU_TIME, "-f", "%M", "-o", rssf.name] + argv
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=errf, close_fds=True,
                             start_new_session=timed,
                             preexec_fn=_limit_as if limit_as and not is_sanitized(binary) else None)
        killed = []

        def kill():
            killed.append(True)
            try:
                if timed:
                    os.killpg(p.pid, signal.SIGKILL)
                else:
                    os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        wall = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        stdout_len = os.fstat(out.fileno()).st_size
        stdout = out.read(keep_stdout)
        errf.seek(0)
        stderr = errf.read(1 << 16)
        rc = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        maxrss = ru.ru_maxrss
        if timed and sig is None:
            # GNU time exits 128+N when picklefs dies of signal N and says so in its -o file
            lines = open(rssf.name).read().splitlines()
            m = re.match(r"Command terminated by signal (\d+)", lines[0]) if lines else None
            if m:
                rc, sig = None, int(m.group(1))
            if lines and lines[-1].isdigit():
                maxrss = int(lines[-1])
    return {
        "path": path,
        "size": os.path.getsize(path),
        "rc": rc,
        "signal": sig,
        "timed_out": bool(killed),
        "timeout": timeout,
        "wall": wall,
        "maxrss_kb": maxrss,
        "stdout_len": stdout_len,
        "stdout": stdout.decode("utf-8", "replace"),
        "stderr": stderr.decode("utf-8", "replace"),
        "sha_changed": sha256_file(path) != before,
    }


def check_run(r):
    """Problems with one run against the contract in the module docstring (empty list: fine).
    Adds r["outcome"]: "ok" or the error code name, and r["offset"] / r["msg"] on errors."""
    problems = []
    if r["timed_out"]:
        problems.append("timed out after %.0f s" % r.get("timeout", TIMEOUT_S))
    if r["signal"] is not None:
        problems.append("killed by signal %d (%s)" % (r["signal"], signal.Signals(r["signal"]).name))
    elif r["rc"] not in (0, 1):
        problems.append("exit status %r" % r["rc"])
    if r["sha_changed"]:
        problems.append("input file was modified")
    r["outcome"] = None
    if r["rc"] == 1:
        lines = r["stderr"].splitlines()
        m = ERR_RE.match(lines[0]) if len(lines) == 1 else None
        if len(lines) != 1 or not r["stderr"].endswith("\n"):
            problems.append("stderr is not exactly one line: %r" % r["stderr"][:500])
        elif not m:
            problems.append("stderr line does not match 'offset N: reason (code)': %r" % lines[0])
        else:
            r["offset"] = int(m.group("off"))
            r["msg"] = m.group("msg")
            r["outcome"] = m.group("code")
            if m.group("code") not in CODES:
                problems.append("unknown error code %r" % m.group("code"))
            if r["offset"] > r["size"]:
                problems.append("offset %d is past the end of the %d-byte file" % (r["offset"], r["size"]))
            if not m.group("msg").strip():
                problems.append("empty reason")
            if m.group("code") == "out of memory" and r["size"] < (64 << 20):
                # the limits must refuse a file long before 1 GiB; "out of memory" for a small
                # input is a missing limit or a mislabelled error
                problems.append("'out of memory' for a %d-byte input" % r["size"])
    elif r["rc"] == 0:
        r["outcome"] = "ok"
        if r["stdout_len"] > len(r["stdout"].encode()):
            pass  # too large to keep; the caller bounds sizes where it matters
        else:
            try:
                doc = load_json(r["stdout"])
                if doc.get("format") != "picklefs-meta":
                    problems.append("meta.json has no \"format\": \"picklefs-meta\"")
            except ValueError as e:
                problems.append("stdout is not JSON: %s" % e)
        if r["stderr"]:
            problems.append("exit 0 but stderr: %r" % r["stderr"][:300])
    return problems


# ---------------------------------------------------------------------------------------------
# Batches: many derived inputs of a few source files, run in a thread pool.
#
# A case is {"id": str, "src": path, "op": "whole" | "prefix" | "flip", "n": int}:
#   prefix: the first n bytes of src;  flip: src with bit n (byte n // 8, bit n % 8) inverted;
#   "keep_stdout": true returns the child's stdout (meta.json) too;
#   "exact_rss": true measures picklefs' peak RSS with GNU time (one more exec per case).
#
# Peak RSS: wait4() reports the larger of the child's own peak and the RSS of the process it
# was forked from, so children are best started from this small runner; values near the
# runner's own ~20-30 MiB are upper bounds, larger ones are picklefs' own peak.

def case_bytes(case, cache):
    src = case["src"]
    if src not in cache:
        with open(src, "rb") as f:
            cache[src] = f.read()
    data = cache[src]
    op = case["op"]
    if op == "whole":
        return data
    if op == "prefix":
        return data[:case["n"]]
    if op == "flip":
        b = bytearray(data)
        b[case["n"] // 8] ^= 1 << (case["n"] % 8)
        return bytes(b)
    raise ValueError(op)


def run_batch(cases, workers=None, binary=None, keep_outputs=False, limit_as=True):
    """Run the cases; returns a list of compact result dicts in case order."""
    workers = workers or max(2, min(4, 2 * (os.cpu_count() or 1)))
    cache = {}
    lock = threading.Lock()
    tmp = tempfile.mkdtemp(prefix="pf-malformed-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    local = threading.local()

    def one(case):
        if not hasattr(local, "path"):
            local.path = os.path.join(tmp, "case-%d" % threading.get_ident())
        if case["op"] != "whole":  # "whole" runs on src itself (which must not change)
            with lock:
                data = case_bytes(case, cache)
            with open(local.path, "wb") as f:
                f.write(data)
        r = run_inspect(local.path if case["op"] != "whole" else case["src"], binary=binary,
                        limit_as=limit_as, exact_rss=bool(case.get("exact_rss")))
        problems = check_run(r)
        res = {"id": case["id"], "problems": problems, "outcome": r["outcome"], "rc": r["rc"],
               "signal": r["signal"], "wall": r["wall"], "maxrss_kb": r["maxrss_kb"],
               "stdout_len": r["stdout_len"], "offset": r.get("offset"), "msg": r.get("msg"),
               "stderr": r["stderr"][:2000]}
        if keep_outputs or case.get("keep_stdout"):
            res["stdout"] = r["stdout"]
        return res

    try:
        with ThreadPoolExecutor(max_workers=workers) as ex:
            return list(ex.map(one, cases))
    finally:
        for n in os.listdir(tmp):
            os.unlink(os.path.join(tmp, n))
        os.rmdir(tmp)


def run_batch_subprocess(cases, timeout=900):
    """run_batch in a fresh interpreter (cheap forks whatever the test process imported)."""
    p = subprocess.run([PYTHON, os.path.realpath(__file__), "batch"], input=json.dumps(cases).encode(),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                       env=dict(os.environ, PF_BUILD=build_dir(), PF_SHARED=shared_dir()))
    if p.returncode != 0:
        raise RuntimeError("batch runner failed (%d): %s" % (p.returncode, p.stderr.decode()[-3000:]))
    return json.loads(p.stdout)


def prefix_cases(src, tag, max_all=4096, spaced=512):
    """Every prefix length 0..size-1 for files <= max_all bytes, else `spaced` evenly spaced ones."""
    size = os.path.getsize(src)
    if size <= max_all:
        lengths = range(size)
    else:
        lengths = sorted({i * size // spaced for i in range(spaced)})
    return [{"id": "%s[:%d]" % (tag, n), "src": src, "op": "prefix", "n": n} for n in lengths]


def flip_cases(src, tag, count=1024, seed=0x5eed):
    import random
    size = os.path.getsize(src)
    rng = random.Random("%s:%d" % (tag, seed))
    bits = sorted(rng.sample(range(size * 8), min(count, size * 8)))
    return [{"id": "%s^bit%d" % (tag, b), "src": src, "op": "flip", "n": b} for b in bits]


# ---------------------------------------------------------------------------------------------
# A small pickle assembler (opcodes as bytes; no Python object is ever pickled)

def u8(n):
    return struct.pack("<B", n)


def u32(n):
    return struct.pack("<I", n)


def i32(n):
    return struct.pack("<i", n)


def u64(n):
    return struct.pack("<Q", n)


PROTO2 = b"\x80\x02"
MARK, STOP, POP, DUP, TUPLE, LIST, DICT = b"(", b".", b"0", b"2", b"t", b"l", b"d"
EMPTY_LIST, EMPTY_DICT, EMPTY_TUPLE = b"]", b"}", b")"
APPEND, APPENDS, SETITEM, SETITEMS, REDUCE, BUILD = b"a", b"e", b"s", b"u", b"R", b"b"
NEWFALSE, NEWTRUE, NONE, BINPERSID, MEMOIZE = b"\x89", b"\x88", b"N", b"Q", b"\x94"
TUPLE1, TUPLE2, TUPLE3 = b"\x85", b"\x86", b"\x87"


def pint(n):
    if 0 <= n < 256:
        return b"K" + u8(n)
    if 0 <= n < 65536:
        return b"M" + struct.pack("<H", n)
    if -(1 << 31) <= n < (1 << 31):
        return b"J" + i32(n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + u8(len(raw)) + raw


def pstr(s):
    b = s.encode() if isinstance(s, str) else s
    return b"X" + u32(len(b)) + b


def pglobal(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def put(i):
    return b"q" + u8(i) if i < 256 else b"r" + u32(i)


def get(i):
    return b"h" + u8(i) if i < 256 else b"j" + u32(i)


def ptuple(*items):
    return MARK + b"".join(items) + TUPLE


def storage_pid(stype, key, numel, location="cpu", legacy=False):
    """The persistent id torch writes: ('storage', torch.<stype>, key, location, numel), and in
    legacy files a sixth field, the view (None)."""
    return ptuple(pstr("storage"), pglobal("torch", stype), pstr(key), pstr(location), pint(numel),
                  *([NONE] if legacy else [])) + BINPERSID


def rebuild_v2(pid, offset, shape, stride):
    return (pglobal("torch._utils", "_rebuild_tensor_v2")
            + ptuple(pid, pint(offset), ptuple(*map(pint, shape)), ptuple(*map(pint, stride)), NEWFALSE,
                     pglobal("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE)
            + REDUCE)


def state_dict_pickle(tensors, location="cpu", legacy=False):
    """An OrderedDict state_dict pickle as torch.save writes it (protocol 2).
    tensors: [(name, stype, key, numel, offset, shape, stride)]."""
    body = b"".join(pstr(name) + rebuild_v2(storage_pid(st, key, numel, location, legacy), off, shape, stride)
                    for name, st, key, numel, off, shape, stride in tensors)
    return (PROTO2 + pglobal("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
            + (MARK + body + SETITEMS if tensors else b"") + STOP)


LEGACY_MAGIC = PROTO2 + b"\x8a\x0a" + bytes([0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]) + STOP
LEGACY_VERSION = PROTO2 + b"M\xe9\x03" + STOP
LEGACY_SYSINFO = (PROTO2 + EMPTY_DICT + MARK + pstr("protocol_version") + b"M\xe9\x03"
                  + pstr("little_endian") + NEWTRUE + pstr("type_sizes") + EMPTY_DICT
                  + MARK + pstr("short") + pint(2) + pstr("int") + pint(4) + pstr("long") + pint(4)
                  + SETITEMS + SETITEMS + STOP)


def legacy_file(obj_pickle, keys, sections, magic=LEGACY_MAGIC):
    """magic, 1001, sys_info, the object, the key list, then (int64 count + raw bytes) per section."""
    p5 = PROTO2 + EMPTY_LIST + (MARK + b"".join(pstr(k) for k in keys) + APPENDS if keys else b"") + STOP
    raw = b"".join(struct.pack("<q", count) + data for count, data in sections)
    return magic + LEGACY_VERSION + LEGACY_SYSINFO + obj_pickle + p5 + raw


# The tensors of the crafted baselines: w = arange(4) float32, b = [1.5] float64.
W_DATA = struct.pack("<4f", 0, 1, 2, 3)
B_DATA = struct.pack("<d", 1.5)
BASE_TENSORS = [("w", "FloatStorage", "0", 4, 0, (4,), (1,)),
                ("b", "DoubleStorage", "1", 1, 0, (1,), (1,))]


# ---------------------------------------------------------------------------------------------
# A zip model that reads and writes torch-style zips field by field

class Entry:
    def __init__(self, name, data, method=0, flags=0x0808, align=64):
        self.data = data
        self.usize = len(data)
        self.crc = zlib.crc32(data) & 0xffffffff
        if method == 8:
            co = zlib.compressobj(9, zlib.DEFLATED, -15)
            self.data = co.compress(data) + co.flush()
        n = name.encode() if isinstance(name, str) else name
        # local header
        self.l_ver, self.l_flags, self.l_method, self.l_time, self.l_date = 0, flags, method, 0, 0
        self.l_crc, self.l_csize, self.l_usize = 0, 0, 0      # bit 3: sizes in the descriptor
        self.l_sig = b"PK\3\4"
        self.l_name = n
        self.skip_local = False                               # central entry only (overlaps)
        self.l_extra = None                                   # None: torch's "FB" alignment padding
        self.align = align
        # central directory
        self.c_made, self.c_ver, self.c_flags, self.c_method = 0x031e, 0x2d, flags, method
        self.c_time = self.c_date = 0
        self.c_crc, self.c_csize, self.c_usize = self.crc, len(self.data), self.usize
        self.c_name, self.c_extra, self.c_comment = n, b"", b""
        self.c_disk, self.c_iattr, self.c_eattr = 0, 0, 0
        self.c_offset = None                                  # None: where it was written
        self.descriptor = None                                # None: PK\7\8 crc csize usize (bit 3)
        self.trailer = b""                                    # bytes after the descriptor
        self.offset = None

    def local_header(self, at):
        extra = self.l_extra
        if extra is None:
            base = at + 30 + len(self.l_name) + 4
            pad = (-base) % self.align if self.align else 0
            extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
        return (self.l_sig + struct.pack("<HHHHHIIIHH", self.l_ver, self.l_flags, self.l_method, self.l_time,
                                         self.l_date, self.l_crc, self.l_csize, self.l_usize,
                                         len(self.l_name), len(extra)) + self.l_name + extra)

    def desc(self):
        if self.descriptor is not None:
            return self.descriptor
        if not self.l_flags & 8:
            return b""
        return b"PK\7\x08" + struct.pack("<III", self.crc, len(self.data), self.usize)

    def central(self):
        off = (self.offset or 0) if self.c_offset is None else self.c_offset
        return (b"PK\1\2" + struct.pack("<HHHHHHIIIHHHHHII", self.c_made, self.c_ver, self.c_flags,
                                         self.c_method, self.c_time, self.c_date, self.c_crc,
                                         self.c_csize & 0xffffffff, self.c_usize & 0xffffffff,
                                         len(self.c_name), len(self.c_extra), len(self.c_comment),
                                         self.c_disk, self.c_iattr, self.c_eattr, off & 0xffffffff)
                + self.c_name + self.c_extra + self.c_comment)


class Zip:
    def __init__(self, entries, zip64=True):
        self.entries = entries
        self.zip64 = zip64
        self.prefix_data = b""
        self.eocd = {}      # overrides: n_disk, n_total, cd_size, cd_off, comment
        self.z64 = {}       # overrides of the zip64 end record: n_disk, n_total, cd_size, cd_off

    def serialize(self):
        out = bytearray(self.prefix_data)
        for e in self.entries:
            if e.skip_local:
                continue
            e.offset = len(out)
            out += e.local_header(len(out)) + e.data + e.desc() + e.trailer
        cd_off = len(out)
        for e in self.entries:
            if not getattr(e, "skip_central", False):
                out += e.central()
        cd_size = len(out) - cd_off
        n = sum(1 for e in self.entries if not getattr(e, "skip_central", False))
        if self.zip64:
            z = dict(n_disk=n, n_total=n, cd_size=cd_size, cd_off=cd_off)
            z.update(self.z64)
            z64_off = len(out)
            out += b"PK\6\6" + struct.pack("<QHHIIQQQQ", 44, 0x031e, 0x2d, 0, 0, z["n_disk"], z["n_total"],
                                           z["cd_size"], z["cd_off"])
            out += b"PK\6\7" + struct.pack("<IQI", 0, z64_off, 1)
        e = dict(n_disk=n, n_total=n, cd_size=cd_size, cd_off=cd_off, comment=b"")
        e.update(self.eocd)
        out += b"PK\5\6" + struct.pack("<HHHHIIH", 0, 0, e["n_disk"] & 0xffff, e["n_total"] & 0xffff,
                                       e["cd_size"] & 0xffffffff, e["cd_off"] & 0xffffffff,
                                       len(e["comment"])) + e["comment"]
        return bytes(out)

    def find(self, suffix):
        for e in self.entries:
            if e.c_name.endswith(suffix.encode()):
                return e
        raise KeyError(suffix)


def torch_zip(records, prefix="archive"):
    """A zip laid out as torch 1.13 writes it: stored, flags 0x808, 64-byte aligned, zip64 ends."""
    return Zip([Entry("%s/%s" % (prefix, rel) if prefix is not None else rel, data)
                for rel, data in records])


def baseline_records(pkl=None):
    return [("data.pkl", pkl if pkl is not None else state_dict_pickle(BASE_TENSORS)),
            ("data/0", W_DATA), ("data/1", B_DATA), ("version", b"3\n")]


def baseline_zip(pkl=None):
    return torch_zip(baseline_records(pkl))


def baseline_legacy():
    return legacy_file(state_dict_pickle(BASE_TENSORS, legacy=True), ["0", "1"], [(4, W_DATA), (1, B_DATA)])


# ---------------------------------------------------------------------------------------------
# Crafted cases.  Each: (name, bytes, expectation)
#   expectation ("error", code, regex on the reason)   - exit 1 with that code and reason
#   expectation ("ok", predicate(meta_dict, stdout_text) -> bool, what)   - exit 0 and predicate

def err(code, words, offset=None):
    """exit 1, the code matching `code`, the reason matching `words`; offset: the exact byte offset,
    or "nonzero" for errors found deep in a file (0 would point nowhere useful)."""
    return ("error", code, words, offset)


def ok_or_err(codes, words, what):
    """Either accepted, or an error with a code matching `codes` (e.g. not "out of memory")."""
    return ("ok-or-error", codes, words, what)


def ok(pred=lambda meta, text: True, what="accepted"):
    return ("ok", pred, what)


def _walk(v):
    yield v
    if isinstance(v, dict):
        for x in v.values():
            yield from _walk(x)
    elif isinstance(v, list):
        for x in v:
            yield from _walk(x)


def tensors_of(meta):
    return [v for v in _walk(meta.get("root")) if isinstance(v, dict) and "tensor" in v]


def has_tensors(*names):
    def pred(meta, text):
        return sorted(t["tensor"] for t in tensors_of(meta)) == sorted(names)
    return pred


def is_container(kind, pred=None):
    def p(meta, text):
        return meta.get("container") == kind and (pred is None or pred(meta, text))
    return p


def pickle_cases():
    cases = []
    add = lambda name, data, exp: cases.append((name, data, exp))  # noqa: E731

    # memo
    add("memo-get-ffffffff", PROTO2 + b"j\xff\xff\xff\xff" + STOP, err("bad memo", r"memo index 4294967295 was never PUT", 2))
    add("memo-put-get-ffffffff", PROTO2 + NONE + b"r\xff\xff\xff\xff" + b"j\xff\xff\xff\xff" + STOP,
        ok(lambda m, t: m["root"] is None, "sparse memo index: one entry, root None"))
    add("memo-1e6-memoize", b"\x80\x04" + EMPTY_LIST + MEMOIZE * 1000000 + STOP,
        ok(lambda m, t: m["root"] == [], "10^6 MEMOIZE, exactly max_memo"))
    add("memo-1e6+1-memoize", b"\x80\x04" + EMPTY_LIST + MEMOIZE * 1000001 + STOP,
        err("limit", r"max_memo", 3 + 1000000))
    add("memo-1e6-distinct-puts", PROTO2 + NONE + b"".join(b"r" + u32(i * 4099) for i in range(1000000)) + STOP,
        ok(lambda m, t: m["root"] is None, "10^6 sparse PUTs"))
    add("memo-1e6+1-distinct-puts",
        PROTO2 + NONE + b"".join(b"r" + u32(i * 4099) for i in range(1000001)) + STOP,
        err("limit", r"max_memo"))
    add("memo-same-index-1e6", PROTO2 + NONE + b"r\0\0\0\0" * 1000000 + STOP,
        ok(lambda m, t: m["root"] is None, "one memo slot rewritten 10^6 times"))

    # billion laughs, 40 levels of 10 shared references (10^40 leaves if expanded)
    laugh = PROTO2 + pstr("lol") + put(0)
    for lvl in range(1, 41):
        laugh += POP + MARK + get(lvl - 1) * 10 + LIST + put(lvl)
    add("billion-laughs-get", laugh + STOP,
        ok(lambda m, t: len(t) < 200000 and '"ref"' in t, "shared lists shown as refs, output bounded"))
    dup = PROTO2 + MARK * 40 + pstr("lol") + (DUP * 9 + LIST) * 40 + STOP
    add("billion-laughs-dup", dup,
        ok(lambda m, t: len(t) < 200000 and '"ref"' in t, "shared lists shown as refs, output bounded"))
    # the same inside a dict of tensors' neighbour: a laughs list next to a real state_dict is
    # covered by the zip cases below (laughs-in-zip)

    # deep nesting
    add("mark-bomb-100010", PROTO2 + MARK * 100010 + NONE + STOP, err("limit", r"max_stack", 2 + 100000))
    add("nested-lists-by-mark-50000", PROTO2 + MARK * 50000 + LIST * 50000 + STOP,
        err("limit", r"max_depth", "nonzero"))
    chain = bytearray(b"\x80\x04" + EMPTY_LIST + MEMOIZE + POP)
    for i in range(1, 100000):
        chain += EMPTY_LIST + MEMOIZE + POP + get(i - 1) + get(i) + APPEND + POP
    add("append-chain-via-memo-1e5", bytes(chain + get(0) + STOP), err("limit", r"max_depth", "nonzero"))
    add("dict-chain-via-memo-1e5",
        bytes(b"\x80\x04" + EMPTY_DICT + MEMOIZE + POP + b"".join(
            EMPTY_DICT + MEMOIZE + POP + get(i - 1) + pstr("k") + get(i) + SETITEM + POP
            for i in range(1, 100000)) + get(0) + STOP),
        err("limit", r"max_depth", "nonzero"))
    add("self-referencing-list", PROTO2 + EMPTY_LIST + put(0) + get(0) + APPEND + STOP,
        ok(lambda m, t: '"ref"' in t, "cycle shown as a ref"))
    add("tuple-1000-deep", PROTO2 + NONE + TUPLE1 * 998 + STOP, ok(what="depth just under max_depth"))

    # output amplification: meta.json must stay bounded by the input (T11: "never expand more
    # than the bytes actually present"), or the file must be refused with a limit error
    bounded = ("ok-or-limit", 48 << 20)  # pf_limits.h max_meta (32 MiB, an estimate) + slack
    add("meta-depth-amplification", PROTO2 + EMPTY_LIST + (NONE + APPEND) * 20000 + TUPLE1 * 990 + STOP, bounded)
    s10k = pstr("A" * 10000)
    add("meta-shared-str-expansion", PROTO2 + EMPTY_LIST + s10k + put(0) + APPEND
        + (get(0) + APPEND) * 10000 + STOP, bounded)
    add("meta-shared-bytes-expansion", b"\x80\x03" + EMPTY_LIST + b"B" + u32(10000) + b"A" * 10000 + put(0)
        + APPEND + (get(0) + APPEND) * 100000 + STOP, bounded)

    # huge length prefixes
    for op, name in ((b"\x8e", "BINBYTES8"), (b"\x8d", "BINUNICODE8"), (b"\x96", "BYTEARRAY8")):
        for n in (1 << 63, (1 << 64) - 1):
            add("%s-len-%x" % (name, n), b"\x80\x05" + op + u64(n) + b"abc" + STOP,
                err("truncated", r"need \d+ bytes|bytes, \d+ left|left"))
    add("BINBYTES-len-ffffffff", b"\x80\x03B\xff\xff\xff\xff" + b"abc" + STOP, err("truncated", r"left"))
    add("BINUNICODE-len-ffffffff", PROTO2 + b"X\xff\xff\xff\xff" + b"abc" + STOP, err("truncated", r"left"))
    add("LONG4-7fffffff", PROTO2 + b"\x8b\xff\xff\xff\x7f" + b"\x01\x02" + STOP, err("truncated", r"left"))
    add("LONG4-negative", PROTO2 + b"\x8b\xff\xff\xff\xff" + b"\x01\x02" + STOP,
        err("bad format", r"LONG4 has negative byte count", 2))
    add("LONG4-min", PROTO2 + b"\x8b\x00\x00\x00\x80" + STOP, err("bad format", r"LONG4 has negative byte count"))
    add("BINSTRING-negative", PROTO2 + b"T\xfe\xff\xff\xff" + b"ab" + STOP,
        err("bad format", r"BINSTRING has negative byte count", 2))
    add("FRAME-past-eof", b"\x80\x04\x95" + u64(1000) + NONE + STOP, err("truncated", r"FRAME of 1000 bytes", 11))
    add("FRAME-2^64-1", b"\x80\x04\x95" + u64((1 << 64) - 1) + NONE + STOP, err("truncated", r"FRAME of"))
    add("PROTO-6", b"\x80\x06N.", err("unsupported", r"protocol 6"))

    # buffers, stack, opcodes
    add("NEXT_BUFFER", b"\x80\x05\x97" + STOP,
        ok(lambda m, t: m["root"] == {"out_of_band_buffer": True}, "inert out-of-band buffer node"))
    add("NEXT_BUFFER-readonly-in-frombuffer",
        b"\x80\x05" + pglobal("numpy.core.numeric", "_frombuffer") + MARK + b"\x97\x98"
        + pglobal("numpy", "dtype") + pstr("f4") + NEWFALSE + NEWTRUE + TUPLE3 + REDUCE
        + ptuple(pint(2)) + pstr("C") + TUPLE + REDUCE + STOP,
        ok(lambda m, t: not tensors_of(m), "an out-of-band array has no data in the file: no tensor"))
    add("nonempty-stack-at-STOP", PROTO2 + pint(1) + pint(2) + pint(3) + STOP,
        ok(lambda m, t: m["root"] == 3, "STOP returns the top, as CPython does"))
    add("stacked-pickles", PROTO2 + pint(7) + STOP + PROTO2 + pglobal("os", "system") + STOP,
        ok(lambda m, t: m["root"] == 7 and "os" not in t, "bytes after STOP are not read"))
    add("STOP-on-empty-stack", PROTO2 + STOP, err("bad stack", r"underflow", 2))
    # MARK on an empty stack, then an opcode that takes the marked items (none): fine for
    # Python; fuzz_pickle found that the codec computed NULL + 0 here (UBSan pointer-overflow)
    add("MARK-TUPLE-on-empty-stack", b"(t.", ok(lambda m, t: m["root"] == {"tuple": []}, "empty tuple"))
    add("MARK-LIST-on-empty-stack", PROTO2 + b"(l.", ok(lambda m, t: m["root"] == [], "empty list"))
    add("MARK-INST-on-empty-stack", b"(ios\nsystem\n.", ok(lambda m, t: "os.system" in t, "INST shown inert"))
    add("unknown-opcode-ff", PROTO2 + pint(1) + b"\xff" + STOP, err("bad opcode", r"invalid opcode 0xff", 4))
    add("unknown-opcode-00", PROTO2 + b"\x00" + STOP, err("bad opcode", r"invalid opcode 0x00", 2))
    add("APPEND-to-int", PROTO2 + pint(1) + pint(2) + APPEND + STOP, err("bad stack", r"APPEND"))
    add("SETITEMS-odd", PROTO2 + EMPTY_DICT + MARK + pint(1) + SETITEMS + STOP, err("bad stack", r"odd"))
    add("POP_MARK-without-MARK", PROTO2 + pint(1) + b"1" + STOP, err("bad stack", r"MARK"))
    add("no-STOP", PROTO2 + pint(1), err("truncated", r"need 1 bytes", 4))
    add("GLOBAL-name-too-long", PROTO2 + b"c" + b"m" * 5000 + b"\nx\n" + STOP, err("bad format|limit", r"max_name_len"))
    add("GLOBAL-without-newline", PROTO2 + b"cos", err("truncated", r"newline"))
    # GLOBAL / INST names are UTF-8 in Python 3 (pickle decodes them); a name that is not must
    # give a format error at the opcode (or be shown escaped) - not "out of memory" at offset 0
    not_nomem = "bad format|bad opcode|unsupported|bad stack"
    add("GLOBAL-name-not-utf8", PROTO2 + b"cos\nsys\xeftem\n" + STOP,
        ok_or_err(not_nomem, r"UTF-8|utf-8|ASCII|name", "GLOBAL name with a byte 0xef"))
    add("GLOBAL-name-not-utf8-called", PROTO2 + b"cos\nsys\xeftem\n" + EMPTY_TUPLE + REDUCE + STOP,
        ok_or_err(not_nomem, r"UTF-8|utf-8|ASCII|name", "REDUCE of a GLOBAL named with a byte 0xef"))
    add("STACK_GLOBAL-name-not-utf8", b"\x80\x04" + pstr(b"os") + pstr(b"sys\xeftem") + b"\x93" + STOP,
        ok_or_err(not_nomem, r"UTF-8|utf-8|ASCII|name", "STACK_GLOBAL of a str with a byte 0xef"))
    add("dict-key-not-utf8", PROTO2 + EMPTY_DICT + pstr(b"\xff\xfe") + pint(1) + SETITEM + STOP,
        ok_or_err(not_nomem, r"UTF-8|utf-8", "dict key with invalid UTF-8"))
    return cases


def never_execute_cases(marker):
    """REDUCE of os.system / posix.system must stay inert data (exit 0, the name verbatim)."""
    cmd = "touch %s" % marker
    cases = []
    for mod in ("os", "posix"):
        call = pglobal(mod, "system") + pstr(cmd) + TUPLE1 + REDUCE
        name = "%s.system" % mod
        shown = (lambda name: lambda m, t: name in t and cmd in t)(name)
        cases.append(("exec-%s-pickle" % mod, PROTO2 + call + STOP, ok(shown, "%s shown inert" % name)))
        # inside a torch.save zip (data.pkl) and a legacy file, next to a real tensor
        pkl = (PROTO2 + EMPTY_DICT + MARK + pstr("w")
               + rebuild_v2(storage_pid("FloatStorage", "0", 4), 0, (4,), (1,))
               + pstr("payload") + call + SETITEMS + STOP)
        z = torch_zip([("data.pkl", pkl), ("data/0", W_DATA), ("version", b"3\n")])
        cases.append(("exec-%s-zip" % mod, z.serialize(), ok(shown, "%s shown inert" % name)))
        cases.append(("exec-%s-legacy" % mod, legacy_file(pkl, ["0"], [(4, W_DATA)]),
                      ok(shown, "%s shown inert" % name)))
    # the BUILD / __setstate__ and NEWOBJ / OBJ / INST paths
    cases.append(("exec-INST", PROTO2 + MARK + pstr(cmd) + b"ios\nsystem\n" + STOP,
                  ok(lambda m, t: "os.system" in t, "INST shown inert")))
    cases.append(("exec-OBJ", PROTO2 + MARK + pglobal("os", "system") + pstr(cmd) + b"o" + STOP,
                  ok(lambda m, t: "os.system" in t, "OBJ shown inert")))
    cases.append(("exec-STACK_GLOBAL", b"\x80\x04" + pstr("os") + pstr("system") + b"\x93" + pstr(cmd)
                  + TUPLE1 + REDUCE + STOP, ok(lambda m, t: "os.system" in t, "STACK_GLOBAL shown inert")))
    return cases


def _zip_variant(mutate, pkl=None, records=None):
    z = torch_zip(records) if records is not None else baseline_zip(pkl)
    mutate(z)
    return z.serialize()


def _set(obj, **kw):
    for k, v in kw.items():
        setattr(obj, k, v)


def zip_cases():
    cases = []
    add = lambda name, data, exp: cases.append((name, data, exp))  # noqa: E731
    both = has_tensors("w.npy", "b.npy")

    add("zip-baseline", baseline_zip().serialize(), ok(is_container("torch-zip", both), "baseline: 2 tensors"))
    add("zip-baseline-no-zip64", _zip_variant(lambda z: _set(z, zip64=False)),
        ok(is_container("torch-zip", both), "classic end record only"))

    # flag bits
    def flags(bits, where):
        def m(z):
            e = z.find("data/0")
            if "c" in where:
                e.c_flags |= bits
            if "l" in where:
                e.l_flags |= bits
        return m
    add("zip-flag-0x1-encrypted", _zip_variant(flags(0x1, "cl")), err("bad zip", r"encrypted"))
    add("zip-flag-0x1-central-only", _zip_variant(flags(0x1, "c")), err("bad zip", r"encrypted"))
    add("zip-flag-0x1-local-only", _zip_variant(flags(0x1, "l")), err("bad zip", r"encrypted|local header"))
    add("zip-flag-0x40-strong-encryption", _zip_variant(flags(0x41, "cl")), err("bad zip", r"encrypted"))
    add("zip-flag-0x20-patch", _zip_variant(flags(0x20, "cl")), err("bad zip", r"patch"))

    # central vs local
    add("zip-local-name-mismatch",
        _zip_variant(lambda z: _set(z.find("data/0"), l_name=b"archive/data/9")),
        err("bad zip", r"local header name differs"))
    add("zip-local-method-mismatch", _zip_variant(lambda z: _set(z.find("data/0"), l_method=8)),
        err("bad zip", r"method differs"))
    add("zip-local-crc-mismatch-no-bit3",
        _zip_variant(lambda z: _set(z.find("data/0"), l_flags=0, c_flags=0, l_crc=1, l_csize=16, l_usize=16)),
        err("bad zip", r"CRC-32 differs"))
    add("zip-local-size-mismatch-no-bit3",
        _zip_variant(lambda z: _set(z.find("data/0"), l_flags=0, c_flags=0,
                                    l_crc=zlib.crc32(W_DATA), l_csize=15, l_usize=15)),
        err("bad zip", r"sizes differ"))
    add("zip-no-bit3-consistent",
        _zip_variant(lambda z: [_set(e, l_flags=0, c_flags=0, l_crc=e.crc, l_csize=len(e.data),
                                     l_usize=e.usize) for e in z.entries]),
        ok(is_container("torch-zip", both), "sizes in the local header instead of a descriptor"))
    add("zip-bad-local-signature",
        _zip_variant(lambda z: _set(z.find("data/1"), l_sig=b"PK\3\5")),
        err("bad zip", r"signature"))

    # names
    def dup(z):
        e = z.find("data/1")
        e.l_name = e.c_name = b"archive/data/0"
    add("zip-duplicate-names", _zip_variant(dup), err("bad zip", r"duplicate entry name"))
    for tag, name, words in (("dotdot", b"archive/../x", r"\.\."), ("dotdot-deep", b"archive/data/../../x", r"\.\."),
                             ("absolute", b"/abs", r"absolute|prefix"), ("backslash", b"archive\\data\\0", r"backslash|prefix"),
                             ("backslash-inner", b"archive/data\\0", r"backslash"),
                             ("nul", b"archive/da\0ta/0", r"NUL"), ("empty", b"", r"empty"),
                             ("bad-utf8-bit11", None, r"UTF-8")):
        def m(z, name=name):
            e = z.find("data/0")
            if name is None:
                e.l_name = e.c_name = b"archive/data/\xff\xfe"
                e.l_flags |= 0x800
                e.c_flags |= 0x800
            else:
                e.l_name = e.c_name = name
        add("zip-name-%s" % tag, _zip_variant(m), err("bad zip", words))
    add("zip-name-too-long", _zip_variant(lambda z: _set(z.find("data/1"), l_name=b"archive/" + b"x" * 5000,
                                                        c_name=b"archive/" + b"x" * 5000)),
        err("bad zip|limit", r"max_name_len"))
    add("zip-first-entry-without-slash",
        torch_zip([("data.pkl", state_dict_pickle([]))], prefix=None).serialize(),
        err("bad zip", r"no <prefix>/ folder"))
    add("zip-second-prefix",
        _zip_variant(lambda z: _set(z.find("data/1"), l_name=b"other/data/1", c_name=b"other/data/1")),
        err("bad zip", r"outside the archive prefix"))

    # overlaps and bounds
    add("zip-overlap-quoted", _quoted_overlap(), err("bad zip", r"overlap"))
    add("zip-overlap-same-header", _same_header_overlap(), err("bad zip", r"overlap|differs|duplicate"))
    add("zip-entry-header-past-eof", _zip_variant(lambda z: _set(z.find("data/1"), c_offset=1 << 31)),
        err("bad zip", r"not before the central directory"))
    add("zip-entry-size-past-eof",
        _zip_variant(lambda z: _set(z.find("data/1"), c_csize=100000, c_usize=100000)),
        err("bad zip", r"past the end|central directory|outside"))
    # content detection: anything not starting with PK\3\4 is read as a pickle
    add("zip-junk-prefix", _zip_variant(lambda z: _set(z, prefix_data=b"\0" * 64)),
        err("bad opcode", r"invalid opcode 0x00"))
    add("zip-orphan-local-header-first", _orphan_first(), err("bad zip", r"before the first local header"))
    add("zip-pk78-prefix", _zip_variant(lambda z: _set(z, prefix_data=b"PK\7\x08" + b"\0" * 12)),
        err("bad format|bad opcode|bad stack|truncated", r""))  # not PK\3\4: read as a pickle
    add("zip-appended-zip-polyglot", baseline_zip().serialize() + baseline_zip().serialize(),
        err("bad zip", r"zip64|end record|central directory"))
    add("zip-trailing-garbage", baseline_zip().serialize() + b"\0" * 100,
        err("bad zip", r"no end of central directory"))
    add("zip-entry-count-plus1", _zip_variant(lambda z: _set(z, zip64=False, eocd=dict(n_disk=5, n_total=5))),
        err("bad zip", r"entries|central directory"))
    add("zip-entry-count-minus1", _zip_variant(lambda z: _set(z, zip64=False, eocd=dict(n_disk=3, n_total=3))),
        err("bad zip", r"left in the central directory|entries"))
    add("zip-entry-count-zip64-mismatch", _zip_variant(lambda z: _set(z, z64=dict(n_disk=5, n_total=5))),
        err("bad zip", r"contradicts|entries"))
    add("zip-cd-offset-past-eof", _zip_variant(lambda z: _set(z, zip64=False, eocd=dict(cd_off=1 << 30))),
        err("bad zip", r"central directory"))
    add("zip-cd-size-wrap", _zip_variant(lambda z: _set(z, z64=dict(cd_size=(1 << 64) - 16))),
        err("bad zip", r"contradicts|central directory"))

    # zip64 sentinels and extra fields
    add("zip64-sentinel-without-extra", _zip_variant(lambda z: _set(z.find("data/0"), c_csize=0xffffffff)),
        err("bad zip", r"zip64 sentinel but no zip64 extra"))
    add("zip64-eocd-sentinel-without-record",
        _zip_variant(lambda z: _set(z, zip64=False, eocd=dict(n_disk=0xffff, n_total=0xffff))),
        err("bad zip", r"sentinel but there is no zip64 record"))

    def z64_extra(usize, csize, offset=None):
        def m(z):
            e = z.find("data/0")
            e.c_usize = e.c_csize = 0xffffffff
            body = u64(usize) + u64(csize)
            if offset is not None:
                e.c_offset = 0xffffffff
                body += u64(offset)
            e.c_extra = struct.pack("<HH", 1, len(body)) + body
        return m
    add("zip64-extra-consistent", _zip_variant(z64_extra(16, 16)), ok(is_container("torch-zip", both), "zip64 extra sizes"))
    add("zip64-extra-size-wrap", _zip_variant(z64_extra((1 << 64) - 8, (1 << 64) - 8)),
        err("bad zip", r"runs into the central directory or past the end"))
    add("zip64-extra-offset-wrap", _zip_variant(z64_extra(16, 16, (1 << 64) - 8)),
        err("bad zip", r"not before the central directory"))
    add("zip64-extra-too-short",
        _zip_variant(lambda z: _set(z.find("data/0"), c_csize=0xffffffff, c_usize=0xffffffff,
                                    c_extra=struct.pack("<HH", 1, 8) + u64(16))),
        err("bad zip", r"zip64 extra"))
    add("zip64-two-extras",
        _zip_variant(lambda z: _set(z.find("data/0"), c_csize=0xffffffff, c_usize=0xffffffff,
                                    c_extra=(struct.pack("<HH", 1, 16) + u64(16) + u64(16)) * 2)),
        err("bad zip", r"two zip64 extra"))
    add("zip64-locator-bad-pointer",
        _patch_after(baseline_zip().serialize(), b"PK\6\7", 8, u64(5)), err("bad zip", r"zip64"))

    # compression
    def deflated(rel):
        def m(z):
            e = z.find(rel)
            d = e.data
            ne = Entry(e.c_name, d, method=8)
            z.entries[z.entries.index(e)] = ne
        return m
    add("zip-deflated-data-pkl-ok", _zip_variant(deflated("data.pkl")),
        ok(is_container("torch-zip", both), "deflated data.pkl inflates within limits"))
    add("zip-deflated-storage-ok", _zip_variant(deflated("data/0")),
        ok(is_container("torch-zip", both), "deflated storage record"))
    add("zip-bomb-10MB-zeros-data-pkl",
        _zip_variant(deflated("data.pkl"), pkl=state_dict_pickle(BASE_TENSORS) + b"\0" * (10 << 20)),
        err("limit", r"max_inflate_ratio"))
    add("zip-bomb-declared-40GB", _zip_variant(_declare_bomb(40 << 30)), err("limit", r"max_inflate"))
    add("zip-deflate-declared-too-small", _zip_variant(_declare_usize("data.pkl", 10)),
        err("bad deflate", r"declared"))
    add("zip-deflate-corrupt-stream", _zip_variant(_corrupt_deflate("data.pkl")),
        err("bad deflate", r"corrupt deflate stream"))
    add("zip-deflate-crc-mismatch", _zip_variant(_deflate_bad_crc("data.pkl")), err("bad deflate", r"CRC"))
    add("zip-method-12-bzip2", _zip_variant(lambda z: _set(z.find("data/0"), c_method=12, l_method=12)),
        err("unsupported|bad zip", r"method 12"))

    # torch-level: records and tensors
    add("zip-only-version-record", torch_zip([("version", b"3\n")]).serialize(),
        err("bad format", r"data\.pkl"))
    add("zip-only-data-pkl-dir", torch_zip([("data/", b"")]).serialize(), err("bad format", r"data\.pkl"))
    add("zip-storage-record-missing",
        torch_zip([r for r in baseline_records() if r[0] != "data/1"]).serialize(),
        err("bad format", r"storage record .*data/1 is missing"))
    add("zip-storage-record-short",
        torch_zip([(n, d[:7] if n == "data/1" else d) for n, d in baseline_records()]).serialize(),
        err("bad format", r"holds 7 bytes, its storage needs 8"))
    for tag, t, words in (
            ("shape-past-storage", ("w", "FloatStorage", "0", 4, 0, (5,), (1,)), r"past the end of its storage"),
            ("stride-past-storage", ("w", "FloatStorage", "0", 4, 0, (4,), (2,)), r"past the end of its storage"),
            ("offset-past-storage", ("w", "FloatStorage", "0", 4, 1, (4,), (1,)), r"past the end of its storage"),
            ("2d-past-storage", ("w", "FloatStorage", "0", 4, 0, (2, 3), (3, 1)), r"past the end of its storage"),
            ("negative-stride", ("w", "FloatStorage", "0", 4, 0, (4,), (-1,)), r"negative stride"),
            ("shape-overflow", ("w", "FloatStorage", "0", 4, 0, (1 << 62, 1 << 62), (1, 1)), r"overflow"),
            ("stride-overflow", ("w", "FloatStorage", "0", 4, 0, (2,), (1 << 62,)), r"overflow|past the end"),
            ("offset-huge", ("w", "FloatStorage", "0", 4, (1 << 63) - 1, (1,), (1,)), r"past the end|overflow"),
            ("negative-shape", ("w", "FloatStorage", "0", 4, 0, (-4,), (1,)), r"malformed"),
            ("numel-past-record", ("w", "FloatStorage", "0", 5, 0, (4,), (1,)), r"holds 16 bytes, its storage needs 20"),
            ("numel-huge", ("w", "FloatStorage", "0", 1 << 62, 0, (4,), (1,)), r"overflow|holds"),
            ("unknown-storage-type", ("w", "EvilStorage", "0", 4, 0, (4,), (1,)), r"unknown storage type")):
        pkl = state_dict_pickle([t, BASE_TENSORS[1]])
        add("zip-tensor-%s" % tag, baseline_zip(pkl).serialize(), err("bad format", words))
    add("zip-tensor-view-ok", baseline_zip(state_dict_pickle(
        [("w", "FloatStorage", "0", 4, 1, (2,), (2,)), BASE_TENSORS[1]])).serialize(),
        ok(is_container("torch-zip", both), "strided view inside its storage"))
    add("zip-tensor-empty-ok", baseline_zip(state_dict_pickle(
        [("w", "FloatStorage", "0", 4, 9, (0,), (1,)), BASE_TENSORS[1]])).serialize(),
        ok(is_container("torch-zip", both), "empty tensor"))
    laughs = PROTO2 + EMPTY_DICT + MARK + pstr("w") + rebuild_v2(storage_pid("FloatStorage", "0", 4), 0, (4,), (1,)) + put(0)
    laughs += pstr("laughs") + MARK + get(0) * 10 + LIST + put(1)
    for lvl in range(2, 41):
        laughs += POP + MARK + get(lvl - 1) * 10 + LIST + put(lvl)
    laughs += SETITEMS + STOP
    add("zip-laughs-of-a-tensor", torch_zip([("data.pkl", laughs), ("data/0", W_DATA), ("version", b"3\n")]).serialize(),
        ok(lambda m, t: len(t) < 500000 and len(tensors_of(m)) <= 50, "one tensor, shared lists as refs"))
    return cases


def _patch_after(data, marker, delta, new):
    i = data.rindex(marker) + delta
    return data[:i] + new + data[i + len(new):]


def _quoted_overlap():
    """data/1's local header + record copied inside data/0's record, its central entry pointing there."""
    z = baseline_zip()
    e0, e1 = z.find("data/0"), z.find("data/1")
    e1.l_extra = b""
    e1.l_flags = e1.c_flags = 0
    e1.l_crc, e1.l_csize, e1.l_usize = e1.crc, len(B_DATA), len(B_DATA)
    e0.data = W_DATA + e1.local_header(0) + B_DATA
    e0.usize = e0.c_usize = e0.c_csize = len(e0.data)
    e0.crc = e0.c_crc = zlib.crc32(e0.data) & 0xffffffff
    e1.skip_local = True
    z.serialize()                                   # assigns e0.offset
    e1.c_offset = e0.offset + len(e0.local_header(e0.offset)) + len(W_DATA)
    return z.serialize()


def _orphan_first():
    """A local header + record that no central entry names, first in the file."""
    z = torch_zip([("junk", b"x" * 10)] + baseline_records())
    z.entries[0].skip_central = True
    return z.serialize()


def _same_header_overlap():
    """Two central entries with the same local header offset (data/1 points at data/0's header)."""
    z = baseline_zip()
    z.serialize()
    z.find("data/1").c_offset = z.find("data/0").offset
    return z.serialize()


def _declare_bomb(usize):
    """archive/data/0 deflated, its central entry declaring usize bytes via zip64."""
    def m(z):
        e = z.find("data/0")
        ne = Entry(e.c_name, W_DATA, method=8)
        ne.c_usize = 0xffffffff
        ne.c_extra = struct.pack("<HH", 1, 8) + u64(usize)
        z.entries[z.entries.index(e)] = ne
    return m


def _declare_usize(rel, usize):
    def m(z):
        e = z.find(rel)
        ne = Entry(e.c_name, e.data, method=8)
        ne.c_usize = usize
        z.entries[z.entries.index(e)] = ne
    return m


def _corrupt_deflate(rel):
    def m(z):
        e = z.find(rel)
        ne = Entry(e.c_name, e.data, method=8)
        ne.data = b"\xff" * len(ne.data)
        ne.c_csize = len(ne.data)
        z.entries[z.entries.index(e)] = ne
    return m


def _deflate_bad_crc(rel):
    def m(z):
        e = z.find(rel)
        ne = Entry(e.c_name, e.data, method=8)
        ne.c_crc ^= 1
        z.entries[z.entries.index(e)] = ne
    return m


def legacy_cases():
    cases = []
    add = lambda name, data, exp: cases.append((name, data, exp))  # noqa: E731
    both = has_tensors("w.npy", "b.npy")
    obj = state_dict_pickle(BASE_TENSORS, legacy=True)
    add("legacy-baseline", baseline_legacy(), ok(is_container("torch-legacy", both), "baseline: 2 tensors"))
    add("legacy-extra-key", legacy_file(obj, ["0", "1", "2"], [(4, W_DATA), (1, B_DATA), (1, B_DATA)]),
        err("bad format", r"storage key 2 is not used"))
    add("legacy-missing-key", legacy_file(obj, ["0"], [(4, W_DATA)]),
        err("bad format", r"storage 1 has no raw section"))
    add("legacy-missing-section", legacy_file(obj, ["0", "1"], [(4, W_DATA)]), err("truncated", r"need 8 bytes"))
    add("legacy-count-mismatch", legacy_file(obj, ["0", "1"], [(3, W_DATA[:12]), (1, B_DATA)]),
        err("bad format", r"storage 0 has wrong size: expected 4 elements, got 3"))
    add("legacy-count-huge", legacy_file(obj, ["0", "1"], [(1 << 62, W_DATA), (1, B_DATA)]),
        err("bad format|truncated", r"overflow|left"))
    add("legacy-count-negative", legacy_file(obj, ["0", "1"], [(-1, W_DATA), (1, B_DATA)]),
        err("bad format", r"overflow"))
    add("legacy-keys-not-a-list", LEGACY_MAGIC + LEGACY_VERSION + LEGACY_SYSINFO + obj + PROTO2 + pint(3) + STOP,
        err("bad format", r"key list is not a list"))
    add("legacy-key-not-str", legacy_file(obj, [], []).replace(PROTO2 + EMPTY_LIST + STOP,
                                                                PROTO2 + EMPTY_LIST + pint(1) + APPEND + STOP),
        err("bad format", r"key 0 is not a str"))
    add("legacy-bad-version", LEGACY_MAGIC + PROTO2 + pint(1000) + STOP + LEGACY_SYSINFO + obj,
        err("bad format", r"1001"))
    add("legacy-truncated-after-magic", LEGACY_MAGIC, err("truncated", r"need", len(LEGACY_MAGIC)))
    # picklescan pytorch_magic_bypass: the first pickle computes the magic with REDUCE.  Python's
    # int('119547037146038801333356') would equal the magic; we never call anything, so this is
    # a plain pickle whose value is a call (and torch.load's legacy path is never taken).
    magic_call = PROTO2 + pglobal("builtins", "int") + pstr("119547037146038801333356") + TUPLE1 + REDUCE + STOP
    add("legacy-magic-by-REDUCE", legacy_file(obj, ["0", "1"], [(4, W_DATA), (1, B_DATA)], magic=magic_call),
        ok(is_container("pickle", lambda m, t: "builtins.int" in t and not tensors_of(m)),
           "plain pickle: the magic is a call, not a number"))
    evil = PROTO2 + pglobal("os", "system") + pstr("touch /tmp/pf-magic-bypass") + TUPLE1 + REDUCE + STOP
    add("legacy-magic-replaced-by-os-system", legacy_file(obj, ["0", "1"], [(4, W_DATA), (1, B_DATA)], magic=evil),
        ok(is_container("pickle", lambda m, t: "os.system" in t), "plain pickle, call shown inert"))
    # protocol-0 text magic (decimal LONG)
    add("legacy-magic-protocol0", legacy_file(obj, ["0", "1"], [(4, W_DATA), (1, B_DATA)],
                                              magic=b"L119547037146038801333356L\n."),
        ok(is_container("torch-legacy", both), "protocol-0 magic"))
    add("legacy-view-outside-root",
        legacy_file(PROTO2 + EMPTY_DICT + pstr("w") + rebuild_v2(
            ptuple(pstr("storage"), pglobal("torch", "FloatStorage"), pstr("v"), pstr("cpu"), pint(2),
                   ptuple(pstr("0"), pint(3), pint(2))) + BINPERSID, 0, (2,), (1,))
            + pstr("r") + rebuild_v2(storage_pid("FloatStorage", "0", 4), 0, (4,), (1,)) + SETITEM + SETITEM + STOP,
            ["0"], [(4, W_DATA)]),
        err("bad format", r"view outside its root storage|has no raw section"))
    return cases


def load_from_bytes(blob):
    return pglobal("torch.storage", "_load_from_bytes") + b"B" + u32(len(blob)) + blob + TUPLE1 + REDUCE


def nested_blob(levels):
    """A legacy torch.save blob of one float storage whose persistent id carries, as its 6th
    field, a _load_from_bytes call of the next level: `levels` blobs inside the outermost."""
    blob = legacy_file(PROTO2 + storage_pid("FloatStorage", "0", 4, legacy=True) + STOP, ["0"], [(4, W_DATA)])
    for _ in range(levels):
        pid = ptuple(pstr("storage"), pglobal("torch", "FloatStorage"), pstr("0"), pstr("cpu"), pint(4),
                     load_from_bytes(blob)) + BINPERSID
        blob = legacy_file(b"\x80\x04" + pid + STOP, ["0"], [(4, W_DATA)])
    return blob


def blob_cases():
    """torch.storage._load_from_bytes blobs in plain pickles."""
    cases = []
    add = lambda name, data, exp: cases.append((name, data, exp))  # noqa: E731
    blob = legacy_file(PROTO2 + storage_pid("FloatStorage", "0", 4, legacy=True) + STOP, ["0"], [(4, W_DATA)])

    def wrap(b):  # {'t': _rebuild_tensor_v2(_load_from_bytes(b), 0, (4,), (1,), False, OrderedDict())}
        return (b"\x80\x04" + EMPTY_DICT + pstr("t")
                + pglobal("torch._utils", "_rebuild_tensor_v2")
                + ptuple(pglobal("torch.storage", "_load_from_bytes") + b"C" + u8(len(b)) + b + TUPLE1 + REDUCE
                         if len(b) < 256 else
                         pglobal("torch.storage", "_load_from_bytes") + b"B" + u32(len(b)) + b + TUPLE1 + REDUCE,
                         pint(0), ptuple(pint(4)), ptuple(pint(1)), NEWFALSE,
                         pglobal("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE)
                + REDUCE + SETITEM + STOP)
    add("blob-baseline", wrap(blob), ok(is_container("pickle", has_tensors("t.npy")), "one tensor from a blob"))
    add("blob-truncated", wrap(blob[:-3]), err("truncated", r"need"))
    add("blob-not-torch", wrap(PROTO2 + pint(1) + STOP), err("bad format", r"does not hold a storage"))
    add("blob-not-bytes",
        b"\x80\x04" + pglobal("torch.storage", "_load_from_bytes") + pint(5) + TUPLE1 + REDUCE + STOP,
        err("bad format", r"not a bytes value"))
    add("blob-nested-8-deep", wrap(nested_blob(7)), ok(is_container("pickle", has_tensors("t.npy")),
                                                       "torch.save blobs nested 8 deep (max_embed_depth)"))
    add("blob-nested-9-deep", wrap(nested_blob(8)), err("limit", r"max_embed_depth"))
    add("blob-nested-40-deep", wrap(nested_blob(40)), err("limit", r"max_embed_depth"))
    add("bytes-looking-like-zip", b"\x80\x04" + b"C\x08PK\3\4junk" + STOP,
        ok(lambda m, t: True, "a bytes value that only looks like a zip stays bytes"))
    return cases


def all_crafted(marker="/tmp/pf-pwned-test"):
    return pickle_cases() + never_execute_cases(marker) + zip_cases() + legacy_cases() + blob_cases()


def check_expectation(r, exp):
    """Problems with a crafted case's outcome against its expectation."""
    kind = exp[0]
    if kind == "ok-or-limit":
        if r["rc"] == 1 and r.get("outcome") == "limit":
            return []
        if r["rc"] == 0 and r["stdout_len"] <= exp[1]:
            return []
        return ["expected bounded output (<= %d bytes) or a limit error; got exit %r, %d bytes of "
                "meta.json, %.1f s, %d KiB peak RSS: %s" % (exp[1], r["rc"], r["stdout_len"], r["wall"],
                                                            r["maxrss_kb"], r["stderr"].strip())]
    if kind == "ok-or-error":
        if r["rc"] == 0:
            return []
        exp = ("error", exp[1], exp[2], None)
        kind = "error"
    if kind == "error":
        _, codes, words, offset = exp
        if r["rc"] != 1:
            return ["expected an error (%s, /%s/), got exit %r: %s" % (codes, words, r["rc"], r["stdout"][:300])]
        if not re.fullmatch(codes, r.get("outcome") or ""):
            return ["expected code %r, got %r: %s" % (codes, r.get("outcome"), r["stderr"].strip())]
        if not re.search(words, r.get("msg") or ""):
            return ["expected reason /%s/, got: %s" % (words, r["stderr"].strip())]
        if offset == "nonzero" and r.get("offset") == 0:
            return ["error offset 0 does not point at the offending bytes: %s" % r["stderr"].strip()]
        if isinstance(offset, int) and r.get("offset") != offset:
            return ["expected offset %d: %s" % (offset, r["stderr"].strip())]
        return []
    _, pred, what = exp
    if r["rc"] != 0:
        return ["expected acceptance (%s), got: %s" % (what, r["stderr"].strip())]
    try:
        meta = load_json(r["stdout"])
    except ValueError:
        return ["stdout is not JSON (%d bytes)" % r["stdout_len"]]
    if not pred(meta, r["stdout"]):
        return ["accepted, but not as expected (%s): %s" % (what, r["stdout"][:600])]
    return []


# ---------------------------------------------------------------------------------------------
# Tiny torch fixtures (run in a separate interpreter: needs torch)

TORCH_FIXTURES = ("tiny_zip.pt", "tiny_legacy.pt", "tiny_p2.pkl", "tiny_p4.pkl")


def make_torch_fixtures(outdir):
    import pickle
    import warnings
    warnings.filterwarnings("ignore")
    import torch
    os.makedirs(outdir, exist_ok=True)
    sd = {"w": torch.arange(4, dtype=torch.float32), "b": torch.tensor([1.5], dtype=torch.float64)}
    torch.save(sd, os.path.join(outdir, "tiny_zip.pt"))
    torch.save(sd, os.path.join(outdir, "tiny_legacy.pt"), _use_new_zipfile_serialization=False)
    for p in (2, 4):
        with open(os.path.join(outdir, "tiny_p%d.pkl" % p), "wb") as f:
            pickle.dump({"t": torch.arange(3, dtype=torch.float32)}, f, protocol=p)


def check_baselines_with_torch(outdir):
    """torch.load the crafted baselines: proves the assembler writes what torch writes."""
    import warnings
    warnings.filterwarnings("ignore")
    import torch
    want = {"w": torch.arange(4, dtype=torch.float32), "b": torch.tensor([1.5], dtype=torch.float64)}
    for name in ("zip-baseline", "legacy-baseline", "zip-no-bit3-consistent", "zip-baseline-no-zip64"):
        got = torch.load(os.path.join(outdir, name), weights_only=True)
        assert list(got) == ["w", "b"], (name, list(got))
        for k in want:
            assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), (name, k, got[k])
    print("ok")


def write_crafted(outdir, names=None):
    os.makedirs(outdir, exist_ok=True)
    paths = []
    for name, data, _ in all_crafted():
        if names is None or name in names:
            p = os.path.join(outdir, name)
            with open(p, "wb") as f:
                f.write(data)
            paths.append(p)
    return paths


SEED_REAL = ["tiny_dict_long1.pkl", "np_dict_intkeys_32arrays.pkl", "sbi_minisbibm_theta_o_1.pt",
             "legacy_cuda_skorch_net_cuda.pt", "pkl_cuda_skorch_2022_p4.pkl", "sbi_npse_zip_versiononly.pkl",
             "ts_scripted_adder_tiny.pt"]


def write_seed_corpus(root, tiny_dir, max_case=64 << 10):
    """Seed corpora for tests/fuzz/corpus/{pickle,zip,archive}: the tiny torch fixtures, small real
    files, the pickles inside the zips, and every crafted case up to max_case bytes."""
    import zipfile
    dirs = {k: os.path.join(root, k) for k in ("pickle", "zip", "archive")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)

    def put_seed(kinds, name, data):
        for k in kinds:
            with open(os.path.join(dirs[k], name), "wb") as f:
                f.write(data)

    def kinds_of(data):
        return ("zip", "archive") if data[:4] == b"PK\3\4" else ("pickle", "archive")

    sources = [os.path.join(tiny_dir, n) for n in TORCH_FIXTURES]
    sources += [os.path.join(real_dir(), n) for n in SEED_REAL if os.path.exists(os.path.join(real_dir(), n))]
    for path in sources:
        with open(path, "rb") as f:
            data = f.read()
        name = "real-" + os.path.basename(path) if path.startswith(real_dir()) else os.path.basename(path)
        put_seed(kinds_of(data), name, data)
        if data[:4] == b"PK\3\4":
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    if info.filename.endswith(".pkl"):
                        put_seed(("pickle",), "%s-%s" % (name, info.filename.replace("/", "_")), z.read(info))
    for name, data, _ in all_crafted("/tmp/pf-pwned-seed"):
        if len(data) <= max_case:
            put_seed(kinds_of(data), "crafted-" + name, data)


def main(argv):
    if argv[1] == "batch":
        cases = json.loads(sys.stdin.buffer.read())
        limit_self()
        json.dump(run_batch(cases, limit_as=False), sys.stdout)
        return 0
    if argv[1] == "torch-fixtures":
        make_torch_fixtures(argv[2])
        return 0
    if argv[1] == "check-baselines":
        check_baselines_with_torch(argv[2])
        return 0
    if argv[1] == "seed-corpus":
        write_seed_corpus(argv[2], argv[3])
        return 0
    if argv[1] == "crafted":
        for p in write_crafted(argv[2], set(argv[3:]) or None):
            print(p)
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
