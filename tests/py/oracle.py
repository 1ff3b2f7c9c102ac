"""Independent oracle for picklefs tests: what tensors does a model file really hold?

Loads any fixture or real-corpus file with PyTorch/numpy/pickle themselves (never with picklefs
code) and lists the tensors and numpy arrays reachable from the root:

* torch.save zip / legacy: ``torch.load(map_location=<recorder>)`` with ``torch.serialization.pickle``
  replaced by a module whose ``Unpickler.find_class`` hands out inert stand-in classes for
  anything that cannot (or must not) be imported: sbi, nflows, zuko, skorch, ``__torch__`` and
  any other missing module/attribute.  (Debian's torch 1.13 ignores ``torch.load(pickle_module=)``.)
* plain pickles: the same Unpickler, with ``torch.storage._load_from_bytes`` mapped to
  ``lambda b: torch.load(io.BytesIO(b), map_location=<recorder>)`` (the sbi FAQ's CPU unpickler).
* TorchScript zips: ``data.pkl`` and ``constants.pkl`` unpickled the same way, storages read from
  the archive's ``data/<key>`` / ``constants/<key>`` records with ``zipfile``.

The map_location recorder keeps every storage's saved location, so each tensor also reports the
device it was saved on (``cuda:0`` for the GPU fixtures) although everything is loaded on the CPU.

``tensors(obj)`` walks the loaded graph iteratively (dicts: keys and values; lists, tuples, sets;
object ``__dict__``/slots; stand-in state; nn.Module; bytes values that are whole torch.save
files, loaded recursively; numpy object arrays), deduplicated by object identity, and returns one
record per tensor / non-object numpy array:
``{"dtype", "shape", "nbytes", "crc32", "crc32_f", "device"}`` where crc32 is ``zlib.crc32`` of the
logical contents in C order (bfloat16 as its int16 bits, bool one byte each, numpy in its own byte
order) and crc32_f the same in Fortran order, for tensors whose storage is already in Fortran
order (None otherwise).

Command line: ``/usr/bin/python3 tests/py/oracle.py FILE...`` prints one JSON summary per file.
"""

import collections
import io
import json
import pickle
import pickletools
import sys
import types
import warnings
import zipfile
import zlib

import numpy as np
import torch

MAGIC = 0x1950A86A20F9469CFC6C
CUDA_ERROR = "Attempting to deserialize object on a CUDA device"

# Top-level packages that are always replaced by stand-ins, even if importable: the oracle must
# not run third-party __setstate__ code (skorch re-loads, sbi <= 0.25 makes tensorboard writers).
FORCE_STANDIN = {"sbi", "nflows", "zuko", "skorch", "pyknos", "pyro", "__torch__", "__main__"}
# Callables a hostile pickle could use for side effects: never handed out.
DENY = {
    ("builtins", n) for n in ("eval", "exec", "compile", "open", "__import__", "input",
                              "breakpoint", "exit", "quit", "delattr", "setattr", "globals")
} | {("__builtin__", n) for n in ("eval", "exec", "compile", "open", "__import__", "file")}
DENY_MODULES = {"os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib",
                "runpy", "ctypes", "pty", "webbrowser", "code", "pdb", "multiprocessing",
                "signal", "io", "tempfile", "pathlib"}
RENAMES = {"numpy._core.multiarray": "numpy.core.multiarray",
           "numpy._core.numeric": "numpy.core.numeric",
           "numpy._core": "numpy.core"}


class OracleError(Exception):
    pass


# ------------------------------------------------------------------------------------------
# inert stand-ins


class StandIn:
    """Instance of a class/function the oracle would not import. Keeps whatever it is given."""

    _pf_global = ("?", "?")

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__["_pf_args"] = args
        obj.__dict__["_pf_kwargs"] = kwargs
        return obj

    def __init__(self, *args, **kwargs):
        self.__dict__["_pf_args"] = args
        self.__dict__["_pf_kwargs"] = kwargs

    def __setstate__(self, state):
        self.__dict__["_pf_state"] = state

    def append(self, item):
        self.__dict__.setdefault("_pf_items", []).append(item)

    def extend(self, items):
        self.__dict__.setdefault("_pf_items", []).extend(items)

    def __setitem__(self, key, value):
        self.__dict__.setdefault("_pf_setitems", []).append((key, value))

    def __repr__(self):
        return f"<stand-in {self._pf_global[0]}.{self._pf_global[1]}>"


_STANDINS = {}


def standin(module, name):
    key = (module, name)
    if key not in _STANDINS:
        cls = type(str(name).split(".")[-1] or "anon", (StandIn,), {"_pf_global": key})
        cls.__module__ = "pf_standin." + str(module)
        _STANDINS[key] = cls
    return _STANDINS[key]


# ------------------------------------------------------------------------------------------
# numpy arrays exactly as pickled


class KeepOrderArray(np.ndarray):
    """ndarray whose unpickling keeps the pickled byte order.

    numpy's own ``ndarray.__setstate__`` (the protocol <= 4 ``_reconstruct`` + BUILD form)
    byte-swaps a non-native array ('>i4') into native order on load, while the protocol-5
    ``_frombuffer`` form keeps '>i4'.  The file holds big-endian bytes either way, and that is
    what the oracle reports.
    """

    def __setstate__(self, state):
        if len(state) == 5:
            version, shape, dtype, fortran, raw = state
        else:
            version, (shape, dtype, fortran, raw) = None, state
        if isinstance(raw, (bytes, bytearray)) and not dtype.isnative and dtype.byteorder in "<>":
            native = dtype.newbyteorder("=")
            st = (shape, native, fortran, raw) if version is None else (version, shape, native, fortran, raw)
            super().__setstate__(st)
            self.dtype = dtype  # reinterpret the same bytes in the pickled byte order
        else:
            super().__setstate__(state)


def _reconstruct_keep_order(subtype, shape, dtype):
    if subtype is np.ndarray:
        subtype = KeepOrderArray
    return np.ndarray.__new__(subtype, shape, dtype)


# ------------------------------------------------------------------------------------------
# loading


def sniff(data):
    """Container from content: torch-zip | torchscript | torch-legacy | pickle."""
    if data[:4] == b"PK\x03\x04":
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        if any(n.split("/")[-1] == "constants.pkl" and n.count("/") <= 1 for n in names):
            return "torchscript"
        return "torch-zip"
    if _first_pickle_is_magic(data):
        return "torch-legacy"
    return "pickle"


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError("globals not allowed here")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids not allowed here")


def _first_pickle_is_magic(data):
    try:
        value = _NoGlobals(io.BytesIO(data)).load()
    except Exception:
        return False
    return type(value) is int and value == MAGIC


def _is_torch_save_bytes(b):
    if b[:4] == b"PK\x03\x04":
        try:
            names = zipfile.ZipFile(io.BytesIO(b)).namelist()
        except Exception:
            return False
        return any(n.split("/")[-1] == "data.pkl" for n in names)
    return _first_pickle_is_magic(b)


def main_pickle(data, container):
    """Bytes of the main pickle: data.pkl, the legacy 4th pickle, or the whole plain pickle."""
    if container in ("torch-zip", "torchscript"):
        z = zipfile.ZipFile(io.BytesIO(data))
        names = [n for n in z.namelist() if n.split("/")[-1] == "data.pkl" and n.count("/") <= 1]
        if not names:
            raise OracleError("zip without data.pkl")
        return z.read(names[0])
    if container == "torch-legacy":
        bio = io.BytesIO(data)
        for _ in range(3):
            for _ in pickletools.genops(bio):
                pass
        return data[bio.tell():]
    return data


def pickle_protocol(pkl):
    """PROTO argument of a pickle, else the highest protocol among its opcodes."""
    proto = 0
    for i, (op, arg, _pos) in enumerate(pickletools.genops(io.BytesIO(pkl))):
        if i == 0 and op.name == "PROTO":
            return arg
        proto = max(proto, op.proto)
    return proto


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING",
               "BINSTRING", "SHORT_BINSTRING"}


def pickle_globals(pkl):
    """(module, name) of every GLOBAL/INST/STACK_GLOBAL of one pickle, distinct, first-use order."""
    out, memo, stack = [], {}, []
    for op, arg, _pos in pickletools.genops(io.BytesIO(pkl)):
        n = op.name
        if n in _STRING_OPS:
            stack.append(arg)
        elif n == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else None
        elif n in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1] if stack else None
        elif n in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg))
        elif n in ("GLOBAL", "INST"):
            module, name = arg.split(" ", 1)
            out.append((module, name))
            stack.append(None)
        elif n == "STACK_GLOBAL":
            out.append((stack[-2], stack[-1]))
            stack.append(None)
        elif n in ("FRAME", "PROTO", "MARK", "STOP"):
            pass
        else:
            stack.append(None)
        if n == "STOP":
            break
    seen, uniq = set(), []
    for g in out:
        if g not in seen:
            seen.add(g)
            uniq.append(list(g))
    return uniq


class Loader:
    """One file's loading session: remembers every storage's saved location."""

    def __init__(self):
        self.locations = {}      # storage _cdata -> saved location string
        self.keep = []           # keeps storages alive so _cdata values are not reused
        self.depth = 0
        self.globals_seen = []
        self.pickle_module = self._make_pickle_module()

    # map_location callable: record, keep on CPU
    def restore(self, storage, location):
        self.locations[storage._cdata] = location
        self.keep.append(storage)
        return storage

    def find_class(self, module, name, base):
        self.globals_seen.append((module, name))
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return self.load_from_bytes
        module = RENAMES.get(module, module)
        if (module, name) == ("numpy.core.multiarray", "_reconstruct"):
            return _reconstruct_keep_order
        top = module.split(".")[0]
        if top in FORCE_STANDIN or top in DENY_MODULES or (module, name) in DENY:
            return standin(module, name)
        try:
            return base(module, name)
        except Exception:
            return standin(module, name)

    def _make_pickle_module(self):
        loader = self

        class OracleUnpickler(pickle.Unpickler):
            def find_class(self, module, name):
                return loader.find_class(module, name, super().find_class)

        mod = types.ModuleType("pf_oracle_pickle")
        mod.__dict__.update({k: v for k, v in pickle.__dict__.items() if not k.startswith("__")})
        mod.Unpickler = OracleUnpickler
        mod.load = lambda f, **kw: OracleUnpickler(f, **kw).load()
        mod.loads = lambda b, **kw: OracleUnpickler(io.BytesIO(b), **kw).load()
        return mod

    # patch torch.serialization.pickle for the duration of the outermost load
    def __enter__(self):
        if self.depth == 0:
            self._saved = torch.serialization.pickle
            torch.serialization.pickle = self.pickle_module
        self.depth += 1
        return self

    def __exit__(self, *exc):
        self.depth -= 1
        if self.depth == 0:
            torch.serialization.pickle = self._saved
        return False

    def load_from_bytes(self, b):
        with self:
            return torch.load(io.BytesIO(b), map_location=self.restore)

    def load_bytes(self, data, container=None):
        container = container or sniff(data)
        with self, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if container in ("torch-zip", "torch-legacy"):
                return torch.load(io.BytesIO(data), map_location=self.restore)
            if container == "torchscript":
                return self.load_torchscript(data)
            return self.pickle_module.Unpickler(io.BytesIO(data), encoding="latin1").load()

    def load_torchscript(self, data):
        z = zipfile.ZipFile(io.BytesIO(data))
        names = z.namelist()
        prefix = names[0].split("/")[0] + "/" if "/" in names[0] else ""
        storages = {}
        loader = self

        def reader(pkl_name, record_dir):
            class TSUnpickler(loader.pickle_module.Unpickler):
                def find_class(self, module, name):
                    if module == "torch" and name.endswith("Storage"):
                        return torch.serialization.StorageType(name)
                    return super().find_class(module, name)

                def persistent_load(self, pid):
                    typename, stype, key, location, numel = pid[:5]
                    if typename != "storage":
                        raise OracleError(f"unknown persistent id {typename!r}")
                    k = (record_dir, key)
                    if k not in storages:
                        raw = z.read(f"{prefix}{record_dir}/{key}")
                        esize = torch._utils._element_size(stype.dtype)
                        if len(raw) != numel * esize:
                            raise OracleError(f"{record_dir}/{key}: {len(raw)} bytes, numel {numel}")
                        if raw:
                            u = torch.UntypedStorage.from_buffer(bytearray(raw), dtype=torch.uint8)
                        else:
                            u = torch.UntypedStorage(0)
                        loader.restore(u, location)
                        storages[k] = torch.storage.TypedStorage(wrap_storage=u, dtype=stype.dtype)
                    return storages[k]

            return TSUnpickler(io.BytesIO(z.read(prefix + pkl_name))).load()

        out = {"data": reader("data.pkl", "data")}
        if prefix + "constants.pkl" in names:
            out["constants"] = reader("constants.pkl", "constants")
        return out

    def device_of(self, t):
        try:
            cdata = t.storage()._storage._cdata
        except Exception:
            return None
        return self.locations.get(cdata)


# ------------------------------------------------------------------------------------------
# the walk


def _torch_bytes(t):
    t = t.detach()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    c = t.contiguous()
    if c.dtype == torch.bfloat16:
        c = c.view(torch.int16)
    return c.cpu().numpy().tobytes()


def _torch_f_contiguous(t):
    """Strides lay the tensor out in Fortran order (size-1 dims ignored)."""
    if t.dim() < 2:
        return False
    expect = 1
    for n, st in zip(t.shape, t.stride()):
        if n != 1 and st != expect:
            return False
        expect *= n
    return True


def tensor_record(t, device):
    """crc32: contents in C order.  crc32_f: contents in Fortran order, given only when the
    storage already holds the tensor in Fortran order (DESIGN §3.3 lets the .npy keep it)."""
    raw = _torch_bytes(t)
    rec = {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
           "nbytes": t.numel() * t.element_size(), "crc32": zlib.crc32(raw) & 0xFFFFFFFF,
           "device": device, "crc32_f": None}
    if _torch_f_contiguous(t):
        rev = t.permute(*reversed(range(t.dim())))
        rec["crc32_f"] = zlib.crc32(_torch_bytes(rev)) & 0xFFFFFFFF
    return rec


def array_record(a):
    a = a.view(np.ndarray)
    raw = a.tobytes(order="C")
    rec = {"dtype": a.dtype.name, "shape": list(a.shape), "nbytes": int(a.nbytes),
           "crc32": zlib.crc32(raw) & 0xFFFFFFFF, "device": None, "crc32_f": None}
    if a.ndim >= 2 and a.flags.f_contiguous:
        rec["crc32_f"] = zlib.crc32(a.tobytes(order="F")) & 0xFFFFFFFF
    return rec


_SKIP_TYPES = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
               types.MethodType, types.BuiltinMethodType, str, int, float, complex, bool,
               type(None), torch.device, torch.dtype, torch.layout, torch.memory_format,
               torch.storage.TypedStorage, torch.UntypedStorage, np.generic, np.dtype)


def tensors(obj, loader=None):
    """Records of every distinct tensor / non-object numpy array reachable from obj."""
    loader = loader or Loader()
    out = []
    seen = set()
    keep = []
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        keep.append(o)
        if isinstance(o, torch.Tensor):
            out.append(tensor_record(o, loader.device_of(o)))
            continue
        if isinstance(o, np.ndarray):
            if o.dtype.hasobject:
                stack.extend(o.ravel(order="K").tolist() if o.dtype == object else [])
            else:
                out.append(array_record(o))
            continue
        if isinstance(o, (bytes, bytearray)):
            b = bytes(o)
            if _is_torch_save_bytes(b):
                # a bytes value that only *starts* like a torch.save file but does not load is
                # plain bytes, not a model (fixture embedded_fake_pickle_p4.pkl)
                try:
                    inner = loader.load_bytes(b)
                except Exception:
                    continue
                stack.append(inner)
            continue
        if isinstance(o, _SKIP_TYPES):
            continue
        if isinstance(o, dict):
            for k, v in o.items():
                stack.append(k)
                stack.append(v)
        elif isinstance(o, (list, tuple, set, frozenset, collections.deque)):
            stack.extend(o)
        d = getattr(o, "__dict__", None)
        if isinstance(d, dict):
            stack.extend(d.values())
        for cls in type(o).__mro__:
            slots = cls.__dict__.get("__slots__", ())
            for slot in (slots,) if isinstance(slots, str) else slots:
                if slot not in ("__dict__", "__weakref__") and hasattr(o, slot):
                    stack.append(getattr(o, slot))
    return out


# ------------------------------------------------------------------------------------------
# per-file summary


def describe(path):
    """Everything the tests compare for one file (raises OracleError when it is not a model)."""
    with open(path, "rb") as f:
        data = f.read()
    container = sniff(data)
    pkl = main_pickle(data, container)
    loader = Loader()
    try:
        root = loader.load_bytes(data, container)
    except OracleError:
        raise
    except Exception as e:
        raise OracleError(f"{type(e).__name__}: {e}") from e
    recs = tensors(root, loader)
    storage_locs = collections.Counter(loader.locations.values())
    return {
        "container": container,
        "protocol": pickle_protocol(pkl),
        "globals": pickle_globals(pkl),
        "tensors": recs,
        "storage_locations": dict(storage_locs),
    }


def key(rec, with_device=False):
    k = (rec["dtype"], tuple(rec["shape"]), rec["nbytes"], rec["crc32"])
    return k + (rec.get("device"),) if with_device else k


def plain_load_error(path, container):
    """What a user's plain load (no map_location, no custom unpickler) raises, as text, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if container == "pickle":
                with open(path, "rb") as f:
                    pickle.load(f)
            elif container == "torchscript":
                torch.jit.load(path)
            else:
                torch.load(path)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def main(argv):
    if argv and argv[0] == "--plain-load":
        # used by the tests in a clean subprocess: {path: error text or null}
        out = {}
        for p in argv[1:]:
            with open(p, "rb") as f:
                container = sniff(f.read())
            out[p] = plain_load_error(p, container)
        print(json.dumps(out))
        return 0
    rc = 0
    for p in argv:
        try:
            d = describe(p)
        except Exception as e:
            print(json.dumps({"file": p, "error": f"{type(e).__name__}: {e}"}))
            rc = 1
            continue
        dev = collections.Counter(r["device"] for r in d["tensors"])
        dts = collections.Counter(r["dtype"] for r in d["tensors"])
        print(json.dumps({"file": p, "container": d["container"], "protocol": d["protocol"],
                          "tensors": len(d["tensors"]),
                          "devices": {str(k): v for k, v in dev.items()},
                          "dtypes": dict(dts), "storage_locations": d["storage_locations"],
                          "globals": len(d["globals"])}))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
