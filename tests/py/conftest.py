"""pytest configuration for the picklefs Python oracle tests.

Environment:
  PF_BUILD     meson build dir holding tests/dump-tensors (default: <repo>/build)
  PF_SHARED    the shared dir with corpus/real (default: /work/shared)
  PF_FIXTURES  optional: an existing `scripts/make-fixtures` output dir to reuse

Run:  PF_BUILD=/work/main/build /usr/bin/python3 -m pytest tests/py -q
"""

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pfhelpers  # noqa: E402

_state = {"dir": None, "tmp": None}

ModelFile = collections.namedtuple("ModelFile", "origin name path entry")


def generated_dir():
    """Run scripts/make-fixtures once per session (at collection, so tests can be parametrized)."""
    if _state["dir"] is None:
        pre = os.environ.get("PF_FIXTURES")
        if pre and os.path.exists(os.path.join(pre, "fixtures.json")):
            _state["dir"] = pre
        else:
            d = tempfile.mkdtemp(prefix="picklefs-fixtures-")
            p = subprocess.run([pfhelpers.PYTHON, os.path.join(pfhelpers.REPO, "scripts", "make-fixtures"), d],
                               capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                shutil.rmtree(d, ignore_errors=True)
                raise RuntimeError(f"scripts/make-fixtures failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
            _state["dir"] = _state["tmp"] = d
    return _state["dir"]


def fixture_manifest():
    with open(os.path.join(generated_dir(), "fixtures.json")) as f:
        return json.load(f)


def pytest_unconfigure(config):
    if _state["tmp"]:
        shutil.rmtree(_state["tmp"], ignore_errors=True)


@pytest.fixture(scope="session")
def build_dir():
    return pfhelpers.BUILD


@pytest.fixture(scope="session")
def shared_dir():
    return pfhelpers.SHARED


@pytest.fixture(scope="session")
def fixtures_dir():
    """Directory with the generated fixtures and fixtures.json (made once per session)."""
    return generated_dir()


@pytest.fixture(scope="session")
def manifest(fixtures_dir):
    return fixture_manifest()


def _model_files():
    out = []
    d = generated_dir()
    for e in fixture_manifest()["fixtures"]:
        out.append(ModelFile("fixture", e["name"], os.path.join(d, e["name"]), e))
    rows = pfhelpers.real_manifest()
    for name in pfhelpers.real_files():
        row = rows.get(name)
        if row is not None and row.negative:
            continue
        out.append(ModelFile("real", name, os.path.join(pfhelpers.REAL_DIR, name), None))
    return out


MALFORMED_FROM = ["sd_zip_p2.pt", "sd_legacy_p2.pt", "sd_pickle_p4.pkl", "module_pickle_p2.pkl",
                  "nested_zip_in_pickle_p4.pkl", "sbi_posterior_gpu_p4.pkl"]


def pytest_generate_tests(metafunc):
    names = metafunc.fixturenames
    if "model_file" in names:
        files = _model_files()
        metafunc.parametrize("model_file", files, ids=[f"{m.origin}/{m.name}" for m in files])
    if "fixture_entry" in names:
        entries = fixture_manifest()["fixtures"]
        metafunc.parametrize("fixture_entry", entries, ids=[e["name"] for e in entries])
    if "path_group" in names:
        groups = sorted({e["path_group"] for e in fixture_manifest()["fixtures"] if e["path_group"]})
        metafunc.parametrize("path_group", groups)
    if "content_group" in names:
        groups = sorted({e["content_group"] for e in fixture_manifest()["fixtures"]
                         if e["content_group"]})
        metafunc.parametrize("content_group", groups)
    if "malformed_source" in names:
        metafunc.parametrize("malformed_source", MALFORMED_FROM)
    if "real_row" in names or "negative_row" in names:
        rows = pfhelpers.real_manifest()
        if "real_row" in names:
            pos = [r for _, r in sorted(rows.items()) if not r.negative]
            metafunc.parametrize("real_row", pos, ids=[r.file for r in pos])
        if "negative_row" in names:
            neg = [r for _, r in sorted(rows.items()) if r.negative]
            metafunc.parametrize("negative_row", neg, ids=[r.file for r in neg])


@pytest.fixture(scope="module")
def mount_feature():
    """Fail (or skip, where mounting.mount_support allows it) when no FUSE mount can be made."""
    import mounting
    kind, why = mounting.mount_support()
    if kind == "fail":
        pytest.fail(why)
    if kind == "skip":
        pytest.skip(why)
