"""Real model files written by other people ($PF_SHARED/corpus/real) against their MANIFEST.md.

The MANIFEST "tensors" column counts torch tensors ("N numpy arrays" counts numpy arrays); in
dump-tensors' output torch tensors are the entries with a device, numpy arrays those with
device null.  The "locations" column ("cuda:0:19, cpu:6") counts torch tensors per saved device.
"""

import collections
import hashlib
import os

import pytest

import oracle
import pfhelpers
from pfhelpers import describe, dump_ok, run_dump


def _path(row):
    return os.path.join(pfhelpers.REAL_DIR, row.file)


def test_manifest_lists_every_file():
    rows = pfhelpers.real_manifest()
    files = set(pfhelpers.real_files())
    assert rows, "no rows parsed from MANIFEST.md"
    assert files == set(rows), f"not in MANIFEST: {files - set(rows)}; missing files: {set(rows) - files}"
    assert sum(r.negative for r in rows.values()) >= 1


@pytest.mark.parametrize("name", pfhelpers.real_files())
def test_sha256_prefix(name):
    row = pfhelpers.real_manifest()[name]
    with open(os.path.join(pfhelpers.REAL_DIR, name), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert len(row.sha_prefix) >= 8
    assert digest.startswith(row.sha_prefix), f"{name}: sha256 {digest} vs MANIFEST {row.sha_prefix}"


def _is_numpy(r):
    if "kind" in r:  # dump-tensors also says "kind": "torch" | "numpy"
        return r["kind"] == "numpy"
    return r["device"] is None


def _counts(records):
    """(torch tensors, numpy arrays) among dump-tensors/oracle records: numpy ones have no device."""
    numpy_n = sum(1 for r in records if _is_numpy(r))
    return len(records) - numpy_n, numpy_n


def _check_count(row, records, who):
    n_torch, n_numpy = _counts(records)
    if row.count_kind == "numpy":
        assert (n_numpy, n_torch) == (row.count, 0), (
            f"{who}: {n_numpy} numpy arrays + {n_torch} tensors, MANIFEST {row.count} numpy arrays")
    else:
        assert n_torch == row.count, f"{who}: {n_torch} torch tensors, MANIFEST {row.count}"


def _check_locations(row, records, who):
    got = collections.Counter(r["device"] for r in records if r["device"] is not None)
    assert dict(got) == row.locations, f"{who}: per-tensor devices {dict(got)}, MANIFEST {row.locations}"


def test_tensor_count_matches_manifest(real_row):
    _check_count(real_row, dump_ok(_path(real_row))["tensors"], "dump-tensors")


def test_locations_match_manifest(real_row):
    got = dump_ok(_path(real_row))
    _check_locations(real_row, got["tensors"], "dump-tensors")
    assert set(got["devices"]) == set(real_row.locations)


def test_oracle_matches_manifest(real_row):
    """Oracle self-check (no C code involved)."""
    recs = describe(_path(real_row))["tensors"]
    _check_count(real_row, recs, "oracle")
    _check_locations(real_row, recs, "oracle")


def test_negative_file_rejected(negative_row):
    r = run_dump(_path(negative_row))
    assert r.rc != 0, f"dump-tensors accepted {negative_row.file}: {r.stdout[:300]!r}"
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {lines}"
    assert "offset" in lines[0], lines[0]


def test_negative_file_oracle(negative_row):
    """Oracle self-check: torch cannot load it either."""
    with pytest.raises(oracle.OracleError):
        oracle.describe(_path(negative_row))
