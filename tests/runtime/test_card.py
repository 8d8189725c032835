"""model.json: round trip, every kind of invalid card refused with its field named, tamper refused."""

from __future__ import annotations

import copy
import json

import pytest

from edgescreen.runtime.card import (
    SCHEMA_VERSION,
    ModelCard,
    bundle_sha256,
    load_card,
    save_card,
    verify_artifacts,
)
from edgescreen.runtime.errors import CardError


@pytest.fixture()
def card_dict(dr_bundle):
    return json.loads((dr_bundle / "model.json").read_text())


def test_round_trip_is_lossless(dr_bundle, tmp_path):
    card = load_card(dr_bundle)
    save_card(card, tmp_path)
    again = load_card(tmp_path)
    assert again == card
    assert bundle_sha256(again) == bundle_sha256(card)
    assert card.schema_version == SCHEMA_VERSION
    assert card.labels[0] == "no_dr" and card.modality == "fundus"


def _mutate(data, path, value=None, delete=False):
    data = copy.deepcopy(data)
    *parents, last = path
    node = data
    for key in parents:
        node = node[key]
    if delete:
        del node[last]
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(
    "path, value, delete, expected_field",
    [
        (["name"], None, True, "name"),
        (["labels"], None, True, "labels"),
        (["input"], None, True, "input"),
        (["input", "name"], None, True, "input.name"),
        (["preprocessing", "size"], None, True, "preprocessing.size"),
        (["name"], 42, False, "name"),
        (["input", "shape"], [3, 128], False, "input.shape"),
        (["input", "shape"], [3, "128", 128], False, "input.shape[1]"),
        (["input", "batch"], [8, 1, 32], False, "input.batch"),
        (["task"], "segmentation", False, "task"),
        (["outputs", 0, "role"], "logits", False, "outputs[0].role"),
        (["decision", "thresholds"], {"no_dr": 1.5}, False, "decision.thresholds.no_dr"),
        (
            ["decision", "class_decisions"],
            {"mild": "panic"},
            False,
            "decision.class_decisions.mild",
        ),
        (["quality"], "strict", False, "quality"),
        (["preprocessing", "modality"], "oct", False, "preprocessing"),
        (["preprocessing", "channels"], 2, False, "preprocessing.channels"),
        (["drift_limits", "max_flip_rate"], "1%", False, "drift_limits.max_flip_rate"),
        (["surprise"], 1, False, "surprise"),
        (["artifacts", "onnx-fp32", "sha256"], "abc", False, "artifacts.onnx-fp32.sha256"),
        (["artifacts", "onnx-fp32", "file"], "../../etc/passwd", False, "artifacts.onnx-fp32.file"),
        (["artifacts", "onnx-fp32", "precision"], "fp8", False, "artifacts.onnx-fp32.precision"),
    ],
)
def test_invalid_card_names_the_field(card_dict, path, value, delete, expected_field):
    bad = _mutate(card_dict, path, value, delete)
    with pytest.raises(CardError) as err:
        ModelCard.from_dict(bad)
    assert expected_field in str(err.value)


def test_unknown_schema_version_is_refused(card_dict):
    bad = _mutate(card_dict, ["schema_version"], SCHEMA_VERSION + 1)
    bad["field_from_the_future"] = True
    with pytest.raises(CardError, match="schema_version 2 is not supported"):
        ModelCard.from_dict(bad)


def test_bool_is_not_an_integer(card_dict):
    with pytest.raises(CardError, match="schema_version"):
        ModelCard.from_dict(_mutate(card_dict, ["schema_version"], True))


def test_load_card_names_the_file(tmp_path):
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(CardError, match=r"model\.json.*not valid JSON"):
        load_card(tmp_path)
    with pytest.raises(CardError, match="model card not found"):
        load_card(tmp_path / "nowhere")


def test_tampered_artifact_is_refused_naming_the_file(dr_bundle, tmp_path):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(dr_bundle, bundle)
    card = load_card(bundle)
    verify_artifacts(bundle, card)  # intact: passes
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(CardError, match=r"model\.onnx.*sha256 mismatch"):
        verify_artifacts(bundle, card)
    (bundle / "model.onnx").unlink()
    with pytest.raises(CardError, match=r"model\.onnx.*missing"):
        verify_artifacts(bundle, card)


def test_save_is_atomic_and_validates(dr_bundle, tmp_path):
    card = load_card(dr_bundle)
    broken = card.replace(labels=())
    with pytest.raises(CardError, match="labels"):
        save_card(broken, tmp_path)
    assert not (tmp_path / "model.json").exists()
    assert not list(tmp_path.glob(".model.json.*"))
