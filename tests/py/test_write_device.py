"""`echo cpu > device` through a real mount (DESIGN §4.2; the first part of the write path).

Every GPU-saved fixture (made by torch's own serializer with the location forced to cuda:0) and
every cuda:0 file of the real corpus is copied into a source folder and mounted; "cpu\\n" is
written to its `device` file. Where the rewrite is supported, the model file on disk then loads
with a plain torch.load / pickle.load on this CPU-only machine (no map_location), holds the same
tensor bytes, reports cpu for every storage, and a zip still passes zipfile's CRC check. Every
one of them must succeed: same-length edits in place, and the rewrites that change a length
(the real skorch protocol-4 pickle whose embedded torch.save zip's data.pkl shrinks, so the zip
is re-written in torch's layout and the outer BINBYTES / frames follow) or re-encode a protocol-2
_load_from_bytes blob held as latin-1 text (gpu_pickle_p2, the sbi p2 stand-ins). What stays
unsupported (deflated records, blobs in protocol-0 text opcodes) has no fixture here; close()
would fail with EOPNOTSUPP and change nothing. Junk is refused with EINVAL and changes nothing.
"""

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import zipfile

import pytest

import oracle
import pfhelpers
from conftest import fixture_manifest, generated_dir
from mounting import mounted, write_file

REAL_CUDA = ["zip_cuda_mnist_cnn.pt", "legacy_cuda_skorch_net_cuda.pt", "pkl_cuda_skorch_2022_p4.pkl"]


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _gpu_models():
    fx = [(e["name"], os.path.join(generated_dir(), e["name"]), e["container"])
          for e in fixture_manifest()["fixtures"] if e["gpu"]]
    real = [(n, os.path.join(pfhelpers.REAL_DIR, n), None) for n in REAL_CUDA]
    return fx + real


def _plain_load_errors(paths):
    env = dict(os.environ, PYTHONPATH=os.path.join(pfhelpers.REPO, "tests", "sbi"))
    p = subprocess.run([pfhelpers.PYTHON, os.path.join(pfhelpers.HERE, "oracle.py"), "--plain-load"] + paths,
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


_STUB_LOAD = r"""
import io, json, pickle, sys, types, warnings
import torch
class Stub:
    def __init__(self, *a, **k): pass
    def __setstate__(self, st): self.__dict__['_state'] = st
    def append(self, x): self.__dict__.setdefault('_items', []).append(x)
    def extend(self, xs): self.__dict__.setdefault('_items', []).extend(xs)
    def __setitem__(self, k, v): self.__dict__.setdefault('_map', {})[k] = v
class U(pickle.Unpickler):
    def find_class(self, mod, name):
        try:
            return super().find_class(mod, name)
        except (ImportError, AttributeError):
            return type(name, (Stub,), {'__module__': mod})
pickle.Unpickler = U  # this torch.load ignores pickle_module= and always uses pickle's
out = {}
for p in sys.argv[1:]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            with open(p, 'rb') as f:
                o = U(f).load()
            # skorch's __setstate__ would torch.load its torch.save blobs: do so, no map_location
            stack, seen, n = [o], set(), 0
            while stack:
                x = stack.pop()
                if id(x) in seen: continue
                seen.add(id(x))
                if isinstance(x, bytes) and x[:4] == b'PK\x03\x04':
                    torch.load(io.BytesIO(x)); n += 1
                elif isinstance(x, dict): stack.extend(x.values())
                elif isinstance(x, (list, tuple)): stack.extend(x)
                elif hasattr(x, '__dict__'): stack.extend(x.__dict__.values())
            assert n, 'no torch.save blob found'
        out[p] = None
    except Exception as e:
        out[p] = f'{type(e).__name__}: {e}'
print(json.dumps(out))
"""


def _stub_load_errors(paths):
    """A plain pickle.load (real torch, real _load_from_bytes = torch.load without map_location)
    where only classes of modules missing here (skorch) are stand-ins."""
    p = subprocess.run([pfhelpers.PYTHON, "-c", _STUB_LOAD] + paths, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


def _device_strings(node, out):
    """Every str value in meta.json that names a cuda device (class paths and keys excluded)."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)
        elif isinstance(n, str) and re.fullmatch(r"cuda(:\d+)?", n):
            out.append(n)
    return out


@pytest.fixture(scope="module")
def rewritten(tmp_path_factory):
    base = tmp_path_factory.mktemp("write-device")
    src = base / "src"
    os.makedirs(src)
    models = _gpu_models()
    before = {}
    for name, origin, _container in models:
        shutil.copy(origin, src / name)
        os.chmod(src / name, 0o644)
        before[name] = (_sha(src / name), oracle.describe(str(src / name)))
    results = {}
    optional = [rf"^picklefs: {re.escape(n)}: not committed: .*not supported yet" for n, _, _ in models]
    optional.append(r"^picklefs: .*/device: not written: not a device: .*")  # the junk below
    with mounted(src, base / "mnt", base / "cache", optional=optional) as m:
        junk_name = models[0][0]
        results["__junk__"] = (write_file(m.path(junk_name, "device"), b"gpu\n"),
                               _sha(src / junk_name) == before[junk_name][0])
        for name, _, _ in models:
            rc = write_file(m.path(name, "device"), b"cpu\n")
            with open(m.path(name, "device")) as f:
                shown = f.read()
            with open(m.path(name, "meta.json")) as f:
                meta = json.load(f)
            results[name] = (rc, shown, meta)
    return src, models, before, results


def test_junk_is_refused(rewritten):
    _src, _models, _before, results = rewritten
    rc, unchanged = results["__junk__"]
    assert rc == errno.EINVAL and unchanged


def test_supported_rewrites_load_on_cpu(rewritten):
    src, models, before, results = rewritten
    done = [n for n, _, _ in models if results[n][0] == 0]
    # every GPU file must be rewritable now, length changes and latin-1 blobs included
    for name, _origin, _container in models:
        rc = results[name][0]
        assert rc == 0, f"{name}: close() gave {errno.errorcode.get(rc, rc)}"
    for name in ("gpu_pickle_p2.pkl", "sbi_posterior_gpu_p2.pkl", "sbi_inference_gpu_p2.pkl",
                 "pkl_cuda_skorch_2022_p4.pkl", "zip_cuda_mnist_cnn.pt", "legacy_cuda_skorch_net_cuda.pt"):
        assert name in done, f"{name}: missing from the rewritten models"
    # skorch is not installed here: its classes are stand-ins, torch and the blobs are real
    stubbed = [n for n in done if "skorch" in n and n.endswith(".pkl")]
    errors = _plain_load_errors([str(src / n) for n in done if n not in stubbed])
    errors.update(_stub_load_errors([str(src / n) for n in stubbed]))
    for name in done:
        path = str(src / name)
        assert errors[path] is None, f"{name}: plain load after `echo cpu > device`: {errors[path]}"
        after = oracle.describe(path)
        want = sorted(oracle.key(r) for r in before[name][1]["tensors"])
        assert sorted(oracle.key(r) for r in after["tensors"]) == want, f"{name}: tensor bytes changed"
        got = pfhelpers.dump_ok(path)
        assert got["devices"] in ([], ["cpu"]), f"{name}: devices after rewrite {got['devices']}"
        assert all(t["device"] in (None, "cpu") for t in got["tensors"])
        rc, shown, meta = results[name]
        assert shown == "cpu\n" or (shown == "" and not got["devices"]), f"{name}: device file says {shown!r}"
        assert _device_strings(meta["root"], []) == [], f"{name}: meta.json still names a cuda device"
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
        if is_zip:
            with zipfile.ZipFile(path) as z:
                assert z.testzip() is None, f"{name}: a record's CRC is wrong"


def test_length_changes_keep_what_need_not_change(rewritten):
    """The real skorch pickle: its embedded zip is re-written in torch's layout (64-byte aligned
    records, CRCs right), its tensor records byte-identical, only data.pkl changed."""
    src, _models, _before, results = rewritten
    name = "pkl_cuda_skorch_2022_p4.pkl"
    assert results[name][0] == 0
    code = ("import pickle,pickletools,io,sys,zipfile,json\n"
            "def blobs(path):\n"
            " out=[]\n"
            " for op,arg,pos in pickletools.genops(open(path,'rb').read()):\n"
            "  if isinstance(arg,bytes) and arg[:4]==b'PK\\x03\\x04': out.append(arg)\n"
            " return out\n"
            "res=[]\n"
            "for path in sys.argv[1:]:\n"
            " r=[]\n"
            " for b in blobs(path):\n"
            "  z=zipfile.ZipFile(io.BytesIO(b)); assert z.testzip() is None\n"
            "  recs={i.filename:(i.header_offset,z.read(i.filename).hex()) for i in z.infolist()}\n"
            "  r.append(recs)\n"
            " res.append(r)\n"
            "print(json.dumps(res))\n")
    p = subprocess.run([pfhelpers.PYTHON, "-c", code, os.path.join(pfhelpers.REAL_DIR, name), str(src / name)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    old, new = json.loads(p.stdout.splitlines()[-1])
    assert len(old) == len(new) >= 1
    changed = 0
    for o, n in zip(old, new):
        assert sorted(o) == sorted(n)
        for rec in o:
            if rec.endswith("data.pkl"):
                changed += o[rec][1] != n[rec][1]
            else:
                assert o[rec][1] == n[rec][1], f"{rec}: record bytes changed"
    assert changed >= 1


def test_sbi_standin_devices_say_cpu(rewritten):
    """The sbi stand-in: `_device`, `device` and the potential's device all say cpu after the rewrite."""
    src, models, _before, results = rewritten
    sbi = [n for n, _, _ in models if "sbi" in n and results[n][0] == 0]
    if not sbi:
        pytest.skip("no sbi stand-in fixture was rewritable in this stop (all need a length change)")
    for name in sbi:
        env = dict(os.environ, PYTHONPATH=os.path.join(pfhelpers.REPO, "tests", "sbi"))
        code = ("import pickle,sys,re\n"
                "import torch\n"
                "f=open(sys.argv[1],'rb')\n"
                "head=f.read(4); f.seek(0)\n"
                "o=torch.load(f) if head in (b'PK\\x03\\x04', b'\\x80\\x02\\x8a\\x0a') else pickle.load(f)\n"
                "seen=[]\n"
                "stack=[o]; ids=set()\n"
                "while stack:\n"
                " x=stack.pop()\n"
                " if id(x) in ids: continue\n"
                " ids.add(id(x))\n"
                " d=getattr(x,'__dict__',None)\n"
                " if isinstance(d,dict):\n"
                "  for k,v in d.items():\n"
                "   if k in ('_device','device'): seen.append(str(v))\n"
                "   stack.append(v)\n"
                " elif isinstance(x,dict): stack.extend(x.values())\n"
                " elif isinstance(x,(list,tuple)): stack.extend(x)\n"
                "print(repr(seen))\n")
        p = subprocess.run([pfhelpers.PYTHON, "-c", code, str(src / name)], capture_output=True, text=True,
                           env=env, timeout=120)
        assert p.returncode == 0, p.stderr
        seen = eval(p.stdout.strip())
        assert seen and all(s == "cpu" for s in seen if s != "None"), f"{name}: devices {seen}"


def test_crash_leftovers_are_removed(tmp_path):
    """A rewrite's temporary file left by a crash (.NAME.picklefs-XXXXXX) is not shown and is
    removed when its folder is next listed; other dot files stay."""
    src = tmp_path / "src"
    os.makedirs(src / "sub")
    leftovers = [src / ".m.pt.picklefs-0a1b2c", src / "sub" / ".x.pkl.picklefs-ffffff"]
    keep = [src / ".hidden", src / "sub" / ".m.pt.picklefs-notatmp"]
    for p in leftovers + keep:
        p.write_bytes(b"partial")
    with mounted(src, tmp_path / "mnt", tmp_path / "cache") as m:
        for p in leftovers:
            rel = os.path.relpath(p, src)
            assert os.path.basename(rel) not in os.listdir(m.path(os.path.dirname(rel) or "."))
            assert not os.path.exists(m.path(rel))
        for p in keep:
            assert os.path.exists(m.path(os.path.relpath(p, src)))
    assert not any(p.exists() for p in leftovers)
    assert all(p.exists() for p in keep)
