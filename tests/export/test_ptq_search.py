"""Accuracy-aware PTQ: the search's mechanics on a tiny model, and its record in the card."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from export_helpers import export_cache, make_checkpoint, synth_set  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("export_cache")


@pytest.fixture(scope="module")
def dr(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    return {
        "root": root,
        "ckpt": make_checkpoint(root / "run", "multitask"),
        "calib": synth_set(root / "calib", "dr_grading", 12, seed=21),
        "val": synth_set(root / "val", "dr_grading", 10, seed=22),
        "eval": synth_set(root / "eval", "dr_grading", 10, seed=23),
    }


def _float_nodes_unquantized(path, names):
    model = onnx.load(str(path))
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    by_name = {n.name: n for n in model.graph.node}
    for name in names:
        assert not any(i in dq_out for i in by_name[name].input), f"{name} still reads Q/DQ"


def test_greedy_search_keeps_layers_float_until_the_target_holds(dr, tmp_path):
    """An unreachable-but-for-float target drives doubling, bisection and pruning."""
    from edgescreen.export import calibration as C
    from edgescreen.export import ptq_search as P
    from edgescreen.export.data import prepare_samples, resolve
    from edgescreen.export.verify import run_shipped

    bundle = tmp_path / "b"
    from edgescreen.export import export_bundle

    export_bundle(
        dr["ckpt"], bundle, precisions=("fp32",), eval=dr["eval"], progress=False, calib_size=8
    )
    from edgescreen.runtime.card import load_card

    card = load_card(bundle)
    calib = resolve(dr["calib"], what="c").samples[:8]
    val = resolve(dr["val"], what="v").samples
    cache = tmp_path / "minmax.json"
    C.compute_ranges(
        bundle / "model.onnx", card, "minmax", cache,
        lambda idx: prepare_samples([calib[i] for i in idx], card), len(calib),
    )  # fmt: skip
    x = prepare_samples(val, card)
    ref = run_shipped(bundle, card, "fp32", x)
    y = np.array([s.label for s in val])

    class Oracle(P.Evaluator):
        """Real runs, but passes only once `needed` are float: drives doubling,
        bisection and pruning to a known answer."""

        needed: set = set()

        def judge(self, folder, form, method, float_nodes):
            trial = super().judge(folder, form, method, float_nodes)
            trial.violations = [] if self.needed <= set(float_nodes) else ["oracle"]
            return trial

    ev = Oracle(card, x, y, [s.ref for s in val], ref)
    from edgescreen.export.quantize import quantize

    quantize(bundle / "model.onnx", tmp_path / "full.onnx", target="cpu", method="minmax",
             cache_file=cache)  # fmt: skip
    ranked = P.rank_nodes(
        bundle / "model.onnx", tmp_path / "full.onnx", x, input_name=card.input.name,
        form="cpu", exclude=[],
    )  # fmt: skip
    Oracle.needed = {ranked[0][0], ranked[4][0]}  # the 1st and the 5th most harmful

    def run():
        return P.search_form(
            bundle / "model.onnx", card, "cpu", {"minmax": cache}, ev, max_trials=20, rank="sqnr"
        )

    # Where every plan has as many float/INT8 boundaries, pruning drops all it can.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(P, "boundaries", lambda path: 0)
        result, path = run()
    assert result.method == "minmax" and result.trials <= 20
    assert result.baseline["minmax"]["passed"] is False
    names = [n["name"] for n in result.float_nodes]
    assert result.passed and set(names) == Oracle.needed  # doubling to 8, bisect to 5, prune to 2
    shutil.rmtree(path.parent)

    # Counted for real, it keeps the nodes whose removal would split a float run (one more
    # quantize/dequantize pass at run time), says so in the card, and drops the others.
    result, path = run()
    names = [n["name"] for n in result.float_nodes]
    assert result.passed and Oracle.needed < set(names)  # on this model some runs stay whole
    for node in result.float_nodes:
        split = "dropping it split a float run" in node["reason"]
        assert split == (node["name"] not in Oracle.needed), node
    assert result.final["boundaries"] == P.boundaries(path)
    assert all(n["reason"].startswith("reads ") and n["op_type"] for n in result.float_nodes)
    assert all("cpu_cost_ms" in n for n in result.float_nodes)
    assert set(result.cpu_latency_ms) == {
        "fp32_ms",
        "full_int8_ms",
        "with_float_layers_ms",
        "faster_than_fp32",
    }
    lat = result.cpu_latency_ms
    assert lat["faster_than_fp32"] == (lat["with_float_layers_ms"] < lat["fp32_ms"])
    _float_nodes_unquantized(path, names)


def test_export_records_the_search_in_the_card(dr, tmp_path):
    from edgescreen.export import export_bundle

    report = export_bundle(
        dr["ckpt"],
        tmp_path / "b",
        calib=dr["calib"],
        eval=dr["eval"],
        search_data=dr["val"],
        int8_search=True,
        calib_size=8,
        allow_drift=True,
        allow_synthetic_calibration=True,
        progress=False,
    )
    rec = report.card.calibration["mixed_precision"]
    assert rec["judged_on"] == dr["val"]
    assert set(rec["forms"]) == {"tensorrt", "cpu"}
    for form, file in (("tensorrt", "model.int8.onnx"), ("cpu", "model.int8-cpu.onnx")):
        f = rec["forms"][form]
        assert f["method"] in ("entropy", "percentile", "minmax")
        assert set(f["full_int8_validation"]) == {"entropy", "percentile", "minmax"}
        _float_nodes_unquantized(tmp_path / "b" / file, [n["name"] for n in f["float_nodes"]])


def test_qat_after_the_search_trains_each_form_around_its_float_layers(dr, tmp_path):
    """--int8-search with --qat: the search runs on the FP32 model first, then each form's
    student fine-tunes with that form's float layers float, and its Q/DQ file keeps them."""
    pytest.importorskip("modelopt.torch.quantization")
    from edgescreen.export import export_bundle

    report = export_bundle(
        dr["ckpt"],
        tmp_path / "b",
        calib=dr["calib"],
        eval=dr["eval"],
        search_data=dr["val"],
        int8_search=True,
        qat_epochs=1,
        calib_size=8,
        allow_drift=True,
        allow_synthetic_calibration=True,
        progress=False,
    )
    cal = report.card.calibration
    plans, qat = cal["mixed_precision"]["forms"], cal["qat"]["forms"]
    assert set(qat) == {"tensorrt", "cpu"}
    for form, file in (("tensorrt", "model.int8.onnx"), ("cpu", "model.int8-cpu.onnx")):
        kept = [n["name"] for n in plans[form]["float_nodes"]]
        convs = [n for n in kept if n.endswith("Conv")]
        assert set(convs) <= set(qat[form]["convs_float"])
        assert qat[form]["calibration_method"] == plans[form]["method"]
        _float_nodes_unquantized(tmp_path / "b" / file, kept)
    assert not list((tmp_path / "b").glob(".qat-source*"))


def test_search_refuses_validation_images_that_are_test_images(dr, tmp_path):
    from edgescreen.export import export_bundle
    from edgescreen.export.calibration import CalibrationError

    with pytest.raises(CalibrationError, match="byte-identical"):
        export_bundle(
            dr["ckpt"], tmp_path / "b", calib=dr["calib"], eval=dr["eval"],
            search_data=dr["eval"], int8_search=True, allow_synthetic_calibration=True,
            progress=False,
        )  # fmt: skip


def test_the_export_report_says_when_the_searched_cpu_form_is_no_faster_than_fp32():
    from types import SimpleNamespace

    from edgescreen.export.bundle import ExportReport

    def form(mixed: float, faster: bool) -> dict:
        lat = {"fp32_ms": 3.8, "full_int8_ms": 1.5, "with_float_layers_ms": mixed}
        return {
            "float_nodes": [{"name": "a"}] * 17,
            "cpu_latency_ms": {**lat, "faster_than_fp32": faster},
        }

    card = SimpleNamespace(
        calibration={
            "mixed_precision": {"forms": {"cpu": form(4.5, False), "tensorrt": form(3.6, True)}}
        }
    )
    notes = ExportReport(Path("b"), card, [], {}).search_notes()
    assert notes[0].startswith("INT8 search, cpu form: 17 layers kept float; CPU form 4.50 ms")
    assert notes[0].endswith("no faster than FP32 on this CPU, so screen with --precision fp32")
    assert "no faster" not in notes[1]  # the TensorRT form runs on TensorRT, not on this CPU


def test_a_plan_fails_when_the_median_or_p95_probability_shift_exceeds_its_limit(dr, tmp_path):
    """Flips and |Δ metric| can pass while every probability moved: the spread limits catch it."""
    from edgescreen.export import export_bundle
    from edgescreen.export import ptq_search as P
    from edgescreen.export.data import prepare_samples, resolve
    from edgescreen.export.verify import run_shipped
    from edgescreen.runtime.card import load_card

    bundle = tmp_path / "b"
    export_bundle(dr["ckpt"], bundle, precisions=("fp32",), eval=dr["eval"], progress=False)
    card = load_card(bundle)
    val = resolve(dr["val"], what="v").samples
    x = prepare_samples(val, card)
    ref = run_shipped(bundle, card, "fp32", x)
    rng = np.random.default_rng(0)
    moved = {k: v + 0.3 * rng.standard_normal(v.shape).astype(v.dtype) for k, v in ref.items()}
    dp = P.referral_deltas(card, ref, moved)
    median, p95 = float(np.median(dp)), float(np.percentile(dp, 95))
    assert 0 < median < p95

    def judged(**limits):
        ev = P.Evaluator(card, x, np.array([s.label for s in val]), [s.ref for s in val], ref,
                         **limits)  # fmt: skip
        ev.outputs = lambda folder, form: moved  # what a candidate file would have given
        return [v for v in ev.judge(tmp_path, "cpu", "minmax", []).violations if "|Δ ref" in v]

    assert judged(max_median_dp=median * 1.01, max_p95_dp=p95 * 1.01) == []
    [v] = judged(max_median_dp=median * 0.99, max_p95_dp=p95 * 1.01)
    assert v.startswith("cpu: median |Δ referral probability|")
    [v] = judged(max_median_dp=median * 1.01, max_p95_dp=p95 * 0.99)
    assert v.startswith("cpu: p95 |Δ referral probability|")
    assert len(judged(max_median_dp=None, max_p95_dp=None)) == 0
    assert P.MAX_MEDIAN_DP < 0.005 and P.MAX_P95_DP < 0.02  # aims below the held-out floors
