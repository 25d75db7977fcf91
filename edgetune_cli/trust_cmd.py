"""``edgetune keygen``: the vendor's signing keys (and their rotation) and a device's own key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    from edgetune_cli import handle_errors

    app.command("keygen")(handle_errors(keygen_command))


def keygen_command(
    out: Annotated[Path, typer.Option("--out", help="Key name: writes OUT.key (private) and OUT.pub (public).")],
    rotate_from: Annotated[
        Path | None,
        typer.Option("--rotate-from", help="An older private key that vouches for the new one (key rotation)."),
    ] = None,
    device: Annotated[
        bool,
        typer.Option(
            "--device", help="Write a device key at OUT instead (EDGETUNE_DEVICE_KEY: binds personal states)."
        ),
    ] = False,
) -> None:
    """Make an Ed25519 signing key pair for `export --sign` (devices trust OUT.pub with --trust), or with
    --device a secret that binds personal states to this device."""
    from edgetune_cli import console
    from edgetune_format.trust import generate_device_key, generate_key, key_id, load_signing_key

    if device:
        if rotate_from is not None:
            raise typer.BadParameter("a device key is not rotated from a signing key", param_hint="--rotate-from")
        console.print(f"wrote device key {generate_device_key(out)} (mode 0600; set EDGETUNE_DEVICE_KEY to it)")
        return
    private, public = generate_key(out, rotate_from)
    key = load_signing_key(private)
    line = f"wrote {private} (private, mode 0600) and {public}; key id {key_id(key.public_raw)[:16]}"
    if rotate_from is not None:
        line += f", vouched for by {rotate_from} (devices that trust the old key accept packages it signs)"
    console.print(line, highlight=False, soft_wrap=True)
