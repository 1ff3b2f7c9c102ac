"""Shared helpers for the picklefs Python tests (paths, dump-tensors runner, MANIFEST parser)."""

import collections
import functools
import json
import os
import re
import subprocess

import oracle

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PYTHON = "/usr/bin/python3"
BUILD = os.environ.get("PF_BUILD", os.path.join(REPO, "build"))
SHARED = os.environ.get("PF_SHARED", "/work/shared")
REAL_DIR = os.path.join(SHARED, "corpus", "real")
DUMP_TOOL = os.path.join(BUILD, "tests", "dump-tensors")


class DumpResult:
    def __init__(self, rc, stdout, stderr):
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr

    @property
    def json(self):
        return json.loads(self.stdout)


@functools.lru_cache(maxsize=None)
def run_dump(path):
    """Run build/tests/dump-tensors on one file (cached for the session)."""
    if not os.access(DUMP_TOOL, os.X_OK):
        raise AssertionError(f"dump-tensors not built: {DUMP_TOOL} (set PF_BUILD)")
    p = subprocess.run([DUMP_TOOL, path], capture_output=True, timeout=120)
    return DumpResult(p.returncode, p.stdout.decode("utf-8", "replace"),
                      p.stderr.decode("utf-8", "replace"))


def dump_ok(path):
    """dump-tensors' JSON for a file that must parse; fails the test with its stderr otherwise."""
    r = run_dump(path)
    assert r.rc == 0, f"dump-tensors exited {r.rc} on {os.path.basename(path)}: {r.stderr.strip()}"
    try:
        d = r.json
    except ValueError as e:
        raise AssertionError(f"dump-tensors printed no valid JSON ({e}): {r.stdout[:500]!r}")
    for field in ("container", "protocol", "tensors", "devices", "globals"):
        assert field in d, f"dump-tensors JSON lacks {field!r}"
    return d


@functools.lru_cache(maxsize=None)
def describe(path):
    return oracle.describe(path)


def multiset(records, with_device=False):
    return collections.Counter(oracle.key(r, with_device) for r in records)


def dump_multiset(got_records, want_records, with_device=False):
    """Multiset of dump-tensors records, comparable with multiset(want_records).

    dump-tensors' crc32 covers the bytes of the tensor file; DESIGN §3.3 lets that file keep
    Fortran order "where the storage already is" (the entry then says fortran_order: true).
    Such an entry is translated to the C-order key of the oracle record whose Fortran-order
    crc it matches; the oracle gives Fortran-order crcs only for tensors whose storage really is
    in Fortran order, so a wrong flag or wrong bytes still shows up as a mismatch.
    """
    fmap = collections.defaultdict(list)
    for r in want_records:
        if r.get("crc32_f") is not None:
            fmap[(r["dtype"], tuple(r["shape"]), r["nbytes"], r["crc32_f"])].append(r["crc32"])
    out = collections.Counter()
    for r in got_records:
        if r.get("fortran_order"):
            fk = (r["dtype"], tuple(r["shape"]), r["nbytes"], r["crc32"])
            if fmap.get(fk):
                r = dict(r, crc32=fmap[fk].pop())
            else:
                r = dict(r, crc32=("fortran-order crc with no F-ordered oracle match", r["crc32"]))
        out[oracle.key(r, with_device)] += 1
    return out


def multiset_diff(got, want):
    """Readable difference of two Counters (for assertion messages)."""
    missing = want - got
    extra = got - want
    lines = []
    for k, n in sorted(missing.items(), key=str)[:20]:
        lines.append(f"  missing x{n}: {k}")
    for k, n in sorted(extra.items(), key=str)[:20]:
        lines.append(f"  unexpected x{n}: {k}")
    return "\n".join(lines)


def path_problem(p):
    """None if p is a safe relative tensor path, else what is wrong with it."""
    if not isinstance(p, str) or not p:
        return "empty or not a string"
    if "\0" in p:
        return "contains NUL"
    if p.startswith("/"):
        return "absolute"
    if not p.endswith(".npy"):
        return "does not end in .npy"
    for comp in p.split("/"):
        if comp in ("", ".", ".."):
            return f"component {comp!r}"
        if len(comp.encode("utf-8")) > 255:
            return "component longer than 255 bytes"
    return None


# ------------------------------------------------------------------------------------------
# MANIFEST.md of the real corpus


Row = collections.namedtuple("Row", "file sha_prefix what count count_kind locations negative")


def _cell(c):
    return c.strip().strip("`").strip()


@functools.lru_cache(maxsize=None)
def real_manifest():
    """Rows of the table in corpus/real/MANIFEST.md, keyed by file name."""
    rows = {}
    with open(os.path.join(REAL_DIR, "MANIFEST.md"), encoding="utf-8") as f:
        for line in f:
            if not line.startswith("| `"):
                continue
            cells = [_cell(c) for c in line.strip().strip("|").split("|")]
            if len(cells) != 8:
                raise AssertionError(f"MANIFEST row with {len(cells)} cells: {line!r}")
            name, _repo, _path, _blob, sha, what, tensors, locs = cells
            sha = sha.rstrip("…").rstrip(".")
            m = re.match(r"^(\d+)\s*(.*)$", tensors)
            if not m:
                raise AssertionError(f"MANIFEST tensors cell {tensors!r}")
            count = int(m.group(1))
            kind = "numpy" if "numpy" in m.group(2) else "tensor"
            locations = {}
            if locs not in ("-", ""):
                for part in locs.split(","):
                    dev, n = part.strip().rsplit(":", 1)
                    locations[dev] = int(n)
            rows[name] = Row(name, sha.lower(), what, count, kind, locations,
                             what.startswith("NEGATIVE"))
    return rows


def real_files():
    return sorted(n for n in os.listdir(REAL_DIR)
                  if n != "MANIFEST.md" and os.path.isfile(os.path.join(REAL_DIR, n)))
