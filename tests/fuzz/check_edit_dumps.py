#!/usr/bin/python3
"""Check the files fuzz_edits rewrote with Python's own pickle and torch.load.

    FUZZ_EDITS_DUMP=/tmp/dump build-fuzz/tests/fuzz/fuzz_edits -runs=0 /tmp/work
    /usr/bin/python3 tests/fuzz/check_edit_dumps.py /tmp/dump

meta.json edits (modes 1, 2): the file must load (torch.load for the zip,
pickle.loads for plain pickles, blobs with map_location='cpu'), every value
must equal what the written meta.json says, and new tensor contents (bit 5)
must be fuzz_edits.c's pattern.  globals edits (modes 0, 3): renamed names
need not exist, so every global is a stub (except what holds embedded
files) and only the structure is checked: pickles load, zip CRC-32s match.
"""
import codecs as _codecs_mod
import collections
import io
import json
import math
import os
import pickle
import struct
import sys
import zipfile

import torch


class Stub(dict):
    def __init__(self, *a, **k): pass
    def __setstate__(self, s): pass
    def append(self, x): pass
    def extend(self, x): pass

class U(pickle.Unpickler):
    # the real globals; blobs loaded on the CPU (devices may have become cuda:1)
    def find_class(self, mod, name):
        if (mod, name) == ('torch.storage', '_load_from_bytes'):
            return lambda b: torch.load(io.BytesIO(b), map_location='cpu')
        try:
            return super().find_class(mod, name)
        except Exception:
            return type(name.split('.')[-1], (Stub,), {})

class SB(bytes):
    def __setstate__(self, s): pass

def legacy_lenient(b):
    f = io.BytesIO(b)
    for i in range(5):   # magic, protocol, sys info, main (persistent ids), storage keys
        u = L(f)
        u.persistent_load = lambda pid: None
        u.load()
    return Stub()

class L(pickle.Unpickler):
    # structure only: every global a stub, except what holds embedded files
    def find_class(self, mod, name):
        if (mod, name) == ('torch.storage', '_load_from_bytes'):
            return lambda *a, **k: (legacy_lenient(a[0]) if len(a) == 1 and not k and
                                    isinstance(a[0], bytes) else Stub())
        if (mod, name) == ('_codecs', 'encode'):
            return lambda *a, **k: (SB(_codecs_mod.encode(*a)) if len(a) == 2 and not k and
                                    all(isinstance(x, str) for x in a) else Stub())
        return type('S', (Stub,), {})

def load(out, model, strict):
    if model == 'zip':
        z = zipfile.ZipFile(io.BytesIO(out))
        bad = z.testzip()
        assert bad is None, 'crc ' + bad
        if strict:
            return torch.load(io.BytesIO(out), map_location='cpu')
        name = [n for n in z.namelist() if n.endswith('/data.pkl')][0]
        u = L(io.BytesIO(z.read(name)))
        u.persistent_load = lambda pid: pid[1](pid[4]) if callable(pid[1]) else None
        return u.load()
    if strict:
        return U(io.BytesIO(out)).load()
    return L(io.BytesIO(out)).load()

def same(w, v, path):
    if isinstance(w, dict):
        if 'tensor' in w:
            assert hasattr(v, 'shape') and list(v.shape) == w['shape'], path
            return
        if 'call' in w:
            assert isinstance(v, collections.OrderedDict), path
            return same(w['dictitems'], dict(v), path)
        if set(w) == {'int'}:
            assert type(v) is int and v == int(w['int']), (path, w, v)
            return
        if set(w) == {'float'}:
            assert type(v) is float and (math.isnan(v) if w['float'] == 'nan' else v == float(w['float'])), (path, w, v)
            return
        assert isinstance(v, dict) and list(v) == list(w), (path, list(w), v)
        for k in w:
            same(w[k], v[k], path + '.' + k)
        return
    if isinstance(w, list):
        assert isinstance(v, (list, tuple)) and len(v) == len(w), path
        for i, (a, b) in enumerate(zip(w, v)):
            same(a, b, '%s[%d]' % (path, i))
        return
    if isinstance(w, bool) or w is None:
        assert v is w, (path, w, v)
        return
    if isinstance(w, int):
        assert type(v) is int and v == w, (path, w, v)
        return
    if isinstance(w, float):
        assert type(v) is float and struct.pack('<d', v) == struct.pack('<d', w), (path, w, v)
        return
    assert type(v) is str and v == w, (path, w, v)

ndata = [0]

def main(d):
    n = bad = 0
    for f in sorted(os.listdir(d)):
        if not f.endswith('.out'):
            continue
        base = f[:-4]
        _, b0, model = base.split('-')
        b0 = int(b0, 16)
        meta = (b0 & 3) in (1, 2)
        out = open(os.path.join(d, f), 'rb').read()
        text = open(os.path.join(d, base + '.txt'), 'rb').read()
        n += 1
        try:
            if meta:
                doc = json.loads(text.decode('utf-8'), object_pairs_hook=collections.OrderedDict)
                v = load(out, model, True)
                same(doc['root'], v, '$.root')
                tens = [k for k, x in doc['root'].items() if isinstance(x, dict) and 'tensor' in x]
                if b0 & 0x20 and tens:
                    k = tens[(b0 >> 6) % len(tens)]
                    x = v[k]
                    got = x.contiguous().numpy().tobytes() if isinstance(x, torch.Tensor) else x.tobytes()
                    want = bytes((i * 37 + 11) & 255 for i in range(len(got)))
                    assert got == want, ('data', k, got, want)
                    ndata[0] += 1
            else:
                load(out, model, False)
        except Exception as e:
            bad += 1
            print('BAD', f, type(e).__name__, str(e)[:300])
    print(n, 'checked', bad, 'bad', ndata[0], 'with new tensor contents')

main(sys.argv[1])
