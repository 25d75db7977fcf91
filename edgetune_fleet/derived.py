"""A second backbone made from a first one, when no other is at hand.

The simulated swap moves users from a model to the same model without its top
blocks: another feature space of the same family and width. It says less
about a vendor's update than a backbone of another family (see the MPNet
swap), but it installs with nothing but the first model.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def derive_backbone(model_dir: str | Path, out: str | Path, drop_top: int = 1) -> Path:
    """A second backbone made from ``model_dir``: the same model without its top ``drop_top`` blocks, saved with
    its tokenizer as a plain Hugging Face directory. Its features (the output of a lower block) live in another
    space than the original's, as after a vendor's backbone update."""
    from transformers import AutoTokenizer

    from edgetune.backbones import Backbone

    backbone = Backbone.from_pretrained(model_dir)
    if not 1 <= drop_top < backbone.num_layers:
        raise ValueError(f"drop_top must be in 1..{backbone.num_layers - 1}, got {drop_top}")
    del backbone.blocks[backbone.num_layers - drop_top :]
    backbone.model.config.num_hidden_layers = len(backbone.blocks)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # same file system: rename is atomic
    try:
        backbone.model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(model_dir).save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
