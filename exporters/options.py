"""What an export can be told: :class:`ExportOptions` and the constants its checks read.

Torch-free (onnx is imported only to check an opset): the command line reads these fields to build and show
``edgetune export``'s options (``edgetune_cli.config_options``), so its ``--help`` loads none of the export
machinery; :mod:`exporters.export` does the work.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgetune.errors import check_setting
from exporters.errors import ExportError, ExportSettingError

TARGETS = ("onnx", "executorch")
DEFAULT_OPSET = 18
DEFAULT_ATOL = 1e-4
OPTIMIZE_LEVELS = ("none", "fused")  # exporters.fused: onnxruntime's transformer fusions, or the graph as exported

MIN_OPSET = 14  # the trunk's attention and layer norm need opset 14+ (onnxruntime >= 1.14 runs up to 18+)


def check_opset(opset: int) -> None:
    """An opset torch.onnx can target and this onnx knows; anything else is an :class:`ExportError` up front."""
    import onnx

    latest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= latest:
        raise ExportError(f"opset {opset!r} is outside {MIN_OPSET}..{latest} (the opsets this exporter can write)")


INT8_OP_TYPES = ("MatMul", "Gather")


@dataclass
class Int8Config:
    """How the trunk is quantized (recorded in the manifest)."""

    op_types: tuple[str, ...] = INT8_OP_TYPES
    per_channel: bool = True
    reduce_range: bool = False
    weight_type: str = "QInt8"
    method: str = "onnxruntime.quantization.quantize_dynamic"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["op_types"] = list(self.op_types)
        return d


@dataclass
class ExportOptions:
    """Everything ``edgetune export`` can be told; the defaults are what a device wants."""

    # Each field's ``help`` is also the text of its command-line option (edgetune_cli.config_options builds the
    # options of `edgetune export` from these fields).
    int8: bool = field(
        default=False,
        metadata={
            "help": "Also ship an int8 trunk (onnxruntime dynamic quantization of MatMul and embedding Gather), and "
            "with --targets executorch trunk.int8.pte (PT2E int8 for XNNPACK); their size and accuracy change on "
            "validation data go into the manifest."
        },
    )
    # none | fused (OPTIMIZE_LEVELS): onnxruntime's transformer fusions in trunk.onnx (exporters.fused); no "choices":
    # a refused value reaches the command line through __post_init__'s ExportSettingError like every other setting
    optimize: str = field(
        default="none",
        metadata={
            "help": "Trunk graph: none (as exported) or fused (onnxruntime's transformer fusions: Attention, "
            "SkipLayerNorm, BiasGelu; BERT-like encoders; other families are recorded as not fused). With "
            "--int8 the int8 trunk is quantized from the fused graph."
        },
    )
    int8_config: Int8Config = field(
        default_factory=Int8Config, metadata={"help": "How the int8 trunk is quantized (per channel, reduced range)."}
    )
    top_onnx: bool = field(
        default=True,
        metadata={
            "help": "Ship the top layers + head as ONNX too (top.onnx, tensors as inputs): devices predict with "
            "onnxruntime alone, with or without a personal state."
        },
    )
    tar: bool = field(
        default=False,
        metadata={"help": "Write one .tar file (--out gets a .tar suffix) instead of a directory."},
    )
    opset: int = field(default=DEFAULT_OPSET, metadata={"help": "ONNX opset (18 runs on onnxruntime >= 1.14)."})
    atol: float = field(
        default=DEFAULT_ATOL, metadata={"help": "Max abs difference allowed between the ONNX and torch outputs (fp32)."}
    )
    threads: int | None = field(
        default=None, metadata={"help": "onnxruntime threads for the checks (default: onnxruntime's choice)."}
    )
    batch_size: int = field(default=32, metadata={"help": "Batch size for probe features and validation."})
    val_fraction: float = field(
        default=0.2, metadata={"help": "Part of --data held out for validation when a head probe is fitted."}
    )
    probe_c: float = field(default=1.0, metadata={"help": "Inverse regularization strength of the head probe."})
    seed: int = field(default=0, metadata={"help": "Seed of the validation split and the probe."})
    # None: the trunk's weights in a side file (trunk.onnx.data) that onnxruntime maps instead of copying (a
    # MiniLM predict process: 91 MB instead of 162 MB after loading the trunk); the top's inline below 2 GiB.
    external_data: bool | None = field(
        default=None,
        metadata={
            "help": "Graph weights in side files (true) or inside the graphs (false); default: the trunk's in "
            "trunk.onnx.data, the top's inline below 2 GiB."
        },
    )
    text_column: str | None = field(default=None, metadata={"help": "Text column (default: the plan's)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (default: the plan's)."})
    skip_budget: float | None = field(
        default=None,
        metadata={
            "help": "HadSkip: keep this fraction of blocks (0-1]; the blocks the gates of a model trained with "
            "`edgetune skip` rank lowest are left out of the trunk and the top, and the manifest records them."
        },
    )
    targets: tuple[str, ...] = field(
        default=("onnx",),
        metadata={
            "help": "What the package carries: onnx (always: trunk.onnx + top safetensors) and executorch "
            "(top_train.pte: the top's joint forward + backward for on-device training; top.pte: inference)."
        },
    )
    executorch_max_batch: int = field(
        default=16,
        metadata={"help": "executorch: the largest batch the programs accept (memory is planned for it)."},
    )
    executorch_train_batch: int = field(
        default=4,
        metadata={
            "help": "executorch: rows per call of the training programs (memory is planned for it); a training "
            "batch of more rows runs in several calls whose gradients are summed, the same step as one call."
        },
    )
    executorch_atol: float = field(
        default=1e-5,
        metadata={
            "help": "executorch: max difference allowed against torch (loss, logits; gradients relative to the "
            "largest gradient of their batch)."
        },
    )
    # an Ed25519 private key (edgetune keygen): write manifest.sig (edgetune_format.trust)
    sign: Path | None = field(
        default=None, metadata={"help": "Sign the package with this private key (edgetune keygen)."}
    )
    # release.name: the package lineage a device's rollback record is kept for
    release: str | None = field(
        default=None, metadata={"help": "Release name (needed with --sign): rollback is refused per name."}
    )
    # release.version: a device refuses a lower one than it has accepted
    release_version: int | None = field(
        default=None, metadata={"help": "Release counter; a device refuses one lower than it has run."}
    )

    def __post_init__(self) -> None:
        """The one check of every option (an :class:`ExportSettingError` names the field; the command line shows
        it under the field's flag)."""
        check_opset(self.opset)
        if self.sign is not None and not self.release:
            raise ExportError("a signed package needs a release name (--release NAME): rollback is refused per name")
        check_setting("release_version", self.release_version, 0, error=ExportSettingError)
        if self.optimize not in OPTIMIZE_LEVELS:
            raise ExportSettingError("optimize", f"must be one of {', '.join(OPTIMIZE_LEVELS)}, got {self.optimize!r}")
        for name in ("batch_size", "executorch_max_batch"):
            check_setting(name, getattr(self, name), 1, error=ExportSettingError)
        # torch.export fixes a dimension whose largest size is 1: a program of single rows cannot be exported
        check_setting("executorch_train_batch", self.executorch_train_batch, 2, error=ExportSettingError)
        check_setting("threads", self.threads, 1, 256, error=ExportSettingError)
        check_setting("val_fraction", self.val_fraction, 0, 1, high_open=True, error=ExportSettingError)
        check_setting("skip_budget", self.skip_budget, 0, 1, low_open=True, error=ExportSettingError)
        for name in ("atol", "executorch_atol"):
            check_setting(name, getattr(self, name), 0, low_open=True, error=ExportSettingError)
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown:
            raise ExportSettingError("targets", f"must be among {', '.join(TARGETS)}: unknown target {unknown[0]!r}")
        if "onnx" not in self.targets:
            raise ExportSettingError("targets", f"must include onnx, got {', '.join(self.targets) or 'none'}")
