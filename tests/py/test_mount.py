"""Real FUSE mounts of build/fs/picklefs (DESIGN §3 and §5).

What the mount must show is taken from sources other than the filesystem itself:

* the tree, meta.json, device, globals: `picklefs inspect FILE` (meta.json is defined as exactly
  its output) and `build/tests/dump-tensors FILE` (path, dtype, shape, crc32 of the data bytes of
  each tensor file, and the globals list);
* tensor contents: additionally the PyTorch/numpy oracle (oracle.py), as a multiset like
  test_codec_oracle.py, and numpy.load / numpy.load(mmap_mode="r") of every tensor file.

Mounts are made with mounting.mounted(): `picklefs -f -o cache=<tmp> SOURCE MNT`, log to a file,
and the log may only hold the lines a test declares (the NEGATIVE corpus file's one line).

The "files are read-only" checks (test_model_is_read_only) describe the state before the write
path (a later issue) and must change with it.

Run:  PF_BUILD=/work/main/build /usr/bin/python3 -m pytest tests/py/test_mount.py -q
The whole module skips when build/fs/picklefs has no mount feature (`--help` does not mention
MOUNTPOINT) or FUSE is missing; it fails when build/fs/picklefs is not built at all.
"""

import collections
import functools
import json
import errno
import os
import re
import shutil
import stat
import subprocess
import time
import zlib

import numpy as np
import pytest

import mounting
import pfhelpers
from conftest import fixture_manifest, generated_dir
from mounting import cache_entries, mounted, read_tree, run, walk
from pfhelpers import describe, dump_multiset, dump_ok, multiset, multiset_diff

NEGATIVE = [r.file for r in pfhelpers.real_manifest().values() if r.negative]
NEG_NAME = NEGATIVE[0] if NEGATIVE else "sbi_npse_zip_versiononly.pkl"
NEG_LINE = re.escape(NEG_NAME) + r".*offset|offset.*" + re.escape(NEG_NAME)
SPECIAL = ("meta.json", "device", "globals")
SINGLE_REAL = "sbi_torchsave_posterior_zip.pt"


# no FUSE here: fail (or skip where allowed) every test of this file, once
pytestmark = pytest.mark.usefixtures("mount_feature")


def picklefs():
    return mounting.picklefs_path()


# ------------------------------------------------------------------------------------------
# what a model directory must hold, from inspect + dump-tensors (never from the mount)


def _tensor_nodes(node, out):
    if isinstance(node, dict):
        if isinstance(node.get("tensor"), str) and (
                ("dtype" in node and "shape" in node) or set(node) == {"ref", "tensor"}):
            out.append(node)
        for v in node.values():
            _tensor_nodes(v, out)
    elif isinstance(node, list):
        for v in node:
            _tensor_nodes(v, out)
    return out


class Expected:
    """What the model directory of one (unchanging) model file must hold."""

    def __init__(self, path):
        self.src = path
        p = subprocess.run([picklefs(), "inspect", path], capture_output=True, timeout=60)
        assert p.returncode == 0, f"picklefs inspect {path} exited {p.returncode}: {p.stderr!r}"
        self.meta_text = p.stdout
        self.meta = json.loads(p.stdout)
        self.dump = dump_ok(path)
        nodes = _tensor_nodes(self.meta, [])
        self.primary = {n["tensor"]: n for n in nodes if "ref" not in n}
        self.link_of = {n["tensor"]: n["ref"] for n in nodes if "ref" in n}
        bad = {p: r for p, r in self.link_of.items() if r not in self.primary}
        assert not bad, f"{path}: meta.json refs that name no tensor file: {bad}"
        self.groups = collections.defaultdict(list)  # primary path -> every path of that tensor
        for p in self.primary:
            self.groups[p].append(p)
        for p, r in self.link_of.items():
            self.groups[r].append(p)
        self.tensor_paths = set(self.primary) | set(self.link_of)
        self.files = self.tensor_paths | set(SPECIAL)
        self.dirs = {"/".join(p.split("/")[:i]) for p in self.tensor_paths
                     for i in range(1, p.count("/") + 1)}
        self.by_path = {t["path"]: t for t in self.dump["tensors"]}
        self.device_text = "".join(d + "\n" for d in self.meta["devices"]).encode()
        self.globals_text = "".join(f"{m} {n}\n" for m, n in self.dump["globals"]).encode()


@functools.lru_cache(maxsize=None)
def expected(path):
    return Expected(path)


# ------------------------------------------------------------------------------------------
# checks of one mounted model directory


def _diff(got, want, what):
    missing, extra = sorted(want - got), sorted(got - want)
    return f"{what}: missing {missing[:15]}{'...' if len(missing) > 15 else ''}; " \
           f"unexpected {extra[:15]}{'...' if len(extra) > 15 else ''}"


def require_dir(root):
    st = os.lstat(root)
    assert stat.S_ISDIR(st.st_mode), (
        f"{root} is shown as {stat.filemode(st.st_mode)}, not as a model directory")


def check_tree(root, exp, snap=None):
    require_dir(root)
    snap = snap if snap is not None else walk(root)
    files = {r for r, st in snap.items() if r and stat.S_ISREG(st.st_mode)}
    dirs = {r for r, st in snap.items() if r and stat.S_ISDIR(st.st_mode)}
    other = {r: stat.filemode(st.st_mode) for r, st in snap.items()
             if r and not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode))}
    assert not other, f"{root}: entries that are neither files nor directories: {other}"
    assert files == exp.files, _diff(files, exp.files, f"{root}: files")
    assert dirs == exp.dirs, _diff(dirs, exp.dirs, f"{root}: directories")


def check_texts(root, exp):
    require_dir(root)
    def read(name):
        with open(os.path.join(root, name), "rb") as f:
            return f.read()

    meta = read("meta.json")
    assert meta == exp.meta_text, (
        f"{root}/meta.json differs from `picklefs inspect {exp.src}` "
        f"({len(meta)} vs {len(exp.meta_text)} bytes; first difference at byte "
        f"{next((i for i, (a, b) in enumerate(zip(meta, exp.meta_text)) if a != b), min(len(meta), len(exp.meta_text)))})")
    dev = read("device")
    assert dev == exp.device_text, f"{root}/device is {dev!r}, meta.json devices {exp.meta['devices']}"
    glb = read("globals")
    assert glb == exp.globals_text, (
        f"{root}/globals differs from the codec's globals list:\n got {glb[:400]!r}\nwant "
        f"{exp.globals_text[:400]!r}")
    # independent of the codec: torch's saved storage locations, the main pickle's globals
    want = describe(exp.src)
    assert set(dev.decode().split()) == set(want["storage_locations"]), (
        f"{root}/device {dev!r} vs storage locations torch saw {want['storage_locations']}")
    lines = set(glb.decode("utf-8", "replace").splitlines())
    missing = [f"{m} {n}" for m, n in want["globals"] if f"{m} {n}" not in lines]
    assert not missing, f"{root}/globals lacks {missing} (referenced by the main pickle)"


_NP_NAMES = {"bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64",
             "complex64", "complex128"}
_V_SIZES = {"bfloat16": 2, "complex32": 4, "chalf": 4, "float8_e4m3fn": 1, "float8_e5m2": 1,
            "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1, "qint8": 1, "quint8": 1, "qint32": 4,
            "quint4x2": 1, "quint2x4": 1, "uint16": 2, "uint32": 4, "uint64": 8}


def npy_dtype_for(node, nbytes):
    """numpy dtype the .npy of a tensor node must declare (DESIGN §3.3), or None if unknown."""
    if node.get("kind") == "numpy" and node.get("descr"):
        return np.dtype(node["descr"])
    name = node["dtype"]
    if name in _NP_NAMES:
        return np.dtype(name)
    if name in _V_SIZES:
        return np.dtype(f"V{_V_SIZES[name]}")
    n = int(np.prod(node["shape"], dtype=np.int64)) if node["shape"] else 1
    return np.dtype(f"V{nbytes // n}") if n else None


def read_npy(path):
    """(dtype, shape, fortran_order, data bytes, whole file bytes) of a .npy file."""
    with open(path, "rb") as f:
        whole = f.read()
    import io
    bio = io.BytesIO(whole)
    version = np.lib.format.read_magic(bio)
    assert version in ((1, 0), (2, 0)), f"{path}: .npy format {version} (want 1.0 or 2.0)"
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(bio)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(bio)
    return dtype, shape, fortran, whole[bio.tell():], whole


def tensor_records(root, exp, sizes=None):
    """Check every tensor file of a model directory against its meta.json node and
    dump-tensors' record; returns oracle-comparable records of the distinct tensors."""
    records = []
    problems = []
    for path in sorted(exp.tensor_paths):
        full = os.path.join(root, path)
        size_before = sizes[path] if sizes is not None else os.stat(full).st_size
        prim = exp.link_of.get(path, path)
        node = exp.primary[prim]
        rec = exp.by_path.get(prim)
        if rec is None:
            problems.append(f"{path}: dump-tensors has no record for {prim}")
            continue
        try:
            dtype, shape, fortran, data, whole = read_npy(full)
        except Exception as e:  # noqa: BLE001
            problems.append(f"{path}: not a readable .npy: {type(e).__name__}: {e}")
            continue
        where = f"{root}/{path}"
        if size_before != len(whole):
            problems.append(f"{where}: st_size {size_before} before reading, {len(whole)} bytes read")
        if list(shape) != list(rec["shape"]) or list(shape) != list(node["shape"]):
            problems.append(f"{where}: shape {shape}, meta.json {node['shape']}, "
                            f"dump-tensors {rec['shape']}")
        if len(data) != rec["nbytes"]:
            problems.append(f"{where}: {len(data)} data bytes, dump-tensors nbytes {rec['nbytes']}")
        crc = zlib.crc32(data) & 0xFFFFFFFF
        if crc != rec["crc32"]:
            problems.append(f"{where}: crc32 of data {crc:#x}, dump-tensors {rec['crc32']:#x}")
        if bool(fortran) != bool(rec.get("fortran_order")):
            problems.append(f"{where}: fortran_order {fortran}, dump-tensors {rec.get('fortran_order')}")
        want_dt = npy_dtype_for(node, len(data))
        if want_dt is not None and dtype != want_dt:
            problems.append(f"{where}: .npy dtype {dtype.str}, want {want_dt.str} for "
                            f"{node.get('kind')} {node['dtype']}")
        order = "F" if fortran else "C"
        try:
            arr = np.load(full)
            if arr.shape != tuple(shape) or arr.dtype != dtype or arr.tobytes(order=order) != data:
                problems.append(f"{where}: numpy.load gives {arr.dtype} {arr.shape}, not the file's data")
        except Exception as e:  # noqa: BLE001
            problems.append(f"{where}: numpy.load: {type(e).__name__}: {e}")
        try:
            mm = np.load(full, mmap_mode="r")
            if mm.shape != tuple(shape) or mm.tobytes(order=order) != data:
                problems.append(f"{where}: numpy.load(mmap_mode='r') gives other data")
            del mm
        except Exception as e:  # noqa: BLE001
            problems.append(f"{where}: numpy.load(mmap_mode='r'): {type(e).__name__}: {e}")
        if path == prim:
            records.append({"dtype": node["dtype"], "shape": list(shape), "nbytes": len(data),
                            "crc32": crc, "device": node.get("device"), "fortran_order": fortran})
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:30])
    return records


def check_tensors(root, exp, sizes=None):
    require_dir(root)
    records = tensor_records(root, exp, sizes)
    want = describe(exp.src)["tensors"]
    g, w = dump_multiset(records, want, True), multiset(want, True)
    assert g == w, (f"{root}: tensor files ({len(records)} distinct) differ from what torch/numpy "
                    f"load from {exp.src} ({len(want)})\n" + multiset_diff(g, w))


def check_attrs(root, exp, snap, mtime_ns):
    require_dir(root)
    problems = []
    for rel, st in snap.items():
        if st.st_mtime_ns != mtime_ns:
            problems.append(f"{rel or '.'}: mtime {st.st_mtime_ns} ns, model file {mtime_ns} ns")
    inos = {}
    for prim, paths in exp.groups.items():
        got = {p: (snap[p].st_ino, snap[p].st_nlink) for p in paths if p in snap}
        if len(got) != len(paths):
            problems.append(f"missing paths of tensor {prim}: {sorted(set(paths) - set(got))}")
            continue
        if len({i for i, _ in got.values()}) != 1:
            problems.append(f"paths of one tensor have different inodes: {got}")
        for p, (_i, nl) in got.items():
            if nl != len(paths):
                problems.append(f"{p}: st_nlink {nl}, tensor has {len(paths)} path(s)")
        inos.setdefault(got[prim][0], []).append(prim)
    for rel in list(SPECIAL) + sorted(exp.dirs) + [""]:
        if rel in snap:
            inos.setdefault(snap[rel].st_ino, []).append(rel or ".")
    dup = {i: ps for i, ps in inos.items() if len(ps) > 1}
    if dup:
        problems.append(f"distinct entries share an inode: {dup}")
    assert not problems, f"{root}: {len(problems)} problem(s):\n" + "\n".join(problems[:30])


def check_model(root, exp, mtime_ns):
    snap = walk(root)
    check_tree(root, exp, snap)
    check_texts(root, exp)
    check_tensors(root, exp)
    check_attrs(root, exp, snap, mtime_ns)


# ------------------------------------------------------------------------------------------
# 1. every fixture and every real corpus file, in one folder mount


def _corpus_names():
    fx = [e["name"] for e in fixture_manifest()["fixtures"]]
    real = pfhelpers.real_files()
    assert not set(fx) & set(real), f"fixture and corpus names collide: {set(fx) & set(real)}"
    return fx, real


def _origin(name):
    fx, _real = _corpus_names()
    return os.path.join(generated_dir(), name) if name in fx else os.path.join(pfhelpers.REAL_DIR, name)


def _fill(src, names):
    os.makedirs(src, exist_ok=True)
    for n in names:
        shutil.copy2(_origin(n), os.path.join(src, n))


@pytest.fixture(scope="module")
def corpus_src(tmp_path_factory):
    src = tmp_path_factory.mktemp("corpus") / "src"
    fx, real = _corpus_names()
    _fill(str(src), fx + real)
    return str(src)


CorpusMount = collections.namedtuple("CorpusMount", "mount src first errors")


@pytest.fixture(scope="module")
def corpus_mount(corpus_src, tmp_path_factory):
    base = tmp_path_factory.mktemp("corpus-mnt")
    with mounted(corpus_src, base / "mnt", base / "cache", expect=[NEG_LINE] + JUNK_LINES) as m:
        # every attribute as first seen, before anything is read
        errors = []
        first = walk(m.mountpoint, errors)
        yield CorpusMount(m, corpus_src, first, errors)


def _walk_errors(cm, name):
    errs = [f"{r}: {type(e).__name__}: {e}" for r, e in cm.errors
            if r == name or r.startswith(name + "/")]
    assert not errs, f"walking {name} in the mount failed:\n" + "\n".join(errs[:20])


def _sub(first, name):
    return {(r[len(name) + 1:] if r != name else ""): st for r, st in first.items()
            if r == name or r.startswith(name + "/")}


def test_mount_root_lists_every_file(corpus_mount):
    names = sorted(os.listdir(corpus_mount.src))
    got = sorted(os.listdir(corpus_mount.mount.mountpoint))
    assert got == names
    bad = []
    for n in names:
        st = corpus_mount.first[n]
        want_dir = n not in NEGATIVE
        if stat.S_ISDIR(st.st_mode) != want_dir or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            bad.append(f"{n}: {stat.filemode(st.st_mode)}, want a {'directory' if want_dir else 'plain file'}")
    assert not bad, f"{len(bad)} wrong entry type(s):\n" + "\n".join(bad)


def test_mount_walk_errors(corpus_mount):
    errs = [f"{r}: {type(e).__name__}: {e}" for r, e in corpus_mount.errors]
    assert not errs, f"{len(errs)} entries could not be listed or stat'ed:\n" + "\n".join(errs[:30])


def test_mount_tree(model_file, corpus_mount):
    _walk_errors(corpus_mount, model_file.name)
    snap = _sub(corpus_mount.first, model_file.name)
    assert snap, f"{model_file.name} not in the mount"
    check_tree(corpus_mount.mount.path(model_file.name), expected(model_file.path), snap)


def test_mount_texts(model_file, corpus_mount):
    check_texts(corpus_mount.mount.path(model_file.name), expected(model_file.path))


def test_mount_tensors(model_file, corpus_mount):
    exp = expected(model_file.path)
    first = _sub(corpus_mount.first, model_file.name)
    sizes = {p: first[p].st_size for p in exp.tensor_paths if p in first}
    if len(sizes) != len(exp.tensor_paths):
        sizes = None  # test_mount_tree reports the missing paths
    check_tensors(corpus_mount.mount.path(model_file.name), exp, sizes)


def test_mount_attrs(model_file, corpus_mount):
    _walk_errors(corpus_mount, model_file.name)
    mtime = os.stat(os.path.join(corpus_mount.src, model_file.name)).st_mtime_ns
    check_attrs(corpus_mount.mount.path(model_file.name), expected(model_file.path),
                _sub(corpus_mount.first, model_file.name), mtime)


def test_special_file_sizes_before_read(corpus_mount):
    """st_size of meta.json/device/globals as first seen (before any read) equals the bytes read."""
    bad = []
    for rel, st in corpus_mount.first.items():
        if rel.count("/") == 1 and rel.split("/")[1] in SPECIAL:
            with open(corpus_mount.mount.path(rel), "rb") as f:
                n = len(f.read())
            if n != st.st_size:
                bad.append(f"{rel}: st_size {st.st_size}, read {n}")
    assert not bad, "\n".join(bad)


def test_inodes_distinct_across_mount(corpus_mount):
    """Only the paths of one tied tensor share an inode, in the whole mount."""
    by_ino = collections.defaultdict(list)
    for rel, st in corpus_mount.first.items():
        by_ino[st.st_ino].append(rel)
    fx, real = _corpus_names()
    bad = []
    for ino, rels in by_ino.items():
        if len(rels) < 2:
            continue
        models = {r.split("/")[0] for r in rels}
        ok = False
        if len(models) == 1 and all("/" in r for r in rels):
            (name,) = models
            if name not in NEGATIVE:
                exp = expected(_origin(name))
                inner = {r.split("/", 1)[1] for r in rels}
                ok = any(inner == set(g) for g in exp.groups.values())
        if not ok:
            bad.append(f"inode {ino}: {sorted(rels)[:6]}")
    assert not bad, f"{len(bad)} inode(s) shared by unrelated entries:\n" + "\n".join(bad[:20])


def test_negative_file_is_plain(corpus_mount):
    for name in NEGATIVE:
        path = corpus_mount.mount.path(name)
        st = os.lstat(path)
        assert stat.S_ISREG(st.st_mode), f"{name}: {stat.filemode(st.st_mode)}"
        with open(os.path.join(corpus_mount.src, name), "rb") as f:
            want = f.read()
        with open(path, "rb") as f:
            got = f.read()
        assert got == want, f"{name}: {len(got)} bytes through the mount, {len(want)} on disk, differ"
        assert st.st_size == len(want)
        assert corpus_mount.first[name].st_size == len(want)
        assert st.st_mtime_ns == os.stat(os.path.join(corpus_mount.src, name)).st_mtime_ns
    lines = corpus_mount.mount.log_lines()
    hits = [ln for ln in lines if re.search(NEG_LINE, ln)]
    assert len(hits) == 1, f"want one log line naming {NEG_NAME} with 'offset', log:\n" + "\n".join(lines)


def test_parallel_reads(corpus_mount):
    """Many threads reading the tensor files at once get the same bytes as one reader."""
    from concurrent.futures import ThreadPoolExecutor
    files = sorted(r for r, st in corpus_mount.first.items() if r.endswith(".npy"))
    assert len(files) > 500

    def read(rel):
        with open(corpus_mount.mount.path(rel), "rb") as f:
            return f.read()

    want = {r: read(r) for r in files}
    order = files[::-1] + files
    with ThreadPoolExecutor(max_workers=8) as ex:
        got = list(ex.map(read, order))
    bad = sorted({r for r, b in zip(order, got) if b != want[r]})
    assert not bad, f"{len(bad)} files read differently in parallel: {bad[:10]}"


def test_single_file_mount(tmp_path):
    src = os.path.join(pfhelpers.REAL_DIR, SINGLE_REAL)
    with mounted(src, tmp_path / "mnt", tmp_path / "cache") as m:
        assert os.path.ismount(m.mountpoint)
        check_model(m.mountpoint, expected(src), os.stat(src).st_mtime_ns)


# What test_junk_writes_are_refused makes the daemon log (one line per refused write).
JUNK_LINES = [r"^picklefs: shared_zip_p2\.pt/meta\.json: not written: meta\.json: .*",
              r"^picklefs: shared_zip_p2\.pt/device: not written: not a device: .*",
              r"^picklefs: shared_zip_p2\.pt/globals: not written: globals line 1: .*",
              r"^picklefs: shared_zip_p2\.pt/\S+\.npy: not written: npy: bad magic"]


def test_junk_writes_are_refused(corpus_mount):
    """Junk written into a model's files is refused (EINVAL at fsync or close); mkdir, unlink and
    new tensor names are refused (EPERM); nothing changes on disk or in the tree.  (Accepted
    writes are tests/py/test_write*.py.)"""
    name = "shared_zip_p2.pt"
    root = corpus_mount.mount.path(name)
    exp = expected(_origin(name))
    targets = list(SPECIAL) + [sorted(exp.primary)[0]]
    before = {t: open(os.path.join(root, t), "rb").read() for t in targets}
    accepted = []
    for t in targets:
        fd = os.open(os.path.join(root, t), os.O_WRONLY)
        try:
            os.pwrite(fd, b" " if t == "globals" else b"X", 0)  # a line starting with a space: no module
            os.fsync(fd)
            accepted.append(t)
        except OSError as e:
            assert e.errno == errno.EINVAL, f"{t}: {e}"
        finally:
            try:
                os.close(fd)
            except OSError:
                pass
    assert not accepted, f"junk written through the model directory was accepted: {accepted}"
    for op, fn in (("mkdir", lambda: os.mkdir(os.path.join(root, "newdir"))),
                   ("unlink meta.json", lambda: os.unlink(os.path.join(root, "meta.json"))),
                   ("create", lambda: os.close(os.open(os.path.join(root, "new.npy"),
                                                        os.O_CREAT | os.O_WRONLY, 0o644)))):
        with pytest.raises(PermissionError):
            fn()
    after = {t: open(os.path.join(root, t), "rb").read() for t in targets}
    assert after == before
    with open(os.path.join(corpus_mount.src, name), "rb") as f, open(_origin(name), "rb") as g:
        assert f.read() == g.read(), f"{name} changed on disk"


# ------------------------------------------------------------------------------------------
# 2. copy tools, attribute stability


COPY_SET = ["shared_zip_p2.pt", "shared_legacy_p2.pt", "views_pickle_p4.pkl", "dtypes_zip_p2.pt",
            "numpy_pickle_p5.pkl", "names_pickle_p4.pkl", "sbi_inference_gpu_p4.pkl",
            "torchscript_traced.pt", "nested_zip_in_pickle_p4.pkl", "sbi_popgen_AFS_p3.pkl",
            "pkl_cuda_skorch_2022_p4.pkl", "tiny_dict_long1.pkl", NEG_NAME]
PLAIN_OPTIONAL = [r"notes\.txt", r"inner\.txt"]  # a non-model plain file may get its one log line


@pytest.fixture(scope="module")
def copy_src(tmp_path_factory):
    src = str(tmp_path_factory.mktemp("copy") / "src")
    _fill(src, COPY_SET)
    with open(os.path.join(src, "notes.txt"), "w") as f:
        f.write("plain notes\n")
    os.makedirs(os.path.join(src, "sub"))
    shutil.copy2(_origin("sd_zip_p2.pt"), os.path.join(src, "sub", "model.pt"))
    with open(os.path.join(src, "sub", "inner.txt"), "w") as f:
        f.write("inner\n")
    os.symlink("sub/model.pt", os.path.join(src, "latest.pt"))
    return src


def _compare_trees(got, want, what):
    assert set(got) == set(want), _diff(set(got), set(want), what)
    bad = [r for r in want if got[r] != want[r]]
    assert not bad, f"{what}: {len(bad)} entries differ, e.g. {bad[:10]}"


def test_copy_tools(copy_src, tmp_path):
    with mounted(copy_src, tmp_path / "mnt", tmp_path / "cache", expect=[NEG_LINE],
                 optional=PLAIN_OPTIONAL) as m:
        mnt = m.mountpoint
        ref = read_tree(mnt)
        assert ref["latest.pt"] == ("l", "sub/model.pt")
        assert ref[NEG_NAME][0] == "f"
        assert sum(1 for v in ref.values() if v[0] == "f") > 150
        run(["cp", "-r", mnt, str(tmp_path / "cp")])
        _compare_trees(read_tree(str(tmp_path / "cp")), ref, "cp -r")
        os.makedirs(tmp_path / "tar")
        p = run(["tar", "-C", mnt, "-cf", str(tmp_path / "a.tar"), "."])
        assert not p.stderr.strip(), f"tar c warned: {p.stderr}"
        run(["tar", "-C", str(tmp_path / "tar"), "-xf", str(tmp_path / "a.tar")])
        _compare_trees(read_tree(str(tmp_path / "tar")), ref, "tar c | tar x")
        run(["rsync", "-a", mnt + "/", str(tmp_path / "rs") + "/"])
        _compare_trees(read_tree(str(tmp_path / "rs")), ref, "rsync -a")
        p = run(["rsync", "-a", "--stats", mnt + "/", str(tmp_path / "rs") + "/"])
        mt = re.search(r"Number of regular files transferred: ([\d,]+)", p.stdout)
        assert mt, f"no transfer count in rsync --stats output:\n{p.stdout}"
        assert mt.group(1) == "0", f"second rsync -a re-sent {mt.group(1)} files:\n{p.stdout}"
        # after all that reading, the tree still reads the same
        _compare_trees(read_tree(mnt), ref, "second read of the mount")


def _attrs(root):
    return {r: (stat.S_IFMT(st.st_mode), st.st_ino, st.st_mtime_ns, st.st_size, st.st_nlink)
            for r, st in walk(root).items() if r}


def _attr_diff(a, b):
    keys = set(a) | set(b)
    bad = sorted(k for k in keys if a.get(k) != b.get(k))
    return f"{len(bad)} entries differ (type, ino, mtime_ns, size, nlink): " + "; ".join(
        f"{k}: {a.get(k)} -> {b.get(k)}" for k in bad[:8])


def test_stable_across_remount(copy_src, tmp_path):
    kw = dict(expect=[NEG_LINE], optional=PLAIN_OPTIONAL)
    with mounted(copy_src, tmp_path / "mnt", tmp_path / "cache", **kw) as m:
        a = _attrs(m.mountpoint)
    assert len(a) > 150
    with mounted(copy_src, tmp_path / "mnt", tmp_path / "cache", **kw) as m:
        b = _attrs(m.mountpoint)
    assert a == b, "remount, same cache dir: " + _attr_diff(a, b)
    with mounted(copy_src, tmp_path / "mnt", tmp_path / "cache2", **kw) as m:
        c = _attrs(m.mountpoint)
    assert a == c, "remount, fresh cache dir: " + _attr_diff(a, c)


# ------------------------------------------------------------------------------------------
# 3. a folder of 1,000 models: nothing parsed until entered

MANY = 1000
MANY_FROM = "sd_zip_p2.pt"


def test_thousand_models_lazy(tmp_path):
    src = tmp_path / "src"
    os.makedirs(src)
    names = [f"m{i:04d}.pt" for i in range(MANY)]
    for n in names:
        shutil.copyfile(_origin(MANY_FROM), src / n)
    exp = expected(_origin(MANY_FROM))
    cache = tmp_path / "cache"
    with mounted(src, tmp_path / "mnt", cache) as m:
        p = run(["ls", "-l", m.mountpoint])
        lines = [ln for ln in p.stdout.splitlines() if not ln.startswith("total")]
        assert len(lines) == MANY, f"ls -l printed {len(lines)} entries"
        notdir = [ln for ln in lines if not ln.startswith("d")]
        assert not notdir, f"entries not shown as directories: {notdir[:5]}"
        assert sorted(ln.split()[-1] for ln in lines) == names
        p = run(["find", m.mountpoint, "-maxdepth", "1"])
        assert len(p.stdout.splitlines()) == MANY + 1
        p = run(["find", m.mountpoint, "-maxdepth", "1", "-type", "d"])
        assert len(p.stdout.splitlines()) == MANY + 1
        assert cache_entries(cache) == [], (
            f"ls -l / find -maxdepth 1 created index cache entries: {cache_entries(cache)[:10]}")
        one = m.path("m0500.pt")
        assert sorted(os.listdir(one)) == sorted({p.split("/")[0] for p in exp.files})
        with open(os.path.join(one, "meta.json"), "rb") as f:
            assert f.read() == exp.meta_text
        during = cache_entries(cache)
        assert len(during) <= 1, f"entering one model made {len(during)} cache entries: {during}"
    after = cache_entries(cache)
    assert len(after) == 1, f"one model entered: want 1 cache entry after unmount, got {after}"
    # the whole tree: find and du walk into every model
    with mounted(src, tmp_path / "mnt", cache) as m:
        p = run(["find", m.mountpoint], timeout=120)
        per_model = 1 + len(exp.files) + len(exp.dirs)
        assert len(p.stdout.splitlines()) == 1 + MANY * per_model, (
            f"find printed {len(p.stdout.splitlines())} lines, want {1 + MANY * per_model}")
        p = run(["du", "-s", m.mountpoint], timeout=120)
        assert not p.stderr.strip(), p.stderr
        assert re.match(r"^\d+\s", p.stdout), p.stdout
        p = run(["du", "-s", "--apparent-size", "-B1", m.path("m0999.pt")])
        assert int(p.stdout.split()[0]) > 0
        check_texts(m.path("m0999.pt"), exp)
    assert len(cache_entries(cache)) >= 1


# ------------------------------------------------------------------------------------------
# 4. a model file replaced in SOURCE while mounted


def _make_v2(path_in, path_out):
    import torch
    sd = torch.load(path_in, map_location="cpu")
    sd2 = collections.OrderedDict(
        (k, (v * 2 + 1) if v.is_floating_point() else (v + 7)) for k, v in sd.items())
    torch.save(sd2, path_out)


def _replace(src_file, new_content_path):
    tmp = os.path.join(os.path.dirname(src_file), ".incoming.tmp")
    shutil.copyfile(new_content_path, tmp)
    os.replace(tmp, src_file)


def _check_now_or_later(root, exp, src_file, what):
    try:
        check_model(root, exp, os.stat(src_file).st_mtime_ns)
    except AssertionError as e:
        time.sleep(2)
        try:
            check_model(root, exp, os.stat(src_file).st_mtime_ns)
            later = "correct 2 s later (stale kernel/daemon cache)"
        except AssertionError as e2:
            later = f"still wrong 2 s later: {str(e2)[:300]}"
        raise AssertionError(f"{what}: right after the rename: {e}\n-- {later}") from None


def test_replace_model_while_mounted(tmp_path):
    v1 = _origin(MANY_FROM)
    v2 = str(tmp_path / "v2.pt")
    _make_v2(v1, v2)
    v3 = _origin("gpu_zip_p2.pt")
    e1, e2, e3 = expected(v1), expected(v2), expected(v3)
    assert e1.tensor_paths == e2.tensor_paths
    changed = [p for p in e1.primary if e1.by_path[p]["crc32"] != e2.by_path[p]["crc32"]]
    assert len(changed) == len(e1.primary), "v2 must change every tensor"
    assert e3.meta["devices"] != e1.meta["devices"] and e3.tensor_paths != e1.tensor_paths
    src = tmp_path / "src"
    os.makedirs(src)
    model = str(src / "model.pt")
    shutil.copy2(v1, model)
    with mounted(src, tmp_path / "mnt", tmp_path / "cache") as m:
        root = m.path("model.pt")
        check_model(root, e1, os.stat(model).st_mtime_ns)
        held = sorted(e1.primary)[0]
        fd = os.open(os.path.join(root, held), os.O_RDONLY)
        try:
            old_bytes = os.pread(fd, 1 << 20, 0)
            time.sleep(0.02)  # a distinct mtime even on coarse clocks
            _replace(model, v2)
            _check_now_or_later(root, e2, model, "same paths, new values")
            # a file opened before the replacement shows one version, never a mix
            got = os.pread(fd, 1 << 20, 0)
        finally:
            os.close(fd)
        with open(os.path.join(root, held), "rb") as f:
            new_bytes = f.read()
        assert new_bytes != old_bytes
        assert got in (old_bytes, new_bytes), "an open tensor file mixed old and new bytes"
        time.sleep(0.02)
        _replace(model, v3)
        _check_now_or_later(root, e3, model, "other tensors and device")
        assert not os.path.exists(os.path.join(root, held)) or held in e3.tensor_paths


# ------------------------------------------------------------------------------------------
# 5. the mirrored part


def test_mirrored_entries(tmp_path):
    src = tmp_path / "src"
    os.makedirs(src / "sub" / "deeper")
    os.makedirs(src / "emptydir")
    (src / "notes.txt").write_bytes(b"hello\n")
    (src / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(src / "run.sh", 0o750)
    (src / "sub" / "inner.txt").write_bytes(b"inner\n" * 1000)
    os.symlink("notes.txt", src / "link")
    os.symlink("does/not/exist", src / "dangling")
    model_src = _origin(MANY_FROM)
    shutil.copy2(model_src, src / "sub" / "deeper" / "model.pt")
    os.utime(src / "notes.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    optional = [r"notes\.txt", r"run\.sh", r"inner\.txt"]
    with mounted(src, tmp_path / "mnt", tmp_path / "cache", optional=optional) as m:
        assert sorted(os.listdir(m.mountpoint)) == sorted(os.listdir(src))
        for rel in ("notes.txt", "run.sh", "sub/inner.txt", "sub", "sub/deeper", "emptydir"):
            a, b = os.lstat(m.path(rel)), os.lstat(src / rel)
            assert stat.S_IFMT(a.st_mode) == stat.S_IFMT(b.st_mode), rel
            assert stat.S_IMODE(a.st_mode) == stat.S_IMODE(b.st_mode), (
                f"{rel}: mode {oct(a.st_mode)} vs {oct(b.st_mode)} on the source")
            assert a.st_mtime_ns == b.st_mtime_ns, f"{rel}: mtime {a.st_mtime_ns} vs {b.st_mtime_ns}"
            if stat.S_ISREG(b.st_mode):
                assert a.st_size == b.st_size, rel
                with open(m.path(rel), "rb") as f:
                    assert f.read() == (src / rel).read_bytes(), rel
        assert os.listdir(m.path("emptydir")) == []
        assert sorted(os.listdir(m.path("sub"))) == ["deeper", "inner.txt"]
        for name, target in (("link", "notes.txt"), ("dangling", "does/not/exist")):
            assert os.path.islink(m.path(name)), name
            assert os.readlink(m.path(name)) == target
        with open(m.path("link"), "rb") as f:
            assert f.read() == b"hello\n"
        assert not os.path.exists(m.path("dangling"))
        assert os.access(m.path("run.sh"), os.X_OK)
        check_model(m.path("sub", "deeper", "model.pt"), expected(model_src),
                    os.stat(src / "sub" / "deeper" / "model.pt").st_mtime_ns)
        # writing a mirrored plain file writes the source file
        with open(m.path("notes.txt"), "r+b") as f:
            f.write(b"HE")
        assert (src / "notes.txt").read_bytes() == b"HEllo\n"
        with open(m.path("notes.txt"), "wb") as f:
            f.write(b"rewritten through the mount\n")
        assert (src / "notes.txt").read_bytes() == b"rewritten through the mount\n"
        with open(m.path("notes.txt"), "ab") as f:
            f.write(b"more\n")
        want = b"rewritten through the mount\nmore\n"
        assert (src / "notes.txt").read_bytes() == want
        assert os.stat(m.path("notes.txt")).st_size == len(want)
        with open(m.path("notes.txt"), "rb") as f:
            assert f.read() == want
        with open(m.path("sub", "inner.txt"), "r+b") as f:
            f.seek(3000)
            f.write(b"XYZ")
        data = (src / "sub" / "inner.txt").read_bytes()
        assert len(data) == 6000 and data[3000:3003] == b"XYZ" and data[:3000] == b"inner\n" * 500


def test_ro_option(tmp_path):
    src = tmp_path / "src"
    os.makedirs(src)
    (src / "notes.txt").write_bytes(b"hello\n")
    shutil.copy2(_origin(MANY_FROM), src / "a.pt")
    with mounted(src, tmp_path / "mnt", tmp_path / "cache", args=["-o", "ro"],
                 optional=[r"notes\.txt"]) as m:
        with open(m.path("notes.txt"), "rb") as f:
            assert f.read() == b"hello\n"
        with pytest.raises(OSError):
            with open(m.path("notes.txt"), "r+b") as f:
                f.write(b"X")
        check_texts(m.path("a.pt"), expected(_origin(MANY_FROM)))
    assert (src / "notes.txt").read_bytes() == b"hello\n"


# ------------------------------------------------------------------------------------------
# 6. command line


def _version():
    with open(os.path.join(pfhelpers.REPO, "meson.build")) as f:
        return re.search(r"version\s*:\s*'([^']+)'", f.read()).group(1)


def test_help_and_version():
    p = run([picklefs(), "--help"], timeout=10)
    assert "MOUNTPOINT" in p.stdout, p.stdout
    p = run([picklefs(), "--version"], timeout=10)
    assert p.stdout.startswith("picklefs ") and _version() in p.stdout, p.stdout


def _one_line_error(cmd, mnt, what, tmp_path):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=15,
                           env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg")))
    finally:
        if os.path.ismount(mnt):
            subprocess.run([mounting.FUSERMOUNT, "-u", mnt], capture_output=True, timeout=30)
            pytest.fail(f"{what}: picklefs mounted {mnt}")
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode != 0, f"{what}: exit 0"
    assert len(lines) == 1, f"{what}: want one stderr line, got {lines}"
    return lines[0]


def test_startup_errors(tmp_path):
    mnt = tmp_path / "mnt"
    os.makedirs(mnt)
    src = tmp_path / "src"
    os.makedirs(src)
    shutil.copy2(_origin(MANY_FROM), src / "a.pt")
    cache = ["-o", f"cache={tmp_path / 'cache'}"]
    missing = str(tmp_path / "no-such-source")
    line = _one_line_error([picklefs(), *cache, missing, str(mnt)], str(mnt), "missing SOURCE",
                           tmp_path)
    assert "no-such-source" in line, line
    line = _one_line_error([picklefs(), *cache, str(src), str(tmp_path / "no-such-mnt")],
                           str(tmp_path / "no-such-mnt"), "missing MOUNTPOINT", tmp_path)
    assert "no-such-mnt" in line, line
    (tmp_path / "afile").write_bytes(b"x")
    _one_line_error([picklefs(), *cache, str(src), str(tmp_path / "afile")],
                    str(tmp_path / "afile"), "MOUNTPOINT is a file", tmp_path)
    _one_line_error([picklefs(), *cache, str(src)], str(mnt), "no MOUNTPOINT argument", tmp_path)


def _pids(pattern):
    p = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, timeout=10)
    return [int(x) for x in p.stdout.split()]


def test_daemonizes(tmp_path):
    src = tmp_path / "src"
    os.makedirs(src)
    shutil.copy2(_origin(MANY_FROM), src / "a.pt")
    mnt = str(tmp_path / "daemon-mnt")
    os.makedirs(mnt)
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    with open(out, "wb") as o, open(err, "wb") as e:
        try:
            # no -o cache: the index cache goes to $XDG_CACHE_HOME/picklefs
            rc = subprocess.run([picklefs(), str(src), mnt],
                                stdin=subprocess.DEVNULL, stdout=o, stderr=e, env=env,
                                timeout=20).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    try:
        assert rc == 0, f"picklefs without -f: {rc}; stderr {err.read_bytes()!r}"
        assert os.path.ismount(mnt), "command returned before the mount was there"
        pids = _pids(mnt)
        assert pids, "no picklefs process holds the mount"
        with open(os.path.join(mnt, "a.pt", "meta.json"), "rb") as f:
            assert f.read() == expected(_origin(MANY_FROM)).meta_text
        assert out.read_bytes() == b"" and err.read_bytes() == b"", (
            f"the daemonized run printed: {out.read_bytes()!r} {err.read_bytes()!r}")
    finally:
        if os.path.ismount(mnt):
            subprocess.run([mounting.FUSERMOUNT, "-u", mnt], capture_output=True, timeout=30)
        end = time.monotonic() + 10
        left = _pids(mnt)
        while left and time.monotonic() < end:
            time.sleep(0.1)
            left = _pids(mnt)
        for pid in left:  # processes this test started
            try:
                os.kill(pid, 9)
            except OSError:
                pass
    assert not os.path.ismount(mnt)
    assert not left, f"picklefs processes left after fusermount3 -u: {left}"
    got = cache_entries(tmp_path / "xdg" / "picklefs")
    assert len(got) == 1, (f"one model entered without -o cache: want 1 entry in "
                           f"$XDG_CACHE_HOME/picklefs, got {got}")


def test_fstab_style_mount_fuse3(tmp_path):
    """An fstab line of type fuse.picklefs runs `mount.fuse3 SOURCE MNT -t picklefs -o OPTS`,
    which execs `picklefs` from the PATH: the same options must work that way."""
    mount_fuse3 = shutil.which("mount.fuse3") or "/sbin/mount.fuse3"
    if not os.path.exists(mount_fuse3):
        pytest.skip("mount.fuse3 is not installed")
    src, mnt, cache = tmp_path / "src", tmp_path / "mnt", tmp_path / "cache"
    os.makedirs(src)
    os.makedirs(mnt)
    model = _origin("zip_cuda_mnist_cnn.pt")
    shutil.copy2(model, src / "m.pt")
    env = dict(os.environ, PATH=os.path.dirname(picklefs()) + ":" + os.environ.get("PATH", ""))
    subprocess.run([mount_fuse3, str(src), str(mnt), "-t", "picklefs", "-o", f"ro,cache={cache}"],
                   env=env, check=True, timeout=30, capture_output=True)
    try:
        with open("/proc/mounts") as f:
            line = [l for l in f if f" {mnt} " in l]
        assert line and line[0].split()[2] == "fuse.picklefs" and "ro" in line[0].split()[3].split(",")
        want = json.loads(subprocess.run([picklefs(), "inspect", str(src / "m.pt")], check=True,
                                         capture_output=True).stdout)
        with open(mnt / "m.pt" / "meta.json") as f:
            assert json.load(f) == want
        assert cache_entries(cache), "the cache= option did not reach picklefs"
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True, timeout=30)
    deadline = time.time() + 10
    while time.time() < deadline and subprocess.run(["pgrep", "-f", str(mnt)],
                                                    capture_output=True).returncode == 0:
        time.sleep(0.1)
    assert subprocess.run(["pgrep", "-f", str(mnt)], capture_output=True).returncode != 0


def _cache_file(cache):
    entries = cache_entries(cache)
    assert len(entries) == 1, f"expected one index entry, found {entries}"
    return os.path.join(cache, entries[0])


def _meta_through(m, name):
    with open(m.path(name, "meta.json")) as f:
        return json.load(f)


def test_index_cache_is_used_and_repaired(tmp_path):
    src, cache = tmp_path / "src", tmp_path / "cache"
    os.makedirs(src)
    shutil.copy2(_origin("zip_cuda_mnist_cnn.pt"), src / "m.pt")
    shutil.copy2(_origin("sbi_minisbibm_theta_o_1.pt"), tmp_path / "other.pt")
    want = json.loads(subprocess.run([picklefs(), "inspect", str(src / "m.pt")], check=True,
                                     capture_output=True).stdout)
    exp = expected(str(src / "m.pt"))

    def check_mount():
        with mounted(src, tmp_path / "mnt", cache) as m:
            assert _meta_through(m, "m.pt") == want
            check_tensors(m.path("m.pt"), exp)

    check_mount()                                   # parses and writes the entry
    entry = _cache_file(cache)
    first = os.stat(entry)
    check_mount()                                   # remount: the entry is read, not rewritten
    again = os.stat(entry)
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns), \
        "the index entry was rewritten: the remount parsed the model again"

    good = open(entry, "rb").read()
    for damage in (good[: len(good) // 2], b"\x00" * len(good), good[:-1] + bytes([good[-1] ^ 0xFF])):
        with open(entry, "wb") as f:                # corrupt: ignored, parsed again, rewritten
            f.write(damage)
        check_mount()
        assert open(_cache_file(cache), "rb").read() == good

    # foreign: another model's entry under this name is ignored and replaced
    other_cache = tmp_path / "other-cache"
    with mounted(tmp_path / "other.pt", tmp_path / "mnt1", other_cache) as m:
        os.listdir(m.mountpoint)
    shutil.copyfile(_cache_file(other_cache), entry)
    check_mount()
    assert open(_cache_file(cache), "rb").read() == good

    # stale: the model file changed (same bytes, new mtime) -> a new entry for the new key
    os.utime(src / "m.pt", ns=(first.st_mtime_ns, first.st_mtime_ns + 10**9))
    check_mount()
    assert open(_cache_file(cache), "rb").read() != good
