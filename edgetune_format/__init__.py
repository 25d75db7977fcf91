"""The device package format: what the exporters write and the device runtime reads, and nothing else.

Both sides import this package; it imports neither of them (only the light core
of :mod:`edgetune`: errors and atomic I/O). It holds:

* :mod:`edgetune_format.manifest` — ``manifest.json``: the file table, the
  integrity seal, the sealed-document reader (:func:`~edgetune_format.manifest.read_sealed`);
* :mod:`edgetune_format.schema` and ``schemas/`` — the JSON Schemas of
  ``manifest.json``, ``top.json`` and ``personal.json`` and their one validator;
* :mod:`edgetune_format.personal` — the personal state a device writes after
  personalizing (``personal.json`` + ``delta.safetensors``);
* :mod:`edgetune_format.trust` — signatures (Ed25519 over the manifest's bytes),
  the trust store, rollback records and device-bound personal states;
* :mod:`edgetune_format.errors` — :class:`~edgetune_format.errors.PackageError`,
  raised on either side.

Compatibility rules (the specification is docs/package-format.md):

* A package manifest is written at ``schema_version`` 2
  (:data:`edgetune_format.manifest.SCHEMA_VERSION`); versions 1 and 2 are read
  (:data:`~edgetune_format.manifest.READABLE_VERSIONS`). Version 1 numbered
  ``skip`` lists and ``top.json``'s ``layers`` from 0; it is renumbered in
  memory after its seal is checked (``upgrade``, ``upgrade_top_spec``), so a
  version-1 package keeps its seal and its signature.
* A personal state is written and read at ``schema_version`` 1
  (:data:`edgetune_format.personal.SCHEMA_VERSION`).
* Any other version is refused before any other field is trusted, with a
  message that names the versions this reader reads and what to do (re-export
  the package, personalize again).
* Fields a reader does not know are ignored; the keys a reader uses are
  required, with their types, by the shipped schemas. A new optional field
  keeps the version; a field that changes meaning, or a new required one,
  takes a new version, and this reader then reads the old one too.
"""
