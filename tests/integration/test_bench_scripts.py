"""The benchmark scripts of tests/bench (issue #7) run end to end, as a user
runs them, on tiny sizes: real mounts, real peers, real fio. Their figures
are not judged here (speed lives in the benchmark, never in a test); what is
checked is that each script finishes, prints its table and writes results
that hold every row and test it was asked for, and that the mirror it
measured was identical to its primary."""

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import REPO, mirrorfs_bin

BENCH = REPO / "tests" / "bench"


@pytest.fixture
def bench_env(workdir):
    binary = mirrorfs_bin()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"mirrorfs binary not found at {binary}")
    # A short scratch parent: the scripts' stores hold control sockets.
    scratch = Path(tempfile.mkdtemp(prefix="b", dir=workdir))
    env = dict(os.environ, MIRRORFS_BIN=binary, BENCH_DIR=str(scratch),
               BENCH_RESULTS=str(workdir / "results"))
    return env


def run_script(name, env, *args):
    r = subprocess.run(["bash", str(BENCH / name), *args], env=env,
                       capture_output=True, text=True, timeout=540)
    assert r.returncode == 0, f"{name} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def assert_scratch_cleaned(env):
    left = list(Path(env["BENCH_DIR"]).iterdir())
    assert not left, f"the script left {left} behind"


def test_bench_runs_its_rows_and_tests(bench_env):
    rows = ["passthrough_ll", "mirrorfs-peer"]
    tests = ["seqwrite_1M", "seqread_1M", "randwrite_4k_fsync32"]
    env = dict(bench_env, BENCH_ROWS=" ".join(rows), BENCH_TESTS=" ".join(tests),
               BENCH_SIZE="8M", BENCH_REPS="1", BENCH_RUNTIME="1")
    out = run_script("bench.sh", env)
    doc = json.loads((Path(env["BENCH_RESULTS"]) / "bench.json").read_text())
    assert doc["rows"] == rows and doc["tests"] == tests
    assert doc["mirror_verified"] is True
    assert doc["peer_drops_during_run"] == {"mirrorfs-peer": 0}
    for row in rows:
        for test in tests:
            result = doc["results"][row][test]
            assert result["mb_per_s"] > 0 and result["iops"] > 0, (row, test, result)
            assert len(result["mb_per_s_all"]) == 1
        assert doc["resources"][row]["peak_rss_mib"] > 0
    assert doc["results"]["passthrough_ll"]["seqwrite_1M"]["ratio_vs_passthrough_ll"] == 1.0
    assert doc["resources"]["mirrorfs-peer"]["cpu_seconds_per_gib_written"] is not None
    # The table and the targets a reader looks for.
    assert "| mirrorfs-peer | seqread_1M |" in out
    assert "mirrorfs-peer seq write vs passthrough_ll:" in out
    assert "peer copies identical to the primary's: true" in out
    # The VM's state that moves buffered figures is printed and recorded.
    assert "bench: VM state page_reporting_order=" in out
    assert {"page_reporting_order", "guest_halt_poll_ns"} <= set(doc["machine"])
    fio_runs = list((Path(env["BENCH_RESULTS"]) / "fio").glob("*.json"))
    assert len(fio_runs) == len(rows) * len(tests)
    assert_scratch_cleaned(env)


def test_bench_puts_the_peers_stores_apart_when_asked(bench_env, workdir):
    # BENCH_PEER_DIR: the peers' stores on another disk (here another folder),
    # as on two machines; the primaries' stay in BENCH_DIR.
    peer_dir = tempfile.mkdtemp(prefix="p", dir=workdir)
    env = dict(bench_env, BENCH_ROWS="mirrorfs-2peers", BENCH_TESTS="seqwrite_1M",
               BENCH_SIZE="8M", BENCH_REPS="1", BENCH_PEER_DIR=peer_dir)
    out = run_script("bench.sh", env)
    doc = json.loads((Path(env["BENCH_RESULTS"]) / "bench.json").read_text())
    assert doc["peer_dir"] == peer_dir
    assert f"bench: peer stores in {peer_dir}/mirrorfs-bench-peers." in out, out
    assert doc["mirror_verified_rows"] == {"mirrorfs-2peers": True}
    assert doc["resources"]["mirrorfs-2peers"]["peak_rss_mib_peers"] > 0
    assert not list(Path(peer_dir).iterdir()), "the peers' stores were left behind"
    assert_scratch_cleaned(env)


def test_bench_refuses_a_peer_dir_that_is_not_a_folder(bench_env, workdir):
    env = dict(bench_env, BENCH_ROWS="mirrorfs-peer", BENCH_PEER_DIR=str(workdir / "none"))
    r = subprocess.run(["bash", str(BENCH / "bench.sh")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert f"bench: BENCH_PEER_DIR is not a folder: {workdir / 'none'}" in r.stderr
    assert_scratch_cleaned(env)


def test_bench_refuses_an_unknown_row(bench_env):
    env = dict(bench_env, BENCH_ROWS="passthrough_ll nfs")
    r = subprocess.run(["bash", str(BENCH / "bench.sh")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "bench: unknown row nfs" in r.stderr


def test_bench_refuses_gluster_options_without_values(bench_env):
    env = dict(bench_env, BENCH_ROWS="passthrough_ll",
               BENCH_GLUSTER_OPTIONS="performance.write-behind")
    r = subprocess.run(["bash", str(BENCH / "bench.sh")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "BENCH_GLUSTER_OPTIONS takes KEY VALUE pairs" in r.stderr


PAGE_REPORTING = Path("/sys/module/page_reporting/parameters/page_reporting_order")


def test_bench_refuses_a_page_reporting_order_the_kernel_refuses(bench_env):
    before = PAGE_REPORTING.read_text() if PAGE_REPORTING.exists() else None
    env = dict(bench_env, BENCH_ROWS="passthrough_ll", BENCH_PAGE_REPORTING_ORDER="99")
    r = subprocess.run(["bash", str(BENCH / "bench.sh")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "bench: BENCH_PAGE_REPORTING_ORDER:" in r.stderr
    if before is not None:
        assert PAGE_REPORTING.read_text() == before
    assert_scratch_cleaned(env)


@pytest.mark.skipif(not PAGE_REPORTING.exists(), reason="no free page reporting here")
def test_ab_sets_the_page_reporting_order_for_its_run_and_puts_it_back(bench_env):
    before = int(PAGE_REPORTING.read_text())
    during = 10 if before != 10 else 9
    env = dict(bench_env, AB_TEST="randwrite_4k", AB_ROUNDS="1", AB_SIZE="8M",
               AB_RUNTIME="1", BENCH_PAGE_REPORTING_ORDER=str(during))
    binary = bench_env["MIRRORFS_BIN"]
    out = run_script("ab.sh", env, binary, binary)
    assert f"ab: VM state page_reporting_order={during} " in out, out
    assert int(PAGE_REPORTING.read_text()) == before


@pytest.mark.parametrize("test", ["seqread_1M", "randwrite_4k_fsync32",
                                  "seqwrite_1M_cached", "randread_4k"])
def test_ab_compares_two_builds(bench_env, test):
    env = dict(bench_env, AB_TEST=test, AB_ROUNDS="1", AB_SIZE="8M", AB_RUNTIME="1")
    binary = bench_env["MIRRORFS_BIN"]
    out = run_script("ab.sh", env, binary, binary)
    lines = {line.split()[0]: line.split() for line in out.splitlines()
             if line.split() and line.split()[0] in ("passthrough_ll", "old", "new")}
    assert set(lines) == {"passthrough_ll", "old", "new"}, out
    for row, fields in lines.items():
        assert float(fields[1]) > 0, (row, out)  # median MB/s
    assert float(lines["passthrough_ll"][2]) == 1.0
    assert_scratch_cleaned(env)


def test_memory_bench_reports_both_measures(bench_env):
    env = dict(bench_env, BENCH_IMAGES="3", BENCH_IDLE="1", BENCH_IO_SIZE="4m")
    out = run_script("memory_bench.sh", env)
    doc = json.loads((Path(env["BENCH_RESULTS"]) / "memory.json").read_text())
    rest, frac = doc["at_rest"], doc["fracture_log"]
    assert rest["images"] == 3 and rest["mount_vmrss_mib"] > 0
    # 4 MiB of 4 KiB writes at random over a 1 TiB image, the peer down:
    # every write logged (two landing on one block, or side by side, would
    # count once or merge: rare among 2^28 blocks).
    assert frac["writes"] == 1024
    assert (4 << 20) - 16 * 4096 <= frac["fracture_bytes"] <= 4 << 20
    assert 1024 - 16 <= frac["fracture_extents"] <= 1024
    assert "VmRSS < 100 MiB" in out and "VmHWM < 200 MiB" in out
    assert_scratch_cleaned(env)


@pytest.mark.parametrize("peer_apart", [False, True], ids=["peer-beside", "peer-apart"])
def test_resync_bench_resyncs_the_damage_alone(bench_env, workdir, peer_apart):
    env = dict(bench_env, BENCH_IMAGE_MIB="64", BENCH_DAMAGE_MIB="16", BENCH_REPS="1")
    peer_dir = ""
    if peer_apart:  # the peer's store elsewhere (BENCH_PEER_DIR), as on two machines
        peer_dir = tempfile.mkdtemp(prefix="p", dir=workdir)
        env["BENCH_PEER_DIR"] = peer_dir
    out = run_script("resync_bench.sh", env)
    doc = json.loads((Path(env["BENCH_RESULTS"]) / "resync.json").read_text())
    assert (doc["image_mib"], doc["damage_mib"], doc["reps"]) == (64, 16, 1)
    assert doc["peer_dir"] == peer_dir
    if peer_apart:
        assert f"peer store: {peer_dir}/mirrorfs-resync-peer." in out, out
        assert not list(Path(peer_dir).iterdir()), "the peer's store was left behind"

    # Guarantee 6: the resync sends the damage and nothing else.
    assert doc["peer_applied_mib"] == 16, out
    assert 16 <= doc["primary_read_mib"] <= 17, out
    assert doc["resync_seconds"] > 0 and doc["cp_seconds"] > 0
    assert "| resync 16 MiB scattered in 64 MiB |" in out
    assert "copies identical" in out
    assert_scratch_cleaned(env)


def test_journal_bench_compares_with_and_without_the_journal(bench_env):
    env = dict(bench_env, BENCH_SIZE="8M", BENCH_REPS="1", BENCH_RUNTIME="1")
    out = run_script("journal_bench.sh", env)
    rows = [line for line in out.splitlines()
            if line.startswith(("| seqwrite_1M |", "| randwrite_4k_fsync32 |"))]
    assert len(rows) == 2, out
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[3]) > 0 and float(cells[4]) > 0, line  # the ratios
    assert "peer copies identical to their primaries: true" in out
    assert_scratch_cleaned(env)
