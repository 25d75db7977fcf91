"""A tiny device package with a real WordPiece tokenizer, for checking the C library on another machine.

A 2-block BERT (hidden 32, random weights, seed 0) with the bundled all-MiniLM-L6-v2 tokenizer, planned with
the top-k planner (k=1) and exported with edgetune's exporter with the executorch target (trunk.pte, top.pte,
top_train.pte; verified against the source model), plus ``texts.txt``: the first line of 40 BBC articles and a few
awkward texts, and ``user.csv`` / ``test.csv``: labelled first lines of other BBC articles (a user's data to
personalize on, and texts to evaluate on). Needs ``pip install -e ".[examples]"``.

    python native/tools/tiny_package.py OUT_DIR      # writes OUT_DIR/pkg and OUT_DIR/texts.txt
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def main(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from edgetune.api import load_model, plan
    from edgetune.data import TextDataset
    from edgetune.datasets import bbc_news, minilm_path
    from edgetune.modeling import SequenceClassifier
    from exporters.export import ExportOptions, export_package

    out.mkdir(parents=True, exist_ok=True)
    news = bbc_news()
    texts = [t.splitlines()[0] for t in news.texts[:40]] + ["naïve café [SEP] 中文 ＡＢＣ", "", "   ", "x" * 300]
    (out / "texts.txt").write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n")

    torch.manual_seed(0)
    model_dir = out / "model"
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)  # fmt: skip
    BertModel(config).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(model_dir)
    labelled = TextDataset(news.texts[::50], news.labels[::50], source="bbc-news")
    the_plan = plan(str(model_dir), labelled, planner="topk", planner_params={"k": 1}, max_length=32, progress=False)
    backbone, encoder = load_model(model_dir, 32)
    names = labelled.label_map().labels
    classifier = SequenceClassifier(backbone, len(names), list(names))
    classifier.save_pretrained(out / "checkpoint", encoder)
    options = ExportOptions(threads=1, targets=("onnx", "executorch"))
    export_package(out / "checkpoint", the_plan, out / "pkg", options=options)
    for name, rows in (("user.csv", range(1, 2000, 10)), ("test.csv", range(5, 2000, 40))):
        picked = [(news.texts[i].splitlines()[0], news.labels[i]) for i in rows if i < len(news.texts)]
        with (out / name).open("w", newline="") as f:
            csv.writer(f).writerows([("text", "label"), *picked])
    print(out / "pkg")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
