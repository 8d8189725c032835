"""edgescreen batch --ray: Parquet keyed by content, equal to the SQLite batch, exactly once
after a killed actor, a killed driver and reruns. One local Ray (2 CPUs) for the module."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from conftest import fundus_like as fundus
from conftest import make_bundle

pytest.importorskip("ray.data")
pytest.importorskip("pyarrow")

from edgescreen.runtime.batch import BatchOptions, Ledger, run_batch  # noqa: E402
from edgescreen.runtime.batch.cli import main as batch_main  # noqa: E402
from edgescreen.runtime.batch.ray_hub import (  # noqa: E402
    FAULT_ENV,
    RayBatchOptions,
    connect,
    read_results,
    run_ray_batch,
)

pytestmark = pytest.mark.slow
VOLATILE = ("timings_json", "finished_at", "result_json")


@pytest.fixture(scope="module")
def ray_local():
    import ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    started = connect(None, num_cpus=2)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("ray") / "dr", size=32)


def make_tree(root: Path) -> Path:
    """12 contents under 13 paths: 9 screenable, a blurred one, a copy, two bad files."""
    (root / "clinic a").mkdir(parents=True)
    for i in range(8):
        cv2.imwrite(str(root / "clinic a" / f"Patient00{i}_L.jpg"), fundus(i))
    cv2.imwrite(str(root / "12_right.png"), fundus(8))
    cv2.imwrite(str(root / "fuzzy.jpg"), cv2.GaussianBlur(fundus(9, 400), (0, 0), 10))
    (root / "copies").mkdir()
    shutil.copy(root / "clinic a" / "Patient000_L.jpg", root / "copies" / "again.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "readme.png").write_text("a text file, not a photo")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree") / "in")


def ray_run(tree: Path, bundle: Path, out: Path, **kw):
    kw.setdefault("batch_size", 2)
    return run_ray_batch(
        RayBatchOptions(in_uri=str(tree), out_uri=str(out), bundle=bundle, fault=None, **kw)
    )


@pytest.fixture(scope="module")
def clean(ray_local, tree, bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "out"
    stats = ray_run(tree, bundle, out)
    return out, stats, rows_by_key(out)


def rows_by_key(out) -> dict[str, dict]:
    table = read_results(str(out))
    rows = {}
    for r in table.to_pylist():
        assert r["key"] not in rows, f"{r['key']} twice"
        result = json.loads(r["result_json"])
        result.pop("timings_ms")
        r = {k: v for k, v in r.items() if k not in VOLATILE}
        r["result"], r["probabilities"] = result, dict(r["probabilities"] or [])
        rows[r["key"]] = r
    return rows


def test_one_row_per_content_and_equal_to_the_sqlite_batch(clean, tree, bundle, tmp_path):
    out, stats, rows = clean
    assert (stats.discovered, stats.contents, stats.aliases) == (13, 12, 1)
    assert stats.screened == stats.rows == len(rows) == 12 and stats.duplicates == 0
    assert stats.finished == {"done": 9, "ungradable": 1, "failed": 2}
    twice = next(r for r in rows.values() if len(r["paths"]) == 2)
    assert twice["paths"] == ["clinic a/Patient000_L.jpg", "copies/again.jpg"]

    db = tmp_path / "r.sqlite"
    run_batch(BatchOptions(in_dir=tree, bundle=bundle, db=db, batch_size=4))
    ledger = Ledger(db)
    items = {i.key: i for i in ledger.items()}
    ledger.close()
    assert items.keys() == rows.keys()
    for key, item in items.items():
        r, want = rows[key], item.result
        assert (r["state"], r["decision"], r["error"]) == (item.state, item.decision, item.error)
        assert (r["status"], r["label"], r["grade"]) == (
            want["status"],
            want["label"],
            want["grade"],
        )
        assert r["paths"] == sorted(item.paths) and r["path"] == item.path
        assert r["probabilities"].keys() == want["probabilities"].keys()
        for label, p in want["probabilities"].items():
            assert abs(r["probabilities"][label] - p) < 1e-6, (key, label)
        assert r["bundle_sha256"] == want["audit"]["bundle_sha256"]
        assert r["precision"] == want["audit"]["precision"] == "fp32"
        assert r["result"]["action"] == want["action"]
        assert r["quality_reasons"] == [i["message"] for i in want["quality"].get("issues", [])]
    assert "blurred" in rows[next(k for k, i in items.items() if i.path == "fuzzy.jpg")]["action"]
    # Parquet as any tool reads it: the dataset's parts, temp files and metadata ignored
    import pyarrow.dataset as pads

    assert pads.dataset(str(out), format="parquet").count_rows() == 12
    assert not [p for p in os.listdir(out) if p.startswith(".tmp-")]


def test_rerun_skips_what_is_there_and_records_new_copies(clean, tree, bundle, tmp_path):
    out, _, before = clean
    mine, mine_out = tmp_path / "in", tmp_path / "out"
    shutil.copytree(tree, mine)
    shutil.copytree(out, mine_out, ignore=shutil.ignore_patterns("_edgescreen.lock"))
    # a late commit of a dead job's actor, batched unlike the rerun: one key in two parts
    import pyarrow.parquet as pq

    first = sorted(mine_out.glob("part-*.parquet"))[0]
    pq.write_table(pq.read_table(first).slice(0, 1), mine_out / "part-zzzz.parquet")
    again = ray_run(mine, bundle, mine_out)
    assert (again.screened, again.new_items, again.parts_rewritten) == (0, 0, 0)
    assert again.duplicates == 1 and not (mine_out / "part-zzzz.parquet").exists()
    assert rows_by_key(mine_out) == before

    shutil.copy(mine / "clinic a" / "Patient001_L.jpg", mine / "re-upload.jpg")
    cv2.imwrite(str(mine / "new.jpg"), fundus(42))
    (mine / "broken.jpg").unlink()
    stats = ray_run(mine, bundle, mine_out)
    assert (stats.screened, stats.new_items, stats.parts_rewritten) == (1, 1, 1)
    after = rows_by_key(mine_out)
    assert len(after) == 13 and stats.rows == 13
    p1 = next(r for r in after.values() if r["path"] == "clinic a/Patient001_L.jpg")
    assert p1["paths"] == ["clinic a/Patient001_L.jpg", "re-upload.jpg"]
    # a file gone since keeps its row (as in the ledger: results are never dropped)
    assert {k: v for k, v in after.items() if k in before and k != p1["key"]} == {
        k: v for k, v in before.items() if k != p1["key"]
    }


@pytest.mark.parametrize("where", ["before-commit", "after-commit"])
def test_a_killed_actor_still_screens_every_image_exactly_once(
    where, clean, tree, bundle, tmp_path
):
    """SIGKILL of an actor process at its 2nd batch, its part written but not renamed, or
    renamed but not returned: Ray restarts the actor, retries the batch, nothing is lost
    or doubled, and the rows equal a clean run's."""
    _, _, want = clean
    out, marker = tmp_path / "out", tmp_path / "killed"
    stats = run_ray_batch(
        RayBatchOptions(
            in_uri=str(tree),
            out_uri=str(out),
            bundle=bundle,
            batch_size=2,
            fault=f"{where}:2:{marker}",
        )
    )
    assert marker.exists(), "the fault never fired"
    assert len(stats.worker_pids) >= 3, stats.worker_pids  # 2 actors + the restarted one
    assert stats.rows == 12 and stats.duplicates == 0
    assert stats.screened + stats.recovered == 12
    if where == "after-commit":
        assert stats.recovered == 2  # the retried batch found its part and screened nothing
    assert rows_by_key(out) == want
    assert not [p for p in os.listdir(out) if p.startswith(".tmp-")]


def test_a_killed_driver_then_a_rerun_loses_and_doubles_nothing(clean, tree, bundle, tmp_path):
    """`batch --ray ADDRESS` in another process, joined to this module's Ray, SIGKILLs itself
    after hearing of 2 batches (Ray then ends that job's actors); a rerun completes it."""
    import ray

    _, _, want = clean
    out, marker = tmp_path / "out", tmp_path / "killed"
    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, FAULT_ENV: f"driver:2:{marker}", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "edgescreen.runtime.batch.cli", "batch", str(tree), "--ray"]
    cmd += [address, "--out", str(out), "--bundle", str(bundle), "--batch-size", "2"]
    proc = subprocess.run(cmd + ["--actors", "1"], env=env, capture_output=True, timeout=50)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert marker.exists()
    stats = ray_run(tree, bundle, out)
    # at least the two batches the driver heard of were committed; in-flight ones may be too
    # (an actor of the dead job may still commit its batch meanwhile: found, not redone)
    assert stats.new_items <= 12 - 4 and stats.screened + stats.recovered == stats.new_items
    assert stats.rows == 12
    assert rows_by_key(out) == want


def test_cli_ray_reads_uris_and_refuses_to_mix_bundles(clean, tree, bundle, tmp_path, capsys):
    _, _, want = clean
    out = tmp_path / "out"
    argv = ["batch", f"file://{tree}", "--ray", "--out", f"file://{out}", "--bundle", str(bundle)]
    code = batch_main([*argv, "--batch-size", "4", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 1  # two failed files, as `edgescreen batch` exits
    assert (summary["done"], summary["ungradable"], summary["failed"], summary["rows"]) == (
        9,
        1,
        2,
        12,
    )
    assert summary["this_run"]["aliases"] == 1
    assert rows_by_key(out) == want

    other = make_bundle(tmp_path / "other", size=32, seed=1)
    assert batch_main([*argv[:-1], str(other)]) == 2
    assert "use another --out" in capsys.readouterr().err
    assert batch_main(["batch", str(tree), "--bundle", str(bundle)]) == 2  # no --db, no --ray
    assert "--db" in capsys.readouterr().err
