"""Parts that must fit each other: what a seal cannot show, refused at load by ``inspect`` and every job alike.

Each case is a package re-sealed so that every hash matches (what anyone with write access can do); before
these checks each one verified and then crashed inside onnxruntime mid-job.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from device_sim.package import load_package, verify_package
from edgetune_cli import app
from edgetune_format.errors import PackageError
from tests.test_faults import _one_line_exit_2, _reseal

runner = CliRunner()


@pytest.fixture()
def pkg(device_packages, tmp_path) -> Path:
    return Path(shutil.copytree(device_packages["main"], tmp_path / "pkg"))


def _refused_everywhere(pkg: Path, words: str) -> None:
    """verify, load, inspect and predict all refuse the package with a line holding ``words``."""
    assert any(words in p for p in verify_package(pkg).problems), verify_package(pkg).problems
    with pytest.raises(PackageError, match=re.escape(words)):
        load_package(pkg)
    result = runner.invoke(app, ["inspect", str(pkg)])
    assert result.exit_code == 2 and words in result.output and "verified:" not in result.output
    result = runner.invoke(app, ["predict", "--package", str(pkg), "--text", "apple pie"])
    _one_line_exit_2(result)
    assert words in result.output


def test_a_tokenizer_with_ids_beyond_the_trunks_vocabulary_is_refused(pkg):
    tok = json.loads((pkg / "tokenizer.json").read_text())
    tok["model"]["vocab"] = {word: i + 20000 for word, i in tok["model"]["vocab"].items()}
    _reseal(pkg, files={"tokenizer.json": json.dumps(tok).encode()})
    _refused_everywhere(pkg, "outside the trunk's vocabulary")


def test_max_length_beyond_the_trunks_positions_is_refused(pkg):
    encoder = json.loads((pkg / "encoder.json").read_text())
    encoder["max_length"] = 4096

    def edit(m):
        m["tokenizer"]["max_length"] = 4096

    _reseal(pkg, edit, files={"encoder.json": json.dumps(encoder).encode()})
    _refused_everywhere(pkg, "token positions")


def test_encoder_max_length_must_agree_with_the_manifest(pkg):
    encoder = json.loads((pkg / "encoder.json").read_text())
    encoder["max_length"] = 16
    _reseal(pkg, files={"encoder.json": json.dumps(encoder).encode()})
    _refused_everywhere(pkg, "differs from the manifest")


def test_external_data_in_another_components_file_is_refused_by_inspect_too(pkg):
    """The trunk's external data pointed at the top's file: inspect used to say verified while predict refused."""
    raw = (pkg / "trunk.onnx").read_bytes()
    assert b"trunk.onnx.data" in raw
    forged = raw.replace(b"trunk.onnx.data", b"top.safetensors")  # same length: the protobuf stays valid
    _reseal(pkg, files={"trunk.onnx": forged})
    _refused_everywhere(pkg, "external data 'top.safetensors' is not one of this component's files")


def test_top_tensors_that_do_not_fit_the_plan_are_refused(pkg):
    from safetensors.numpy import load_file, save

    tensors = load_file(str(pkg / "top.safetensors"))
    tensors["head.weight"] = np.zeros((5, tensors["head.weight"].shape[1]), np.float32)
    _reseal(pkg, files={"top.safetensors": save(tensors)})
    problems = " ".join(verify_package(pkg).problems)
    assert "head.weight has 5 rows for 3 labels" in problems
    assert "top.onnx: input head.weight" in problems  # the ONNX top expects the exported shape
    _refused_everywhere(pkg, "head.weight has 5 rows")


def test_a_missing_block_is_refused(pkg):
    from safetensors.numpy import load_file, save

    tensors = {k: v for k, v in load_file(str(pkg / "top.safetensors")).items() if not k.startswith("blocks.1.")}
    _reseal(pkg, files={"top.safetensors": save(tensors)})
    _refused_everywhere(pkg, "holds blocks [0] but top.json lists 2 blocks")


def test_an_onnxruntime_failure_during_a_job_is_one_line_naming_the_part(pkg):
    with load_package(pkg) as package:
        ids = np.array([[1, 10**6]], np.int64)  # an id no check could have let through: fed by hand
        with pytest.raises(PackageError, match=r"trunk\.onnx: onnxruntime failed while running it") as err:
            package.run_trunk(ids, np.ones_like(ids))
        assert "\n" not in str(err.value)
        assert package.trunk_session().get_inputs()  # everything else of the session is still reachable
