"""Writing tensors through a real mount (DESIGN §4.1, §4.3; issue 4).

Every fixture and every real model file is copied into a source folder and mounted; one tensor
file of each gets new contents (every byte XOR 0x01, which keeps every dtype valid) by a
truncate-and-rewrite, like `cp`.  The close returns after the commit.  The model file on disk is
then read by the oracle (real torch / pickle with stand-in classes): exactly that tensor's
contents changed, every other tensor is byte-identical, the container and protocol are the same,
a zip passes zipfile's CRC check and libtorch's own reader (tests/tools/torch-zip-check).

The other kinds of writes are checked on a torch.save zip, a legacy file and a plain pickle:
dd conv=notrunc, numpy.memmap(mode="r+"), rsync of an edited backup (temporary file + rename),
refusals (EINVAL for a wrong dtype/shape, EPERM for new tensor names, unlink and mkdir), and
the mtimes kept after a commit so that a second rsync -a of the mount sends one file.
"""

import errno
import glob
import json
import os
import shutil
import subprocess
import time
import zipfile
import zlib

import numpy as np
import pytest

import oracle
import pfhelpers
from conftest import fixture_manifest, generated_dir
from mounting import mounted, write_file

# protocol-0 pickles hold _load_from_bytes blobs as text (UNICODE/STRING opcodes): not re-written
UNSUPPORTED = {"module_pickle_p0.pkl", "sd_pickle_p0.pkl"}
NOT_WRITTEN = r"^picklefs: .*: not (written|committed): .*"
TORCH_ZIP_CHECK = os.path.join(pfhelpers.BUILD, "tests", "torch-zip-check")


def _models():
    fx = [(e["name"], os.path.join(generated_dir(), e["name"])) for e in fixture_manifest()["fixtures"]]
    real = [(n, os.path.join(pfhelpers.REAL_DIR, n)) for n in pfhelpers.real_files()]
    return fx + real


def _tensor_paths(meta):
    out, stack = [], [meta["root"]]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            if isinstance(x.get("tensor"), str):
                out.append(x["tensor"])
                continue
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return sorted(set(out))


def _header_len(raw):
    return raw.index(b"\n") + 1


def _xor1(b):
    return (np.frombuffer(b, dtype=np.uint8) ^ 1).tobytes()


def _c_order_bytes(path):
    """The tensor file's contents in C order (what the oracle's crc32 is over)."""
    a = np.load(path)
    return np.ascontiguousarray(a).view(np.uint8).tobytes() if a.size else b""


# the corpus's NEGATIVE file is shown as a plain file, with one log line
NEGATIVE_LINE = r"^picklefs: sbi_npse_zip_versiononly.pkl: offset \d+: .*"
# a write to a protocol-0 pickle fails its commit, with one log line
UNSUPPORTED_LINES = [rf"^picklefs: {n}: not committed: .*not supported yet$" for n in sorted(UNSUPPORTED)]


def _all_models_in(tmp_path_factory, tag):
    """A fresh source folder holding a writable copy of every fixture and real file:
    (base folder, source folder, [(name, origin path)])."""
    base = tmp_path_factory.mktemp(tag)
    src = base / "src"
    os.makedirs(src)
    models = _models()
    for name, origin in models:
        shutil.copy(origin, src / name)
        os.chmod(src / name, 0o644)
    return base, src, models


@pytest.fixture(scope="module")
def rewritten(tmp_path_factory):
    base, src, models = _all_models_in(tmp_path_factory, "write-tensor")
    results = {}
    with mounted(src, base / "mnt", base / "cache", expect=UNSUPPORTED_LINES + [NEGATIVE_LINE]) as m:
        for name, _origin in models:
            d = m.path(name)
            if not os.path.isdir(d):
                continue
            with open(os.path.join(d, "meta.json")) as f:
                paths = [p for p in _tensor_paths(json.load(f)) if os.path.getsize(os.path.join(d, p)) > 128]
            if not paths:
                continue
            path = os.path.join(d, paths[len(paths) // 2])
            with open(path, "rb") as f:
                raw = f.read()
            old_c = _c_order_bytes(path)
            h = _header_len(raw)
            rc = write_file(path, raw[:h] + _xor1(raw[h:]))
            with open(path, "rb") as f:
                shown = f.read()
            results[name] = {"rc": rc, "path": paths[len(paths) // 2], "old_c": old_c,
                             "new_raw": raw[:h] + _xor1(raw[h:]), "shown": shown, "old_raw": raw}
    return src, dict(models), results


def _model_names():
    return [n for n, _ in _models()]


@pytest.mark.parametrize("name", _model_names())
def test_one_tensor_rewritten(rewritten, name):
    src, origins, results = rewritten
    if name not in results:
        pytest.skip(f"{name}: no tensor file (a plain file or a model without tensors)")
    r = results[name]
    if name in UNSUPPORTED:
        assert r["rc"] == errno.EOPNOTSUPP, f"{name}: close gave {r['rc']}"
        with open(src / name, "rb") as f, open(origins[name], "rb") as g:
            assert f.read() == g.read(), f"{name}: changed although the write was refused"
        return
    assert r["rc"] == 0, f"{name}: close() gave {errno.errorcode.get(r['rc'], r['rc'])}"
    assert r["shown"] == r["new_raw"], f"{name}: the tree does not show what was written"
    before = oracle.describe(origins[name])
    after = oracle.describe(str(src / name))
    assert after["container"] == before["container"]
    assert after["protocol"] == before["protocol"]
    assert after["globals"] == before["globals"]
    old_crc = zlib.crc32(r["old_c"]) & 0xFFFFFFFF
    new_crc = zlib.crc32(_xor1(r["old_c"])) & 0xFFFFFFFF
    old_keys = sorted(oracle.key(t) for t in before["tensors"])
    new_keys = sorted(oracle.key(t) for t in after["tensors"])
    hit = [i for i, k in enumerate(old_keys) if k[3] == old_crc]
    assert hit, f"{name}: the oracle has no tensor with the bytes the mount showed for {r['path']}"
    # one tensor changed (others with the same bytes, e.g. zeros, stay as they were)
    want = sorted(old_keys[:hit[0]] + old_keys[hit[0] + 1:] + [old_keys[hit[0]][:3] + (new_crc,)])
    if name.startswith("views_"):
        # views share their base's storage: writing one changes the others' bytes too
        assert len(new_keys) == len(want) and want[want.index(old_keys[hit[0]][:3] + (new_crc,))] in new_keys
    else:
        assert new_keys == want, f"{name}: tensors after the write differ from the expected ones"
    with open(src / name, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if is_zip:
        with zipfile.ZipFile(src / name) as z:
            assert z.testzip() is None, f"{name}: a record's CRC is wrong"
        if os.path.exists(TORCH_ZIP_CHECK):
            p = subprocess.run([TORCH_ZIP_CHECK, str(src / name)], capture_output=True, text=True, timeout=120)
            assert p.returncode == 0, f"{name}: libtorch's reader: {p.stderr}"


def test_file_length_kept_for_in_place_formats(rewritten):
    """Binary formats keep their length: only the tensor's bytes (and CRCs) differ."""
    src, origins, results = rewritten
    for name in ("sd_zip_p2.pt", "sd_legacy_p2.pt", "sd_pickle_p4.pkl"):
        with open(origins[name], "rb") as f:
            old = f.read()
        with open(src / name, "rb") as f:
            new = f.read()
        assert len(old) == len(new), name
        diff = sum(1 for a, b in zip(old, new) if a != b)
        nbytes = len(results[name]["old_c"])
        assert 0 < diff <= nbytes + 12, f"{name}: {diff} bytes differ for a {nbytes}-byte tensor"


# ---- the kinds of writes, on three containers ---------------------------------------------

def _make(path, kind):
    code = (
        "import torch, pickle, sys\n"
        "torch.manual_seed(0)\n"
        "sd = {'enc.weight': torch.randn(64, 32), 'enc.bias': torch.randn(64), 'head.w': torch.arange(12.).reshape(3, 4)}\n"
        "kind, path = sys.argv[1], sys.argv[2]\n"
        "if kind == 'zip': torch.save(sd, path)\n"
        "elif kind == 'legacy': torch.save(sd, path, _use_new_zipfile_serialization=False)\n"
        "else: pickle.dump(sd, open(path, 'wb'), protocol=4)\n")
    subprocess.run([pfhelpers.PYTHON, "-c", code, kind, str(path)], check=True, timeout=120)


def _load(path):
    code = ("import torch, pickle, sys, json\n"
            "p = sys.argv[1]\n"
            "head = open(p, 'rb').read(4)\n"
            "sd = torch.load(p) if head == b'PK\\x03\\x04' or p.endswith('.legacy') else pickle.load(open(p, 'rb'))\n"
            "print(json.dumps({k: v.flatten().tolist() for k, v in sd.items()}))\n")
    p = subprocess.run([pfhelpers.PYTHON, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


KINDS = [("zip", "m.pt"), ("legacy", "m.legacy"), ("pickle", "m.pkl")]


@pytest.fixture(params=KINDS, ids=[k for k, _ in KINDS])
def model(request, tmp_path):
    kind, name = request.param
    src = tmp_path / "src"
    os.makedirs(src)
    _make(src / name, kind)
    return tmp_path, src, name


def test_kinds_of_writes(model):
    tmp, src, name = model
    before = _load(src / name)
    refused = [r"^picklefs: .*enc/bias.npy: not written: the new .npy is <f4 \(63,\), the tensor <f4 \(64,\)$",
               r"^picklefs: .*enc/bias.npy: not written: the new .npy is <f8 \(64,\), the tensor <f4 \(64,\)$",
               r"^picklefs: .*enc/bias.npy: not written: npy: truncated magic$",
               r"^picklefs: .*enc/weight.npy: not written: npy: truncated magic$",
               r"^picklefs: .*head/w.npy: not written: npy: truncated magic$"]
    with mounted(src, tmp / "mnt", tmp / "cache", expect=refused) as m:
        d = m.path(name)
        w = os.path.join(d, "enc", "weight.npy")
        # dd conv=notrunc: 8 bytes inside the data
        patch = np.array([1.5, -2.5], dtype="<f4").tobytes()
        hl = _header_len(open(w, "rb").read(4096))
        subprocess.run(["dd", f"of={w}", "bs=1", f"seek={hl + 4}", "conv=notrunc", "status=none"],
                       input=patch, check=True)
        got = _load(src / name)
        assert got["enc.weight"][1:3] == [1.5, -2.5]
        assert got["enc.weight"][0] == before["enc.weight"][0] and got["enc.weight"][3:] == before["enc.weight"][3:]
        # numpy.memmap(mode="r+"): written back at flush/munmap, committed by the timer or here by fsync
        mm = np.load(os.path.join(d, "head", "w.npy"), mmap_mode="r+")
        mm[2, 3] = 42.0
        mm.flush()
        del mm
        fd = os.open(os.path.join(d, "head", "w.npy"), os.O_RDWR)
        os.fsync(fd)
        os.close(fd)
        assert _load(src / name)["head.w"][11] == 42.0
        # numpy.save over the file (truncate and rewrite)
        np.save(os.path.join(d, "enc", "bias.npy"), np.full(64, 3.0, dtype=np.float32))
        assert _load(src / name)["enc.bias"] == [3.0] * 64
        assert np.array_equal(np.load(os.path.join(d, "enc", "bias.npy")), np.full(64, 3.0, dtype=np.float32))
        # refused: another shape, another dtype: EINVAL and nothing changes
        snapshot = open(src / name, "rb").read()
        bad_shape = tmp / "bad.npy"
        np.save(bad_shape, np.zeros(63, dtype=np.float32))
        assert write_file(os.path.join(d, "enc", "bias.npy"), open(bad_shape, "rb").read()) == errno.EINVAL
        np.save(bad_shape, np.zeros(64, dtype=np.float64))
        assert write_file(os.path.join(d, "enc", "bias.npy"), open(bad_shape, "rb").read()) == errno.EINVAL
        # truncated and closed with nothing written: `truncate -s 0` (ftruncate) gets EINVAL;
        # O_TRUNC alone (`: > f`) cannot be told from a shell's dup2-then-close before its write,
        # so it is checked at release: close() says 0, the log says why, nothing changes
        with pytest.raises(OSError) as e:
            os.truncate(os.path.join(d, "head", "w.npy"), 0)
        assert e.value.errno == errno.EINVAL
        p = subprocess.run(["truncate", "-s", "0", os.path.join(d, "enc", "bias.npy")], capture_output=True, text=True)
        assert p.returncode != 0 and "Invalid argument" in p.stderr
        assert write_file(os.path.join(d, "enc", "weight.npy"), b"") == 0

        assert open(src / name, "rb").read() == snapshot
        assert np.load(os.path.join(d, "enc", "bias.npy"))[0] == 3.0
        assert np.load(os.path.join(d, "head", "w.npy"))[2, 3] == 42.0
        # new tensor names, unlink, mkdir: refused with a clear errno
        with pytest.raises(PermissionError):
            np.save(os.path.join(d, "enc", "new.npy"), np.zeros(3))
        with pytest.raises(PermissionError):
            os.unlink(os.path.join(d, "enc", "bias.npy"))
        with pytest.raises(PermissionError):
            os.mkdir(os.path.join(d, "newdir"))
        with pytest.raises(PermissionError):
            os.rename(os.path.join(d, "enc", "bias.npy"), os.path.join(d, "enc", "other"))
        assert open(src / name, "rb").read() == snapshot
        # a temporary file that is never renamed stays out of the model
        with open(os.path.join(d, ".scratch.tmp"), "wb") as f:
            f.write(b"x" * 100)
        assert ".scratch.tmp" in os.listdir(d)
        os.unlink(os.path.join(d, ".scratch.tmp"))
        assert ".scratch.tmp" not in os.listdir(d)
    assert open(src / name, "rb").read() == snapshot
    assert sorted(os.listdir(src)) == [name], "spool or temporary files left beside the model"
    if name.endswith(".pt") and os.path.exists(TORCH_ZIP_CHECK):
        # libtorch: its zip reader, and its own unpickler (torch::jit::pickle_load, which reads a
        # plain dict of tensors at protocol 2) see exactly the tensors torch.load sees
        p = subprocess.run([TORCH_ZIP_CHECK, str(src / name)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        p = subprocess.run([TORCH_ZIP_CHECK, "--tensors", str(src / name)], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stderr
        got = {ln.split()[0]: int(ln.split()[3], 16) for ln in p.stdout.splitlines()}
        want = {k: zlib.crc32(np.array(v, dtype=np.float32).tobytes()) & 0xFFFFFFFF
                for k, v in _load(src / name).items()}
        assert got == want


def _rsync(*args):
    p = subprocess.run(["rsync", *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def _sent_files(stats):
    for line in stats.splitlines():
        if line.startswith("Number of regular files transferred:"):
            return int(line.split(":")[1].replace(",", ""))
    raise AssertionError("no rsync --stats line:\n" + stats)


def test_rsync_restore_and_mtimes(model):
    """rsync -a of an edited backup onto the mount (temporary file + rename) restores the tensors;
    afterwards only changed entries have a new mtime, so a second rsync -a of the mount into the
    backup transfers exactly the changed tensor (and meta.json only if its bytes changed)."""
    tmp, src, name = model
    bk = tmp / "bk"
    with mounted(src, tmp / "mnt", tmp / "cache", args=["-o", "commit_delay=100"], optional=[NOT_WRITTEN]) as m:
        d = m.path(name)
        _rsync("-a", d + "/", str(bk) + "/")
        assert _sent_files(_rsync("-a", "--stats", d + "/", str(bk) + "/")) == 0
        # edit two tensors in the backup and restore them onto the mount
        np.save(bk / "enc" / "bias.npy", np.arange(64, dtype=np.float32))
        np.save(bk / "head" / "w.npy", -np.arange(12, dtype=np.float32).reshape(3, 4))
        for p in (bk / "enc" / "bias.npy", bk / "head" / "w.npy"):  # edited later than the model's mtime
            st = os.stat(p)
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
        out = _rsync("-a", "--stats", str(bk) + "/", d + "/")
        assert _sent_files(out) == 2
        # the timer commits commit_delay after the last rename; fsync of a file commits at once
        fd = os.open(os.path.join(d, "enc", "bias.npy"), os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        got = _load(src / name)
        assert got["enc.bias"] == list(range(64))
        assert got["head.w"] == [-float(i) for i in range(12)]
        # one tensor changes through the mount: the next backup run sends exactly that file
        _rsync("-a", d + "/", str(bk) + "/")
        time.sleep(1.1)  # rsync compares whole seconds on some file systems
        np.save(os.path.join(d, "enc", "bias.npy"), np.ones(64, dtype=np.float32))
        out = _rsync("-a", "--stats", "--itemize-changes", d + "/", str(bk) + "/")
        assert _sent_files(out) == 1, out
        assert "enc/bias.npy" in out


def test_device_commits_keep_tensor_mtimes(tmp_path):
    """`echo cuda:0 > device` changes device and meta.json; the tensor files keep their mtimes."""
    src = tmp_path / "src"
    os.makedirs(src)
    _make(src / "m.pt", "zip")
    with mounted(src, tmp_path / "mnt", tmp_path / "cache") as m:
        d = m.path("m.pt")
        before = {p: os.stat(os.path.join(d, p)).st_mtime_ns for p in ("enc/weight.npy", "device", "meta.json")}
        # the shell's way: open, dup2 to stdout, close the first fd, write, close
        subprocess.run(["sh", "-c", f"echo cuda:0 > {os.path.join(d, 'device')}"], check=True, timeout=60)
        after = {p: os.stat(os.path.join(d, p)).st_mtime_ns for p in before}
        assert after["enc/weight.npy"] == before["enc/weight.npy"]
        assert after["device"] > before["device"] and after["meta.json"] > before["meta.json"]
        with open(os.path.join(d, "device")) as f:
            assert f.read() == "cuda:0\n"
    # remount: the index cache keeps the entries' own mtimes
    with mounted(src, tmp_path / "mnt", tmp_path / "cache") as m:
        d = m.path("m.pt")
        again = {p: os.stat(os.path.join(d, p)).st_mtime_ns for p in after}
        assert again == after


# ---- globals and meta.json ---------------------------------------------------------------

_NUMPY2_PICKLE = r"""
import pickle, sys, numpy as np
a = np.arange(6, dtype=np.float64).reshape(2, 3)
b = pickle.dumps({'a': a, 'n': 3}, protocol=int(sys.argv[2]))
# what numpy 2 writes: numpy._core.multiarray, which numpy 1.24 cannot import
if int(sys.argv[2]) >= 4:
    old = b'\x8c\x15numpy.core.multiarray'
    assert old in b
    b = b.replace(old, b'\x8c\x16numpy._core.multiarray')
else:
    assert b'cnumpy.core.multiarray\n' in b
    b = b.replace(b'cnumpy.core.multiarray\n', b'cnumpy._core.multiarray\n')
open(sys.argv[1], 'wb').write(b)
"""


def _unframed_p4(path):
    """Protocol 4 with the FRAME opcode dropped (frames are optional; its length would be off
    after the byte-level edit above)."""
    import pickletools
    data = open(path, "rb").read()
    ops = list(pickletools.genops(data))
    out = bytearray()
    for i, (op, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(data)
        if op.name != "FRAME":
            out += data[pos:end]
    open(path, "wb").write(bytes(out))


@pytest.mark.parametrize("protocol", [2, 4])
def test_globals_rename_with_sed(tmp_path, protocol):
    """A numpy 2 pickle names numpy._core.multiarray; `sed -i` on globals renames it to
    numpy.core.multiarray everywhere, and numpy 1.24 then loads the file."""
    src = tmp_path / "src"
    os.makedirs(src)
    path = src / "arrays.pkl"
    subprocess.run([pfhelpers.PYTHON, "-c", _NUMPY2_PICKLE, str(path), str(protocol)], check=True, timeout=60)
    if protocol >= 4:
        _unframed_p4(path)
    p = subprocess.run([pfhelpers.PYTHON, "-c", "import pickle,sys; pickle.load(open(sys.argv[1],'rb'))", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "numpy._core" in p.stderr, "the numpy 2 pickle should not load here"
    refused = [r"^picklefs: arrays.pkl/globals: not written: globals: (\d+) lines written, the model has \d+ globals"]
    with mounted(src, tmp_path / "mnt", tmp_path / "cache", expect=refused) as m:
        g = m.path("arrays.pkl", "globals")
        before = open(g).read()
        assert "numpy._core.multiarray _reconstruct\n" in before
        subprocess.run(["sed", "-i", "s/^numpy\\._core\\.multiarray /numpy.core.multiarray /", g], check=True)
        fd = os.open(g, os.O_RDONLY)
        os.fsync(fd)  # commits what the rename left pending
        os.close(fd)
        after = open(g).read()
        assert after == before.replace("numpy._core.multiarray", "numpy.core.multiarray")
        # a different number of lines is refused
        assert write_file(g, after.encode() + b"extra line\n") == errno.EINVAL
    code = ("import pickle,sys,numpy as np\n"
            "d = pickle.load(open(sys.argv[1],'rb'))\n"
            "assert d['n'] == 3 and np.array_equal(d['a'], np.arange(6.).reshape(2, 3)), d\n")
    p = subprocess.run([pfhelpers.PYTHON, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_globals_rename_sbi_class_path(tmp_path):
    """An sbi stand-in posterior: a class path that moved between sbi versions is renamed in the
    globals file; the pickle then names the new path and its tensors are unchanged."""
    src = tmp_path / "src"
    os.makedirs(src)
    name = "sbi_posterior_cpu_p4.pkl"
    shutil.copy(os.path.join(generated_dir(), name), src / name)
    before = oracle.describe(str(src / name))
    with mounted(src, tmp_path / "mnt", tmp_path / "cache") as m:
        g = m.path(name, "globals")
        lines = open(g).read().splitlines()
        i = next(k for k, ln in enumerate(lines) if ln.startswith("sbi."))
        mod, cls = lines[i].split(" ")
        moved = mod.replace("sbi.", "sbi.moved.", 1)
        lines[i] = f"{moved} {cls}"
        tmp = m.path(name, ".globals.edit")
        with open(tmp, "w") as f:  # what an editor does: a new file renamed over the old one
            f.write("\n".join(lines) + "\n")
        os.rename(tmp, g)
        assert open(g).read().splitlines()[i] == f"{moved} {cls}"
    after = oracle.describe(str(src / name))
    assert (moved, cls) in [tuple(x) for x in after["globals"]]
    assert (mod, cls) not in [tuple(x) for x in after["globals"]]
    assert sorted(oracle.key(t) for t in after["tensors"]) == sorted(oracle.key(t) for t in before["tensors"])


def test_meta_json_scalar_edits(tmp_path):
    src = tmp_path / "src"
    os.makedirs(src)
    subprocess.run([pfhelpers.PYTHON, "-c",
                    "import torch,sys; torch.save({'lr': 0.001, 'epochs': 10, 'name': 'x', 'flag': True, "
                    "'none': None, 'w': torch.arange(3.)}, sys.argv[1])", str(src / "h.pt")], check=True, timeout=60)
    refused = [r"^picklefs: h.pt/meta.json: not written: .*"]
    with mounted(src, tmp_path / "mnt", tmp_path / "cache", expect=refused) as m:
        mj = m.path("h.pt", "meta.json")
        meta = json.load(open(mj))
        # a structural change is refused and changes nothing
        bad = json.loads(json.dumps(meta))
        bad["root"]["extra"] = 1
        snapshot = open(src / "h.pt", "rb").read()
        assert write_file(mj, json.dumps(bad).encode()) == errno.EINVAL
        assert open(src / "h.pt", "rb").read() == snapshot
        # scalar values: saved in place, compact formatting (any valid JSON)
        meta["root"].update(lr=0.01, epochs=20, name="a longer name", flag=False)
        assert write_file(mj, json.dumps(meta).encode()) == 0
        shown = json.load(open(mj))
        assert shown["root"]["lr"] == 0.01 and shown["root"]["name"] == "a longer name"
    code = ("import torch,sys\n"
            "d = torch.load(sys.argv[1])\n"
            "assert d['lr'] == 0.01 and d['epochs'] == 20 and d['name'] == 'a longer name', d\n"
            "assert d['flag'] is False and d['none'] is None and d['w'].tolist() == [0., 1., 2.], d\n")
    p = subprocess.run([pfhelpers.PYTHON, "-c", code, str(src / "h.pt")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    with zipfile.ZipFile(src / "h.pt") as z:
        assert z.testzip() is None


@pytest.fixture(scope="module")
def resaved(tmp_path_factory):
    """Every model: meta.json saved again the way an editor saves it (other indentation, a
    temporary file renamed over it), globals through `sed -i` with a substitution that matches
    nothing, and device written back when it names one device (torch.device('cuda', 0) stays
    as it is for cuda:0)."""
    base, src, models = _all_models_in(tmp_path_factory, "write-noop")
    results = {}
    with mounted(src, base / "mnt", base / "cache", args=["-o", "commit_delay=0"], expect=[NEGATIVE_LINE]) as m:
        for name, _origin in models:
            d = m.path(name)
            if not os.path.isdir(d):
                continue
            mj = os.path.join(d, "meta.json")
            with open(mj) as f:
                meta = json.load(f)
            tmp = os.path.join(d, ".meta.json.swp")
            with open(tmp, "w") as f:
                json.dump(meta, f, indent=1)
            os.rename(tmp, mj)
            subprocess.run(["sed", "-i", "s/^no-such-module-here /x /", os.path.join(d, "globals")], check=True)
            with open(os.path.join(d, "device")) as f:
                lines = f.readlines()
            # one device: written back it changes nothing (several: writing one is a change)
            rc = write_file(os.path.join(d, "device"), lines[0].encode()) if len(lines) == 1 else 0
            fd = os.open(mj, os.O_RDONLY)
            try:
                os.fsync(fd)
                synced = 0
            except OSError as e:
                synced = e.errno
            os.close(fd)
            results[name] = (rc, synced)
    return src, dict(models), results


@pytest.mark.parametrize("name", _model_names())
def test_unchanged_saves_leave_the_file_alone(resaved, name):
    src, origins, results = resaved
    if name not in results:
        pytest.skip(f"{name}: shown as a plain file")
    assert results[name] == (0, 0), f"{name}: device write / fsync gave {results[name]}"
    with open(src / name, "rb") as f, open(origins[name], "rb") as g:
        assert f.read() == g.read(), f"{name}: changed although nothing was edited"


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    """Every model moved to another device: `echo cuda:1 > device`."""
    base, src, models = _all_models_in(tmp_path_factory, "write-cuda1")
    results = {}
    with mounted(src, base / "mnt", base / "cache", optional=UNSUPPORTED_LINES + [NEGATIVE_LINE]) as m:
        for name, _origin in models:
            d = m.path(name)
            if os.path.isdir(d):
                results[name] = write_file(os.path.join(d, "device"), b"cuda:1\n")
    return src, dict(models), results


@pytest.mark.parametrize("name", _model_names())
def test_every_model_moves_to_another_device(moved, name):
    """Every storage location says cuda:1 afterwards, no tensor byte changed, zips stay valid."""
    src, origins, results = moved
    if name not in results:
        pytest.skip(f"{name}: shown as a plain file")
    rc = results[name]
    if rc == errno.EOPNOTSUPP and name in UNSUPPORTED:
        return
    assert rc == 0, f"{name}: close() gave {errno.errorcode.get(rc, rc)}"
    before = oracle.describe(origins[name])
    after = oracle.describe(str(src / name))
    assert sorted(oracle.key(t) for t in after["tensors"]) == sorted(oracle.key(t) for t in before["tensors"])
    if before["storage_locations"]:
        assert set(after["storage_locations"]) == {"cuda:1"}, f"{name}: {after['storage_locations']}"
    with open(src / name, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if is_zip:
        with zipfile.ZipFile(src / name) as z:
            assert z.testzip() is None
        if os.path.exists(TORCH_ZIP_CHECK):
            p = subprocess.run([TORCH_ZIP_CHECK, str(src / name)], capture_output=True, text=True, timeout=120)
            assert p.returncode == 0, f"{name}: libtorch's reader: {p.stderr}"
