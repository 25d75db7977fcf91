"""Signed packages: keys, the device's trust store, key rotation, rollback, device-bound personal states.

With a trusted key configured, a package that is unsigned, signed by another key, or altered after signing (any
byte of any file, or a re-sealed manifest) is refused in one line by ``inspect``, ``personalize`` and
``predict`` (and by the docs-only conformance reader); so is an older release than one the device has run.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from device_sim.device import Device
from device_sim.package import load_package, verify_package, write_tar
from edgetune_cli import app
from edgetune_format import manifest as mf
from edgetune_format.errors import PackageError
from edgetune_format.trust import TrustError, generate_key, load_signing_key, signature_document, trusting
from tests.conformance.reader import Reader
from tests.conftest import synthetic_rows, write_csv
from tests.devices import fast, user_data
from tests.test_faults import _one_line_exit_2, _reseal

runner = CliRunner()


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    vendor, _ = generate_key(root / "vendor")
    other, _ = generate_key(root / "other")
    rotated, _ = generate_key(root / "rotated", rotate_from=vendor)
    return {"vendor": vendor, "other": other, "rotated": rotated}


def _pub(key: Path) -> Path:
    return key.with_suffix(".pub")


def _sign(pkg: Path, key: Path, version: int = 1, name: str = "news") -> Path:
    """Give ``pkg`` a release and sign it, as ``export --sign`` does (the manifest's bytes as written)."""

    def edit(m):
        m["release"] = {"name": name, "version": version}

    _reseal(pkg, edit)
    (pkg / mf.SIGNATURE).write_bytes(signature_document((pkg / mf.MANIFEST).read_bytes(), load_signing_key(key)))
    return pkg


@pytest.fixture()
def signed(device_packages, keys, tmp_path) -> Path:
    return _sign(Path(shutil.copytree(device_packages["main"], tmp_path / "pkg")), keys["vendor"])


@pytest.fixture()
def user_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "user.csv", synthetic_rows(30, seed=4))


def _refused(pkg: Path, trust: Path, words: str, user_csv: Path, tmp_path: Path) -> None:
    """inspect, predict and personalize all refuse ``pkg`` under ``--trust`` in one line holding ``words``."""
    result = runner.invoke(app, ["inspect", str(pkg), "--trust", str(trust)])
    assert result.exit_code == 2 and words in result.output and "verified:" not in result.output, result.output
    result = runner.invoke(app, ["predict", "--package", str(pkg), "--trust", str(trust), "--text", "apple"])
    _one_line_exit_2(result)
    assert words in result.output
    result = runner.invoke(app, ["personalize", "--package", str(pkg), "--trust", str(trust), "--data",
                                 str(user_csv), "--out", str(tmp_path / "me"), "--epochs", "1", "--quiet"])  # fmt: skip
    _one_line_exit_2(result)
    assert words in result.output and not (tmp_path / "me").exists()


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path):
    result = runner.invoke(app, ["keygen", "--out", str(tmp_path / "k")])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((tmp_path / "k.key").stat().st_mode) == 0o600
    pub = json.loads((tmp_path / "k.pub").read_text())
    assert pub["algorithm"] == "ed25519" and len(base64.b64decode(pub["key"])) == 32
    result = runner.invoke(app, ["keygen", "--out", str(tmp_path / "k")])  # never overwrites a key
    _one_line_exit_2(result)


def test_a_signed_package_is_accepted_by_a_device_that_trusts_its_key(signed, keys, tmp_path):
    result = runner.invoke(app, ["inspect", str(signed), "--trust", str(_pub(keys["vendor"]))])
    assert result.exit_code == 0, result.output
    assert "checked against the trusted keys" in result.output
    result = runner.invoke(app, ["predict", "--package", str(signed), "--trust", str(_pub(keys["vendor"])),
                                 "--text", "apple pie"])  # fmt: skip
    assert result.exit_code == 0 and result.stdout.strip() in ("alpha", "beta", "gamma"), result.output
    assert verify_package(signed).ok  # without a trust store the signature is reported, not required
    runner.invoke(app, ["inspect", str(signed)])


def test_an_unsigned_package_is_refused(device_packages, keys, user_csv, tmp_path):
    pkg = Path(shutil.copytree(device_packages["main"], tmp_path / "pkg"))
    _refused(pkg, _pub(keys["vendor"]), "the package is not signed", user_csv, tmp_path)


def test_a_package_signed_by_another_key_is_refused(device_packages, keys, user_csv, tmp_path):
    pkg = _sign(Path(shutil.copytree(device_packages["main"], tmp_path / "pkg")), keys["other"])
    _refused(pkg, _pub(keys["vendor"]), "which this device does not trust", user_csv, tmp_path)


@pytest.mark.parametrize("name", ["tokenizer.json", "trunk.onnx.data", "top.safetensors", "encoder.json"])
def test_any_byte_of_any_file_altered_after_signing_is_refused(signed, keys, user_csv, tmp_path, name):
    data = bytearray((signed / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (signed / name).write_bytes(bytes(data))
    _refused(signed, _pub(keys["vendor"]), f"{name}: sha256 does not match", user_csv, tmp_path)


def test_a_resealed_manifest_is_refused(signed, keys, user_csv, tmp_path):
    tok = json.loads((signed / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    words = sorted(vocab, key=vocab.get)
    ids = sorted(vocab.values())
    tok["model"]["vocab"] = dict(zip(words, reversed(ids)))  # same size, shuffled ids: every fit check passes
    _reseal(signed, files={"tokenizer.json": json.dumps(tok).encode()})
    assert verify_package(signed).ok  # the seal and the fit checks cannot tell ...
    _refused(signed, _pub(keys["vendor"]), "altered after it was signed", user_csv, tmp_path)  # ... the signature


def test_the_tar_form_carries_and_checks_the_signature(signed, keys, tmp_path):
    tar = write_tar(signed, tmp_path / "pkg.tar")
    with trusting([_pub(keys["vendor"])]):
        with load_package(tar) as package:
            assert package.trusted
    forged = Path(shutil.copytree(signed, tmp_path / "forged"))
    _reseal(forged, lambda m: m["labels"].reverse())
    with trusting([_pub(keys["vendor"])]), pytest.raises(PackageError, match="altered after it was signed"):
        load_package(write_tar(forged, tmp_path / "forged.tar"))


def test_a_rollback_to_an_older_release_is_refused(device_packages, keys, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETUNE_VERSIONS", str(tmp_path / "versions.json"))
    new = _sign(Path(shutil.copytree(device_packages["main"], tmp_path / "v3")), keys["vendor"], version=3)
    old = _sign(Path(shutil.copytree(device_packages["main"], tmp_path / "v2")), keys["vendor"], version=2)
    trust = [_pub(keys["vendor"])]
    with trusting(trust):
        load_package(old).close()  # v2 first: fine
        assert runner.invoke(app, ["inspect", str(new), "--trust", str(trust[0])]).exit_code == 0
        load_package(new).close()  # v3 is run: recorded
        with pytest.raises(PackageError, match="version 2 is older than version 3"):
            load_package(old)
        load_package(new).close()  # the same release again is fine
    result = runner.invoke(app, ["predict", "--package", str(old), "--trust", str(trust[0]), "--text", "apple"])
    _one_line_exit_2(result)
    assert "rollback refused" in result.output
    other_name = _sign(Path(shutil.copytree(device_packages["main"], tmp_path / "o")), keys["vendor"], 1, "sms")
    with trusting(trust):
        load_package(other_name).close()  # versions are kept per release name


def test_inspect_does_not_record_a_release(signed, keys, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETUNE_VERSIONS", str(tmp_path / "versions.json"))
    assert runner.invoke(app, ["inspect", str(signed), "--trust", str(_pub(keys["vendor"]))]).exit_code == 0
    assert not (tmp_path / "versions.json").exists()


def test_a_rotated_key_is_trusted_through_the_old_one(device_packages, keys, tmp_path):
    pkg = _sign(Path(shutil.copytree(device_packages["main"], tmp_path / "pkg")), keys["rotated"])
    with trusting([_pub(keys["vendor"])]):
        with load_package(pkg) as package:
            assert package.trusted
    with trusting([_pub(keys["other"])]), pytest.raises(PackageError, match="does not trust"):
        load_package(pkg)
    sig = json.loads((pkg / mf.SIGNATURE).read_text())
    sig["rotations"][0]["signature"] = base64.b64encode(bytes(64)).decode()  # a forged certificate
    (pkg / mf.SIGNATURE).write_text(json.dumps(sig))
    with trusting([_pub(keys["vendor"])]), pytest.raises(PackageError, match="does not trust"):
        load_package(pkg)


def test_the_device_wide_trust_file_applies_without_flags(signed, device_packages, keys, tmp_path, monkeypatch):
    store = tmp_path / "trust.json"
    store.write_text(
        json.dumps({"format": "edgetune-trust-store", "keys": [json.loads(_pub(keys["vendor"]).read_text())]})
    )
    monkeypatch.setenv("EDGETUNE_TRUST", str(store))
    assert runner.invoke(app, ["predict", "--package", str(signed), "--text", "apple"]).exit_code == 0
    result = runner.invoke(app, ["predict", "--package", str(device_packages["main"]), "--text", "apple"])
    _one_line_exit_2(result)
    assert (tmp_path / "edgetune-versions.json").exists()  # the record lives beside the trust file


def test_the_conformance_reader_checks_signatures(signed, keys, device_packages, tmp_path):
    trusted = [base64.b64decode(json.loads(_pub(keys["vendor"]).read_text())["key"])]
    Reader(signed, trusted)
    with pytest.raises(ValueError, match="unsigned"):
        Reader(device_packages["main"], trusted)
    _reseal(signed, lambda m: m["labels"].reverse())
    with pytest.raises(ValueError, match="signature does not match"):
        Reader(signed, trusted)
    rotated = _sign(Path(shutil.copytree(device_packages["main"], tmp_path / "r")), keys["rotated"])
    Reader(rotated, trusted)
    other = [base64.b64decode(json.loads(_pub(keys["other"]).read_text())["key"])]
    with pytest.raises(ValueError, match="untrusted"):
        Reader(rotated, other)


def test_export_sign_writes_a_signature_the_device_accepts(tiny_model_dir, keys, tmp_path):
    from tests.packages import make_plan

    model = tiny_model_dir("bert")
    plan = tmp_path / "plan.json"
    make_plan(model).save(plan)
    result = runner.invoke(app, ["export", "--model", str(model), "--plan", str(plan), "--out", str(tmp_path / "p"),
                                 "--no-top-onnx", "--threads", "1", "--sign", str(keys["vendor"])])  # fmt: skip
    _one_line_exit_2(result)  # a signed package needs a release name
    assert "--release" in result.output
    result = runner.invoke(app, ["export", "--model", str(model), "--plan", str(plan), "--out", str(tmp_path / "p"),
                                 "--no-top-onnx", "--threads", "1", "--sign", str(keys["vendor"]), "--release",
                                 "news", "--release-version", "7", "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["release"] == {"name": "news", "version": 7}
    with trusting([_pub(keys["vendor"])]), load_package(tmp_path / "p", record=False) as package:
        assert package.trusted


def test_a_personal_state_from_another_device_is_refused(device_packages, tmp_path, monkeypatch):
    from edgetune_format.trust import generate_device_key

    mine, theirs = generate_device_key(tmp_path / "mine.key"), generate_device_key(tmp_path / "theirs.key")
    monkeypatch.setenv("EDGETUNE_DEVICE_KEY", str(theirs))
    with Device(device_packages["main"], threads=1) as device:
        device.personalize(user_data(30, seed=3), tmp_path / "theirs", fast(epochs=1))
    monkeypatch.setenv("EDGETUNE_DEVICE_KEY", str(mine))
    with Device(device_packages["main"], threads=1) as device:
        device.personalize(user_data(30, seed=3), tmp_path / "mine", fast(epochs=1))
        assert (tmp_path / "mine" / "personal.mac").is_file()
        device.load_personal(tmp_path / "mine")
        with pytest.raises(TrustError, match="written by another device or edited"):
            device.load_personal(tmp_path / "theirs")
    result = runner.invoke(app, ["predict", "--package", str(device_packages["main"]), "--personal",
                                 str(tmp_path / "theirs"), "--text", "apple"])  # fmt: skip
    _one_line_exit_2(result)
    os.unlink(tmp_path / "theirs" / "personal.mac")
    with Device(device_packages["main"], threads=1) as device, pytest.raises(TrustError, match="missing"):
        device.load_personal(tmp_path / "theirs")


def test_evaluate_and_swap_take_trust_too(device_packages, keys, user_csv, tmp_path):
    unsigned = device_packages["main"]
    result = runner.invoke(app, ["evaluate", "--package", str(unsigned), "--data", str(user_csv), "--trust",
                                 str(_pub(keys["vendor"]))])  # fmt: skip
    _one_line_exit_2(result)
    assert "not signed" in result.output
    with Device(unsigned, threads=1) as device:
        device.personalize(user_data(30, seed=3), tmp_path / "p", fast(epochs=1))
    result = runner.invoke(app, ["swap", "--old", str(unsigned), "--new", str(device_packages["other"]), "--personal",
                                 str(tmp_path / "p"), "--data", str(user_csv), "--out", str(tmp_path / "q"),
                                 "--trust", str(_pub(keys["vendor"]))])  # fmt: skip
    _one_line_exit_2(result)
    assert "not signed" in result.output and not (tmp_path / "q").exists()
