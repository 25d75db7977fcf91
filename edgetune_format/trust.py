"""Signed packages, the device's trust store, rollback protection, and device-bound personal states.

A seal (``integrity`` in the manifest) detects accidents; anyone who can write a package can recompute it. A
*signature* says who made the package: the vendor signs the exact bytes of ``manifest.json`` with an Ed25519 key
(``manifest.sig`` beside it), and since the manifest lists every file's sha256 and size, the signature covers
every byte of the package. Nothing is re-serialized before signing or checking, so a reader in any language
checks it on the bytes it read (docs/package-format.md, "Signature").

On the device a :class:`TrustStore` holds the public keys it trusts (``--trust PUBKEY`` on the device commands,
or the device-wide trust file named by ``EDGETUNE_TRUST``). With one configured, a package that is unsigned,
signed by a key the store does not trust (directly or through a rotation certificate signed by a trusted key),
or altered after signing is refused in one line; so is a package whose signed ``release.version`` is lower than
the highest version the device has accepted for the same ``release.name`` (rollback; the record is
``edgetune-versions.json`` beside the trust file, or ``EDGETUNE_VERSIONS``). Anchors: TUF's threat model for
software updates (rollback, key rotation) and Android's APK signature scheme (sign the bytes as shipped).

Personal states are bound to the device that wrote them with an HMAC-SHA256 of ``personal.json``'s bytes
(``personal.mac``) under a secret device key (``EDGETUNE_DEVICE_KEY``): with the key configured, a state
without a valid MAC (copied in from elsewhere, or edited and re-sealed) is refused.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetune_format.errors import PackageError

SIGNATURE = "manifest.sig"
SIGNATURE_FORMAT = "edgetune-package-signature"
PUBLIC_KEY_FORMAT = "edgetune-public-key"
TRUST_STORE_FORMAT = "edgetune-trust-store"
ROTATION_CONTEXT = b"edgetune-key-rotation-v1\n"  # what an old key signs, followed by the new key's 32 raw bytes
PERSONAL_MAC = "personal.mac"
PERSONAL_MAC_FORMAT = "edgetune-personal-mac"
TRUST_ENV = "EDGETUNE_TRUST"
VERSIONS_ENV = "EDGETUNE_VERSIONS"
DEVICE_KEY_ENV = "EDGETUNE_DEVICE_KEY"
VERSIONS_FILE = "edgetune-versions.json"
MAX_SIGNATURE_BYTES = 64 << 10


class TrustError(PackageError):
    """A package or a personal state is refused by the device's trust configuration, or a key file is wrong."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str, size: int | None = None) -> bytes:
    try:
        data = base64.b64decode(str(text), validate=True)
    except ValueError:
        raise TrustError(f"{what}: not base64") from None
    if size is not None and len(data) != size:
        raise TrustError(f"{what}: {len(data)} bytes, expected {size}")
    return data


def key_id(raw_public: bytes) -> str:
    """A public key's id: the sha256 (hex) of its 32 raw bytes."""
    return hashlib.sha256(raw_public).hexdigest()


def _public_key(raw: bytes) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(raw)


def _verifies(raw_public: bytes, signature: bytes, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        _public_key(raw_public).verify(signature, data)
    except InvalidSignature:
        return False
    return True


# -- keys ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key (PEM, PKCS#8) and the rotation certificates that lead to it from older keys."""

    private: Any
    rotations: tuple[dict[str, Any], ...] = ()

    @property
    def public_raw(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        return key_id(self.public_raw)

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)


def public_key_document(raw: bytes) -> dict[str, Any]:
    return {"format": PUBLIC_KEY_FORMAT, "algorithm": "ed25519", "key": _b64(raw), "key_id": key_id(raw)}


def _rotation_file(private_path: Path) -> Path:
    return private_path.with_suffix(".rotations.json")


def generate_key(out: Path, rotate_from: Path | None = None) -> tuple[Path, Path]:
    """Write ``<out>.key`` (private, PEM, mode 0600) and ``<out>.pub`` (public key document). With
    ``rotate_from`` (an older private key), the older key signs the new one: the certificate chain goes to
    ``<out>.rotations.json`` and every package the new key signs carries it, so devices that trust the old key
    accept the new one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgetune.io import atomic_write_bytes, atomic_write_json

    private_path, public_path = out.with_suffix(".key"), out.with_suffix(".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise TrustError(f"{path}: exists; a key is never overwritten (choose another --out)")
    key = SigningKey(Ed25519PrivateKey.generate())
    chain: list[dict[str, Any]] = []
    if rotate_from is not None:
        old = load_signing_key(rotate_from)
        cert = {
            "key": _b64(key.public_raw),
            "key_id": key.key_id,
            "signed_by": old.key_id,
            "signature": _b64(old.sign(ROTATION_CONTEXT + key.public_raw)),
        }
        chain = [*old.rotations, cert]
    pem = key.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    atomic_write_bytes(private_path, pem)
    os.chmod(private_path, 0o600)  # a private key is never readable by others, whatever the umask
    atomic_write_json(public_path, public_key_document(key.public_raw))
    if chain:
        atomic_write_json(_rotation_file(private_path), {"rotations": chain})
    return private_path, public_path


def load_signing_key(path: Path) -> SigningKey:
    """A private key written by :func:`generate_key` (and its rotation chain, when it has one)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        private = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise TrustError(f"{path}: no such key file") from None
    except (ValueError, TypeError) as err:
        raise TrustError(f"{path}: not a PEM private key ({err})") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise TrustError(f"{path}: not an Ed25519 key")
    rotations: tuple[dict[str, Any], ...] = ()
    chain = _rotation_file(Path(path))
    if chain.is_file():
        rotations = tuple(json.loads(chain.read_text()).get("rotations", []))
    return SigningKey(private, rotations)


def signature_document(manifest_bytes: bytes, key: SigningKey) -> bytes:
    """``manifest.sig``: the Ed25519 signature of ``manifest_bytes`` exactly as written, with the signer's key."""
    doc = {
        "format": SIGNATURE_FORMAT,
        "algorithm": "ed25519",
        "key": _b64(key.public_raw),
        "key_id": key.key_id,
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "signature": _b64(key.sign(manifest_bytes)),
        "rotations": list(key.rotations),
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


# -- the device's trust store -------------------------------------------------------------------------------------


def _read_public_keys(path: Path) -> list[bytes]:
    try:
        doc = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise TrustError(f"{path}: no such trust file or public key") from None
    except (OSError, ValueError) as err:
        raise TrustError(f"{path}: not a public key or trust store ({err})") from None
    if isinstance(doc, dict) and doc.get("format") == PUBLIC_KEY_FORMAT:
        docs = [doc]
    elif isinstance(doc, dict) and doc.get("format") == TRUST_STORE_FORMAT and isinstance(doc.get("keys"), list):
        docs = doc["keys"]
    else:
        raise TrustError(f"{path}: not an {PUBLIC_KEY_FORMAT} or {TRUST_STORE_FORMAT} document")
    keys = []
    for entry in docs:
        if not isinstance(entry, dict) or entry.get("algorithm") != "ed25519":
            raise TrustError(f"{path}: a key that is not an ed25519 public key")
        keys.append(_unb64(entry.get("key"), f"{path}: key", 32))
    return keys


@dataclass
class TrustStore:
    """The public keys a device trusts, and where it records the highest release version it accepted."""

    keys: list[bytes]
    versions_path: Path
    sources: list[Path] = field(default_factory=list)

    @classmethod
    def load(cls, paths: list[Path]) -> TrustStore:
        """From public key files or trust store documents (the first one's directory holds the version record,
        unless ``EDGETUNE_VERSIONS`` names it)."""
        keys = [key for path in paths for key in _read_public_keys(path)]
        versions = os.environ.get(VERSIONS_ENV) or str(Path(paths[0]).resolve().parent / VERSIONS_FILE)
        return cls(keys, Path(versions), list(paths))

    @property
    def key_ids(self) -> set[str]:
        return {key_id(k) for k in self.keys}

    def check(self, manifest_bytes: bytes, signature_bytes: bytes | None, manifest: dict[str, Any]) -> None:
        """Refuse (one :class:`TrustError` line) a package this device must not run; nothing is recorded."""
        if signature_bytes is None:
            raise TrustError(f"{SIGNATURE}: missing: the package is not signed, and this device runs only signed "
                             f"packages (trusted keys: {', '.join(sorted(i[:16] for i in self.key_ids))})")  # fmt: skip
        sig = _parse_signature(signature_bytes)
        signer = _unb64(sig.get("key"), f"{SIGNATURE}: key", 32)
        trusted = {key_id(k) for k in self.keys}
        for cert in sig.get("rotations") or []:  # each certificate: an already trusted key vouches for a new one
            new = _unb64(cert.get("key") if isinstance(cert, dict) else None, f"{SIGNATURE}: rotation key", 32)
            by = cert.get("signed_by")
            old = next((k for k in self.keys if key_id(k) == by), None) or _chained(sig, by)
            if by in trusted and old is not None:
                proof = _unb64(cert.get("signature"), f"{SIGNATURE}: rotation signature", 64)
                if _verifies(old, proof, ROTATION_CONTEXT + new):
                    trusted.add(key_id(new))
        if key_id(signer) not in trusted:
            raise TrustError(
                f"{SIGNATURE}: signed by key {key_id(signer)[:16]}, which this device does not trust (trusted: "
                f"{', '.join(sorted(i[:16] for i in self.key_ids))}; no rotation certificate leads to it)"
            )
        proof = _unb64(sig.get("signature"), f"{SIGNATURE}: signature", 64)
        if not _verifies(signer, proof, manifest_bytes):
            raise TrustError(
                f"{SIGNATURE}: the signature does not match manifest.json: the package was altered after it was "
                "signed (or re-sealed); refused"
            )
        self.check_version(manifest)

    def check_version(self, manifest: dict[str, Any]) -> None:
        release = manifest.get("release")
        if not isinstance(release, dict) or not isinstance(release.get("version"), int):
            raise TrustError("manifest.json: a signed package must carry release.name and release.version")
        name, version = str(release.get("name")), int(release["version"])
        seen = self.accepted().get(name)
        if seen is not None and version < seen:
            raise TrustError(
                f"manifest.json: release {name!r} version {version} is older than version {seen}, which this device "
                f"has already accepted (rollback refused; record: {self.versions_path})"
            )

    def accepted(self) -> dict[str, int]:
        try:
            doc = json.loads(self.versions_path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise TrustError(f"{self.versions_path}: unreadable version record ({err})") from None
        return {str(k): int(v) for k, v in (doc.get("accepted") or {}).items()}

    def record(self, manifest: dict[str, Any]) -> None:
        """Remember the package's release version as the lowest this device accepts from now on."""
        from edgetune.io import atomic_write_json, output_lock

        release = manifest.get("release") or {}
        name, version = str(release.get("name")), int(release.get("version", 0))
        with output_lock(self.versions_path, "EDGETUNE_VERSIONS"):
            accepted = self.accepted()
            if accepted.get(name, -1) >= version:
                return
            accepted[name] = version
            atomic_write_json(self.versions_path, {"format": "edgetune-accepted-versions", "accepted": accepted})


def _chained(sig: dict[str, Any], by: Any) -> bytes | None:
    """A key introduced by an earlier certificate of the same chain (rotation A -> B -> C)."""
    for cert in sig.get("rotations") or []:
        if isinstance(cert, dict) and cert.get("key_id") == by:
            return _unb64(cert.get("key"), f"{SIGNATURE}: rotation key", 32)
    return None


def _parse_signature(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_SIGNATURE_BYTES:
        raise TrustError(f"{SIGNATURE}: more than {MAX_SIGNATURE_BYTES} bytes (not a signature)")
    try:
        sig = json.loads(raw)
    except ValueError as err:
        raise TrustError(f"{SIGNATURE}: not JSON ({err})") from None
    if not isinstance(sig, dict) or sig.get("format") != SIGNATURE_FORMAT or sig.get("algorithm") != "ed25519":
        raise TrustError(f"{SIGNATURE}: not an {SIGNATURE_FORMAT} document with algorithm ed25519")
    return sig


def signer_of(signature_bytes: bytes) -> str:
    """The key id (first 16 hex digits) a signature names, without checking it: for ``inspect``'s summary."""
    return str(_parse_signature(signature_bytes).get("key_id", "?"))[:16]


_active: list[TrustStore | None] = []


@contextlib.contextmanager
def trusting(paths: list[Path] | None) -> Iterator[TrustStore | None]:
    """Use the keys of ``paths`` (``--trust``) for every package this block loads; none given: the device-wide
    trust file of ``EDGETUNE_TRUST``, if set."""
    store = TrustStore.load(list(paths)) if paths else None
    _active.append(store)
    try:
        yield active()
    finally:
        _active.pop()


def active() -> TrustStore | None:
    """The trust store in force: the innermost :func:`trusting` block's, else ``EDGETUNE_TRUST``'s, else none."""
    for store in reversed(_active):
        if store is not None:
            return store
    env = os.environ.get(TRUST_ENV)
    return TrustStore.load([Path(env)]) if env else None


# -- device key: personal states bound to this device -------------------------------------------------------------


def generate_device_key(path: Path) -> Path:
    """32 random bytes (hex), mode 0600: the secret that MACs this device's personal states."""
    from edgetune.io import atomic_write_text

    if path.exists():
        raise TrustError(f"{path}: exists; a device key is never overwritten")
    atomic_write_text(path, secrets.token_hex(32) + "\n")
    os.chmod(path, 0o600)
    return path


def device_key() -> bytes | None:
    """The key of ``EDGETUNE_DEVICE_KEY`` (None when not set)."""
    path = os.environ.get(DEVICE_KEY_ENV)
    if not path:
        return None
    try:
        key = bytes.fromhex(Path(path).read_text().strip())
    except FileNotFoundError:
        raise TrustError(f"{path}: no such device key ({DEVICE_KEY_ENV})") from None
    except ValueError:
        raise TrustError(f"{path}: not a device key (hex) ({DEVICE_KEY_ENV})") from None
    if len(key) < 16:
        raise TrustError(f"{path}: a device key needs at least 16 bytes")
    return key


def personal_mac(key: bytes, manifest_bytes: bytes) -> bytes:
    doc = {
        "format": PERSONAL_MAC_FORMAT,
        "algorithm": "hmac-sha256",
        "key_id": hashlib.sha256(key).hexdigest()[:16],
        "mac": hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest(),
    }
    return (json.dumps(doc) + "\n").encode()


def check_personal_mac(state_dir: Path, manifest_bytes: bytes) -> None:
    """With a device key configured, refuse a personal state this device did not write (or that was edited)."""
    key = device_key()
    if key is None:
        return
    try:
        doc = json.loads((state_dir / PERSONAL_MAC).read_bytes())
    except FileNotFoundError:
        raise TrustError(f"{state_dir}: {PERSONAL_MAC} missing: not written by this device; refused") from None
    except ValueError:
        raise TrustError(f"{state_dir}: {PERSONAL_MAC} is not JSON; refused") from None
    want = hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest()
    if not isinstance(doc, dict) or not hmac.compare_digest(str(doc.get("mac", "")), want):
        raise TrustError(
            f"{state_dir}: {PERSONAL_MAC} does not match: the state was written by another device or edited; refused"
        )
