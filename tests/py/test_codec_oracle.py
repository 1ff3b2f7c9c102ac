"""The codec (through build/tests/dump-tensors) against an independent PyTorch/numpy oracle.

Every generated fixture and every real-corpus file (except the NEGATIVE one) must give the same
tensors as the oracle: the same multiset of (dtype, shape, nbytes, crc32 of the C-order contents),
the same saved devices, the same container and protocol, and safe relative .npy paths.
"""

import collections
import json
import os
import subprocess
import zlib

import pytest

import oracle
import pfhelpers
from pfhelpers import describe, dump_multiset, dump_ok, multiset, multiset_diff, run_dump


# ------------------------------------------------------------------------------------------
# per file: fixtures and real corpus


def test_tensors_match_oracle(model_file):
    want = describe(model_file.path)
    got = dump_ok(model_file.path)
    g, w = dump_multiset(got["tensors"], want["tensors"]), multiset(want["tensors"])
    assert len(got["tensors"]) == len(want["tensors"]), (
        f"{model_file.name}: dump-tensors lists {len(got['tensors'])} tensors, oracle "
        f"{len(want['tensors'])}\n" + multiset_diff(g, w))
    assert g == w, f"{model_file.name}: tensor contents differ from the oracle\n" + multiset_diff(g, w)


def test_field_types(model_file):
    got = dump_ok(model_file.path)
    for t in got["tensors"]:
        assert isinstance(t["dtype"], str) and t["dtype"]
        assert isinstance(t["shape"], list) and all(isinstance(n, int) and n >= 0 for n in t["shape"])
        assert isinstance(t["nbytes"], int) and t["nbytes"] >= 0
        assert isinstance(t["crc32"], int) and 0 <= t["crc32"] <= 0xFFFFFFFF
        assert t["device"] is None or isinstance(t["device"], str)
        if "kind" in t:  # optional extra field: numpy arrays have no device, torch tensors do
            assert t["kind"] in ("torch", "numpy")
            assert (t["kind"] == "numpy") == (t["device"] is None), t
    assert isinstance(got["devices"], list)
    assert all(isinstance(g, list) and len(g) == 2 and all(isinstance(s, str) for s in g)
               for g in got["globals"])


def test_devices_match_oracle(model_file):
    want = describe(model_file.path)
    got = dump_ok(model_file.path)
    g, w = dump_multiset(got["tensors"], want["tensors"], True), multiset(want["tensors"], True)
    assert g == w, f"{model_file.name}: per-tensor devices differ from the oracle\n" + multiset_diff(g, w)
    # "devices": the distinct storage locations, most frequent first
    want_devs = set(want["storage_locations"])
    assert set(got["devices"]) == want_devs, f"devices {got['devices']} vs saved locations {want_devs}"
    assert len(got["devices"]) == len(set(got["devices"])), f"duplicate devices {got['devices']}"
    counts = [want["storage_locations"][d] for d in got["devices"]]
    assert counts == sorted(counts, reverse=True), (
        f"devices {got['devices']} not most frequent first (storage counts {want['storage_locations']})")


def test_container_and_protocol(model_file):
    want = describe(model_file.path)
    got = dump_ok(model_file.path)
    assert got["container"] == want["container"]
    assert got["protocol"] == want["protocol"]
    if model_file.entry is not None:
        assert got["container"] == model_file.entry["container"]
        assert got["protocol"] == model_file.entry["protocol"]


def test_paths_are_safe_and_distinct(model_file):
    got = dump_ok(model_file.path)
    paths = [t.get("path") for t in got["tensors"]]
    for p in paths:
        problem = pfhelpers.path_problem(p)
        assert problem is None, f"unsafe tensor path {p!r}: {problem}"
    dup = [p for p, n in collections.Counter(paths).items() if n > 1]
    assert not dup, f"several tensors share a path: {dup}"


def test_globals_cover_main_pickle(model_file):
    """Every class/function referenced by the main pickle is listed in `globals`."""
    want = {tuple(g) for g in describe(model_file.path)["globals"]}
    got = {tuple(g) for g in dump_ok(model_file.path)["globals"]}
    missing = sorted(want - got)
    assert not missing, f"globals missing from dump-tensors: {missing}"


# ------------------------------------------------------------------------------------------
# fixtures only


def test_oracle_count_matches_construction(fixture_entry, fixtures_dir):
    """Oracle self-check (no C code involved): the count make-fixtures knows by construction."""
    recs = describe(os.path.join(fixtures_dir, fixture_entry["name"]))["tensors"]
    assert len(recs) == fixture_entry["tensors"]
    assert describe(os.path.join(fixtures_dir, fixture_entry["name"]))["container"] == fixture_entry["container"]
    assert describe(os.path.join(fixtures_dir, fixture_entry["name"]))["protocol"] == fixture_entry["protocol"]


def test_oracle_devices_match_construction(fixture_entry, fixtures_dir):
    """Oracle self-check: GPU fixtures were saved on cuda:0 (all, or the picked ones), others on cpu."""
    recs = describe(os.path.join(fixtures_dir, fixture_entry["name"]))["tensors"]
    devs = collections.Counter(r["device"] for r in recs if r["device"] is not None)
    if not fixture_entry["gpu"]:
        assert set(devs) <= {"cpu"}
    elif "gpu-mixed" in fixture_entry["kinds"] or "nested" in fixture_entry["kinds"]:
        assert devs["cuda:0"] > 0 and devs["cpu"] > 0
    else:
        assert set(devs) == {"cuda:0"}


def test_gpu_fixture_devices(fixture_entry, fixtures_dir):
    got = dump_ok(os.path.join(fixtures_dir, fixture_entry["name"]))
    devs = collections.Counter(t["device"] for t in got["tensors"])
    if fixture_entry["gpu"]:
        assert "cuda:0" in got["devices"]
        if not ({"gpu-mixed", "nested"} & set(fixture_entry["kinds"])):
            assert got["devices"] == ["cuda:0"]
            assert set(devs) == {"cuda:0"}
    else:
        assert "cuda:0" not in got["devices"] and "cuda:0" not in devs


@pytest.fixture(scope="session")
def plain_load_errors(fixtures_dir, manifest):
    """What a plain torch.load / pickle.load (no map_location) raises, in a fresh interpreter
    that can import the sbi stand-in package (as a user with sbi installed)."""
    paths = [os.path.join(fixtures_dir, e["name"]) for e in manifest["fixtures"]]
    env = dict(os.environ, PYTHONPATH=os.path.join(pfhelpers.REPO, "tests", "sbi"))
    p = subprocess.run([pfhelpers.PYTHON, os.path.join(pfhelpers.HERE, "oracle.py"), "--plain-load"] + paths,
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    return {os.path.basename(k): v for k, v in json.loads(p.stdout.splitlines()[-1]).items()}


def test_plain_load(fixture_entry, plain_load_errors):
    """GPU fixtures fail exactly like a GPU-saved file on a CPU-only box; the rest load."""
    err = plain_load_errors[fixture_entry["name"]]
    if fixture_entry["gpu"]:
        assert err is not None and err.startswith("RuntimeError") and oracle.CUDA_ERROR in err, err
    else:
        assert err is None, err


def test_path_groups(path_group, fixtures_dir, manifest):
    """nn.Module pickled whole and its state_dict give the same tensor paths, in every container."""
    members = [e["name"] for e in manifest["fixtures"] if e["path_group"] == path_group]
    assert len(members) >= 2
    sets = {name: sorted(t["path"] for t in dump_ok(os.path.join(fixtures_dir, name))["tensors"])
            for name in members}
    first = members[0]
    assert sets[first], f"{first}: no tensor paths"
    for name in members[1:]:
        assert sets[name] == sets[first], (
            f"path sets differ: {name} {sets[name]} vs {first} {sets[first]}")


def test_content_groups_oracle(content_group, fixtures_dir, manifest):
    """Oracle/generator self-check: same values saved through different containers read back equal."""
    members = [e["name"] for e in manifest["fixtures"] if e["content_group"] == content_group]
    ref = multiset(describe(os.path.join(fixtures_dir, members[0]))["tensors"])
    assert ref
    for name in members[1:]:
        other = multiset(describe(os.path.join(fixtures_dir, name))["tensors"])
        assert other == ref, f"{name} vs {members[0]}\n" + multiset_diff(other, ref)


def test_model_paths_look_like_state_dict(fixtures_dir):
    """The model's paths are its state_dict keys split on '.' (DESIGN §3.1), computed here from
    torch itself."""
    import torch
    sd = torch.load(os.path.join(fixtures_dir, "sd_zip_p2.pt"), map_location="cpu")
    want = sorted(k.replace(".", "/") + ".npy" for k in sd)
    for name in ("sd_zip_p2.pt", "module_pickle_p4.pkl", "module_legacy_p2.pt"):
        got = sorted(t["path"] for t in dump_ok(os.path.join(fixtures_dir, name))["tensors"])
        assert got == want, name


def test_escaped_names(fixtures_dir, manifest):
    """Escaping and collision rules of DESIGN §3.1, written out by hand from the rule."""
    want = {"..%2F..%2Fetc.npy", "a%2Fb.npy", "%.npy", "%2E.npy", "%2E%2E.npy", "pct%25.npy",
            "nul%00.npy", "3.npy", "3~2.npy", "sd/a/b.npy", "sd/a/c.npy"}
    names = [e["name"] for e in manifest["fixtures"] if "names" in e["kinds"]]
    assert names
    for name in names:
        got = dump_ok(os.path.join(fixtures_dir, name))
        paths = {t["path"] for t in got["tensors"]}
        long = paths - want
        assert want <= paths, f"{name}: missing {sorted(want - paths)}; got {sorted(paths)}"
        assert len(long) == 1, f"{name}: unexpected paths {sorted(long)}"
        (lp,) = long
        assert lp.endswith(".npy") and "/" not in lp and len(lp.encode()) <= 255 and lp.startswith("x" * 100), lp
        # int key 3 comes first in the dict, so it keeps "3"; the str key "3" gets "~2"
        crc_of = {t["path"]: t["crc32"] for t in got["tensors"]}
        assert crc_of["3.npy"] == zlib.crc32((8).to_bytes(8, "little"))
        assert crc_of["3~2.npy"] == zlib.crc32((9).to_bytes(8, "little"))


# ------------------------------------------------------------------------------------------
# bad input


def _assert_rejected(path, what):
    r = run_dump(path)
    assert r.rc == 1, f"{what}: dump-tensors exited {r.rc}, stdout {r.stdout[:200]!r}"
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"{what}: expected one stderr line, got {lines}"
    assert "offset" in lines[0], f"{what}: stderr line names no offset: {lines[0]!r}"


def test_truncated_files_rejected(malformed_source, fixtures_dir, tmp_path):
    with open(os.path.join(fixtures_dir, malformed_source), "rb") as f:
        data = f.read()
    bad = tmp_path / ("trunc_" + malformed_source)
    bad.write_bytes(data[: len(data) // 2])
    _assert_rejected(str(bad), f"{malformed_source} cut to {len(data) // 2} bytes")


def test_not_a_model_rejected(tmp_path):
    for name, data in (("empty.bin", b""), ("text.txt", b"hello, world\n" * 10),
                       ("zip_junk.pt", b"PK\x03\x04" + bytes(100))):
        p = tmp_path / name
        p.write_bytes(data)
        _assert_rejected(str(p), name)
