"""The manifest schema: what it accepts, what it refuses, and that the committed files are fresh."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from pydantic import ValidationError

from offline_asr.registry.schemas import Manifest, manifest_json_schema
from support.helpers import COMMITTED_MANIFEST, REPO


def _committed() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(COMMITTED_MANIFEST.read_text())
    return data


def test_committed_manifest_lists_the_registered_models() -> None:
    manifest = Manifest.model_validate(_committed())
    assert sorted(m.id for m in manifest.models) == [
        "gigaam-v3-ctc-testtiny",
        "gigaam-v3-e2e-ctc-testtiny",
        "gigaam-v3-e2e-rnnt-testtiny",
        "gigaam-v3-rnnt-testtiny",
        "whisper-base",
        "whisper-tiny.en",
    ]
    for test_model in manifest.models:
        if test_model.engine == "gigaam":  # every GigaAM model here is a structural test model
            assert test_model.variant.endswith("-testtiny"), test_model.id
            assert (test_model.description or "").startswith("STRUCTURAL TEST MODEL, not GigaAM")
    # The canonical form is what is committed: loading and dumping changes nothing.
    assert manifest.to_json() == COMMITTED_MANIFEST.read_text()


def test_committed_json_schema_is_fresh() -> None:
    committed = (REPO / "models" / "manifest.schema.json").read_text()
    assert committed == manifest_json_schema(), "run `make schema` and commit the result"


def _break(change: str) -> dict[str, Any]:
    data = copy.deepcopy(_committed())
    model = data["models"][0]
    artifact = model["artifacts"][0]
    if change == "duplicate id":
        data["models"].append(copy.deepcopy(model))
    elif change == "unknown engine":
        model["engine"] = "wav2vec"
    elif change == "uppercase sha256":
        artifact["sha256"] = artifact["sha256"].upper()
    elif change == "short sha256":
        artifact["sha256"] = "abc123"
    elif change == "dotdot path":
        artifact["path"] = model["path"] + "/../../etc/passwd"
    elif change == "absolute path":
        artifact["path"] = "/etc/passwd"
    elif change == "backslash path":
        artifact["path"] = model["path"] + "\\model.bin"
    elif change == "artifact outside its folder":
        artifact["path"] = "whisper/other/model.bin"
    elif change == "nested model folders":
        other = copy.deepcopy(model)
        other["id"] = "nested"
        other["path"] = model["path"] + "/inner"
        for a in other["artifacts"]:
            a["path"] = other["path"] + "/" + a["path"].rsplit("/", 1)[1]
        data["models"].append(other)
    elif change == "negative size":
        artifact["size"] = -1
    elif change == "unknown field":
        model["weights_url"] = "http://example.invalid"
    elif change == "unpinned hub source":
        model["source"] = {"kind": "huggingface", "repo": "Systran/faster-whisper-base"}
    elif change == "no artifacts":
        model["artifacts"] = []
    return data


@pytest.mark.parametrize(
    "change",
    [
        "duplicate id",
        "unknown engine",
        "uppercase sha256",
        "short sha256",
        "dotdot path",
        "absolute path",
        "backslash path",
        "artifact outside its folder",
        "nested model folders",
        "negative size",
        "unknown field",
        "unpinned hub source",
        "no artifacts",
    ],
)
def test_invalid_manifests_are_refused(change: str) -> None:
    with pytest.raises(ValidationError):
        Manifest.model_validate(_break(change))
