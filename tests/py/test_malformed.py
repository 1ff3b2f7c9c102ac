"""Malformed input: every bad file gets one clear error line, quickly, in bounded memory, and is
never written (reliability.md §T2, §T11; DESIGN §7).

Each input is run as `picklefs inspect FILE` in a child with RLIMIT_AS = 1 GiB and a 10 s
timeout (malformed_cases.run_inspect / check_run hold the contract).  Inputs:

  test_prefixes     every prefix of small fixtures and small real files (512 spaced ones > 4 KiB)
  test_bit_flips    1,024 seeded single-bit flips of two larger real files
  test_crafted      one recipe per attack class, each with its expected outcome
  test_never_execute  REDUCE of os.system stays inert data; the command never runs

The sweeps run in a separate bare interpreter with a thread pool (malformed_cases.py batch),
because forking from a process that has imported torch is three times slower.

Times: the 2 s budget of §T2 is measured and printed; the assertion uses 10 s so that a noisy
2-core machine does not fail the run.  RSS comes from wait4() and includes the pages of the
forking interpreter, so it is an upper bound of picklefs' own peak.
"""

import collections
import os
import subprocess
import uuid

import pytest

import malformed_cases as mc

WALL_BUDGET_S = 2.0      # reliability.md §T2
WALL_ASSERT_S = 10.0     # what we fail on (shared, noisy CI machines)
RSS_BUDGET_KB = 256 * 1024

REAL_PREFIX = ["tiny_dict_long1.pkl", "sbi_minisbibm_theta_o_1.pt", "legacy_cuda_skorch_net_cuda.pt"]
REAL_FLIP = ["zip_cuda_mnist_cnn.pt", "sbi_popgen_AFS_p3.pkl"]

MARKER = "/tmp/pf-pwned-%d-%s" % (os.getpid(), uuid.uuid4().hex[:8])


@pytest.fixture(scope="module")
def picklefs_binary():
    b = mc.picklefs_bin()
    if not os.access(b, os.X_OK):
        pytest.fail("picklefs not built: %s (cd %s && ninja -C build, or set PF_BUILD)" % (b, mc.REPO))
    return b


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """tiny_zip.pt, tiny_legacy.pt, tiny_p2.pkl, tiny_p4.pkl written by Debian's torch."""
    d = str(tmp_path_factory.mktemp("tiny-fixtures"))
    p = subprocess.run([mc.PYTHON, mc.__file__, "torch-fixtures", d], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, "making torch fixtures failed:\n%s" % p.stderr[-3000:]
    return d


def source_path(name, tiny_dir):
    if name in mc.TORCH_FIXTURES:
        return os.path.join(tiny_dir, name)
    p = os.path.join(mc.real_dir(), name)
    if not os.path.exists(p):
        pytest.skip("real file missing: %s" % p)
    return p


def summarize(label, results, capsys, record_property):
    outcomes = collections.Counter(r["outcome"] or "?" for r in results)
    max_wall = max(r["wall"] for r in results)
    max_rss = max(r["maxrss_kb"] for r in results)
    slow = [r for r in results if r["wall"] > WALL_BUDGET_S]
    line = ("%s: %d cases, %s; max %.3f s, max RSS %.1f MiB%s"
            % (label, len(results), ", ".join("%s %d" % kv for kv in sorted(outcomes.items())),
               max_wall, max_rss / 1024.0,
               "; %d over the %.0f s budget" % (len(slow), WALL_BUDGET_S) if slow else ""))
    with capsys.disabled():
        print("\n  [malformed] " + line)
    record_property("summary", line)
    record_property("max_wall_s", round(max_wall, 4))
    record_property("max_rss_kb", max_rss)
    return outcomes


def assert_clean(results):
    bad = [r for r in results if r["problems"]]
    msg = "\n".join("%s: %s%s" % (r["id"], "; ".join(r["problems"]),
                                  (" | stderr: " + r.get("stderr", "").strip()[:300]) if r.get("stderr") else "")
                    for r in bad[:25])
    assert not bad, "%d of %d cases broke the contract:\n%s" % (len(bad), len(results), msg)
    slow = [r for r in results if r["wall"] > WALL_ASSERT_S]
    assert not slow, "over %.0f s: %s" % (WALL_ASSERT_S, ", ".join("%s (%.1f s)" % (r["id"], r["wall"]) for r in slow))
    fat = [r for r in results if r["maxrss_kb"] > RSS_BUDGET_KB]
    assert not fat, "over 256 MiB RSS: %s" % ", ".join("%s (%d KiB)" % (r["id"], r["maxrss_kb"]) for r in fat)


# ---------------------------------------------------------------------------------------------
# (a) every prefix

@pytest.mark.parametrize("prefix_source", list(mc.TORCH_FIXTURES) + REAL_PREFIX)
def test_prefixes(prefix_source, tiny_dir, picklefs_binary, capsys, record_property):
    src = source_path(prefix_source, tiny_dir)
    cases = mc.prefix_cases(src, prefix_source)
    cases.append({"id": prefix_source + "[whole]", "src": src, "op": "whole", "n": 0})
    results = mc.run_batch_subprocess(cases)
    summarize("prefixes of " + prefix_source, results, capsys, record_property)
    assert_clean(results)
    whole = results[-1]
    assert whole["outcome"] == "ok", "the whole file must parse: %s" % whole
    # A proper prefix of a model is never a model: every format here ends in bytes that a
    # prefix lacks (the zip end records, the last STOP, the last raw storage section).
    accepted = [r["id"] for r in results[:-1] if r["outcome"] == "ok"]
    assert not accepted, "truncated files accepted: %s" % accepted[:20]


# ---------------------------------------------------------------------------------------------
# (b) single-bit flips

@pytest.mark.parametrize("flip_source", REAL_FLIP)
def test_bit_flips(flip_source, tiny_dir, picklefs_binary, capsys, record_property):
    src = source_path(flip_source, tiny_dir)
    cases = mc.flip_cases(src, flip_source, count=1024)
    assert len(cases) == 1024
    results = mc.run_batch_subprocess(cases)
    summarize("bit flips of " + flip_source, results, capsys, record_property)
    assert_clean(results)


# ---------------------------------------------------------------------------------------------
# (c), (d) crafted cases with an expected outcome each

CRAFTED = mc.all_crafted(MARKER)
CRAFTED_MAX = {"wall": 0.0, "rss": 0, "name_wall": "", "name_rss": ""}


@pytest.fixture(scope="module")
def crafted_results(tmp_path_factory, picklefs_binary):
    """All crafted cases, run at once by the batch runner (in parallel; peak RSS measured with
    GNU time where installed, else wait4's upper bound)."""
    d = tmp_path_factory.mktemp("crafted")
    cases = []
    for name, data, _ in CRAFTED:
        (d / name).write_bytes(data)
        cases.append({"id": name, "src": str(d / name), "op": "whole", "n": 0, "keep_stdout": True,
                      "exact_rss": True})
    return {r["id"]: r for r in mc.run_batch_subprocess(cases)}


@pytest.mark.parametrize("crafted", CRAFTED, ids=[c[0] for c in CRAFTED])
def test_crafted(crafted, crafted_results, record_property):
    name, data, expectation = crafted
    r = crafted_results[name]
    record_property("wall_s", round(r["wall"], 4))
    record_property("maxrss_kb", r["maxrss_kb"])
    if r["wall"] > CRAFTED_MAX["wall"]:
        CRAFTED_MAX.update(wall=r["wall"], name_wall=name)
    if r["maxrss_kb"] > CRAFTED_MAX["rss"]:
        CRAFTED_MAX.update(rss=r["maxrss_kb"], name_rss=name)
    problems = r["problems"] + mc.check_expectation(r, expectation)
    if r["wall"] > WALL_ASSERT_S:
        problems.append("took %.1f s" % r["wall"])
    if r["maxrss_kb"] > RSS_BUDGET_KB:
        problems.append("peak RSS %d KiB over 256 MiB" % r["maxrss_kb"])
    assert not os.path.exists(MARKER), "a pickle's os.system ran: %s exists" % MARKER
    assert not problems, "%s (%d bytes):\n  %s" % (name, len(data), "\n  ".join(problems))


def test_crafted_summary(capsys, record_property):
    """Prints the slowest and fattest crafted case (runs after test_crafted in file order)."""
    if not CRAFTED_MAX["name_wall"]:
        pytest.skip("no crafted case ran")
    line = ("crafted: %d cases; max %.3f s (%s), max RSS %.1f MiB (%s)"
            % (len(CRAFTED), CRAFTED_MAX["wall"], CRAFTED_MAX["name_wall"], CRAFTED_MAX["rss"] / 1024.0,
               CRAFTED_MAX["name_rss"]))
    with capsys.disabled():
        print("\n  [malformed] " + line)
    record_property("summary", line)


def test_crafted_baselines_load_in_torch(tmp_path):
    """The assembler's baselines are real torch.save files (torch.load, weights_only=True), so each
    crafted variant differs from a valid file only by its one defect."""
    mc.write_crafted(str(tmp_path), {"zip-baseline", "legacy-baseline", "zip-no-bit3-consistent",
                                     "zip-baseline-no-zip64"})
    p = subprocess.run([mc.PYTHON, mc.__file__, "check-baselines", str(tmp_path)], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-3000:]


def test_tiny_fixture_shapes(tiny_dir, picklefs_binary):
    """The torch-made fixtures parse and hold what was saved (guards the prefix sweep's premise)."""
    want = {"tiny_zip.pt": ("torch-zip", {"w.npy", "b.npy"}), "tiny_legacy.pt": ("torch-legacy", {"w.npy", "b.npy"}),
            "tiny_p2.pkl": ("pickle", {"t.npy"}), "tiny_p4.pkl": ("pickle", {"t.npy"})}
    for name, (container, tensors) in want.items():
        r = mc.run_inspect(os.path.join(tiny_dir, name), binary=picklefs_binary)
        assert not mc.check_run(r) and r["rc"] == 0, (name, r["stderr"])
        meta = mc.load_json(r["stdout"])
        assert meta["container"] == container, (name, meta["container"])
        assert {t["tensor"] for t in mc.tensors_of(meta)} == tensors, name


# ---------------------------------------------------------------------------------------------
# never execute

def test_never_execute(tmp_path, picklefs_binary):
    marker = "/tmp/pf-pwned-%d-%s" % (os.getpid(), uuid.uuid4().hex[:8])
    cases = mc.never_execute_cases(marker)
    assert len(cases) >= 9
    for name, data, expectation in cases:
        path = tmp_path / name
        path.write_bytes(data)
        r = mc.run_inspect(str(path), binary=picklefs_binary)
        problems = mc.check_run(r) + mc.check_expectation(r, expectation)
        assert not problems, "%s: %s" % (name, problems)
        assert r["rc"] == 0
        assert "os.system" in r["stdout"] or "posix.system" in r["stdout"], name
        assert not os.path.exists(marker), "%s: the pickle's command ran (%s exists)" % (name, marker)
