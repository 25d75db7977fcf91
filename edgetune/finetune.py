"""``finetune(model, plan, data, out)``: one training run from files to a saved, evaluated model.

Everything the user can get wrong is checked before any work starts or
anything is written: the plan (readable, made for this very model: its hash
must match the weights), the data (columns, labels known to the plan), the
output directory (empty, a resumable run, or ``overwrite``). A run writes its
checkpoints to ``out/checkpoint`` and, when it finishes, swaps in the whole
output directory atomically:

```
out/
  backbone/            HF weights (adapters merged) + tokenizer.json + encoder.json
  head.safetensors     task head
  edgetune.json        labels (SequenceClassifier.from_pretrained reads this)
  plan.json            the plan it was trained under
  tuner.json           the tuner and its parameters
  delta.safetensors    the trained tensors only (names as in the top model)
  train.json           settings, per-epoch history, held-out metrics
```
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from edgetune import strict_json
from edgetune.api import load_model
from edgetune.backbones import Backbone
from edgetune.batches import split_validation
from edgetune.callbacks import Callback
from edgetune.checkpoint import previous_dir
from edgetune.data import LabelMap, TextDataset, load_dataset
from edgetune.evaluation import evaluate_classifier
from edgetune.freeze import check_structure
from edgetune.io import atomic_directory, output_lock, private_tempdir, recover
from edgetune.learning_rates import lr_candidates
from edgetune.planner.plan import Plan, PlanError
from edgetune.tokenization import TextEncoder
from edgetune.train import TrainConfig, Trainer, TrainError, TrainResult, is_main_process
from edgetune.tuners import Tuner, get_tuner

CHECKPOINT = "checkpoint"
FEATURES = "features"


def check_plan(plan: Plan, backbone: Backbone, model_hash: str) -> None:
    """The plan must come from this model: same architecture and depth, and the same weights."""
    check_structure(plan, backbone.config.model_type, backbone.num_layers, backbone.hidden_size)
    if plan.model_hash != model_hash:
        raise PlanError(
            f"plan was made for other weights (plan model hash {plan.model_hash[:12]}..., this model "
            f"{model_hash[:12]}...); re-run `edgetune plan` on this model"
        )


def _dataset(data: str | Path | TextDataset, plan: Plan) -> TextDataset:
    return data if isinstance(data, TextDataset) else load_dataset(data, plan.text_column, plan.label_column)


def prepare_output(out: Path, overwrite: bool) -> None:
    """Refuse an output directory that holds something a run would destroy; clear it for ``overwrite``.

    A directory with a checkpoint is a run to resume; with ``overwrite`` its
    checkpoint is dropped and the run starts over (a finished model there is
    replaced only when the new run finishes).
    """
    if out.exists() and not out.is_dir():
        raise TrainError(f"{out}: exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        return
    if overwrite:
        import shutil

        shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
        shutil.rmtree(previous_dir(out / CHECKPOINT), ignore_errors=True)
        return
    ours = {CHECKPOINT, FEATURES, previous_dir(out / CHECKPOINT).name}
    if (out / CHECKPOINT / "state.json").exists() or {p.name for p in out.iterdir()} <= ours:
        return  # a run to resume (or one that stopped before its first checkpoint)
    if (out / "edgetune.json").exists():
        raise TrainError(f"{out}: already holds a trained model; pass --overwrite to replace it")
    raise TrainError(f"{out}: directory is not empty and is not an edgetune training output")


def finetune(
    model: str | Path | tuple[Backbone, TextEncoder],
    plan: Plan | str | Path,
    data: str | Path | TextDataset,
    out: str | Path | None = None,
    config: TrainConfig | None = None,
    tuner: str | Tuner | None = None,
    tuner_params: dict[str, Any] | None = None,
    eval_data: str | Path | TextDataset | None = None,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
    search_lr: bool = False,
) -> TrainResult:
    """Train ``model`` as ``plan`` says on ``data``; evaluate on ``eval_data``; save to ``out``.

    ``tuner`` defaults to the plan's tuner and parameters. A loaded
    ``(Backbone, TextEncoder)`` is trained in place. Without learning rates in
    ``config`` the rule of :mod:`edgetune.learning_rates` sets them for the
    plan's cut; ``search_lr`` instead trains the rule's grid
    (:func:`~edgetune.learning_rates.lr_candidates`) and keeps the run that
    scores best on the validation split (``config.val_fraction``, 0.1 when 0).
    """
    args = (config, tuner, tuner_params, eval_data, overwrite, callbacks, search_lr)
    if out is None:
        return _finetune(model, plan, data, None, *args)
    out = Path(out)
    with output_lock(out):  # one run per output directory; what a killed run left half-written is swept
        recover(out.parent, [out.name])
        recover(out, [CHECKPOINT, FEATURES])
        return _finetune(model, plan, data, out, *args)


def _finetune(
    model: str | Path | tuple[Backbone, TextEncoder],
    plan: Plan | str | Path,
    data: str | Path | TextDataset,
    out: str | Path | None,
    config: TrainConfig | None,
    tuner: str | Tuner | None,
    tuner_params: dict[str, Any] | None,
    eval_data: str | Path | TextDataset | None,
    overwrite: bool,
    callbacks: Sequence[Callback],
    search_lr: bool,
) -> TrainResult:
    config = config or TrainConfig()
    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    label_map = LabelMap(tuple(plan.labels))
    dataset = _dataset(data, plan)
    dataset.encoded_labels(label_map)  # unknown labels fail here, naming the row
    held_out = _dataset(eval_data, plan) if eval_data is not None else None
    if held_out is not None:
        held_out.encoded_labels(label_map)
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        prepare_output(out_path, overwrite)
    if tuner is None:
        tuner_obj = get_tuner(plan.tuner, **(plan.tuner_params if tuner_params is None else tuner_params))
    else:
        tuner_obj = get_tuner(tuner, **(tuner_params or {}))

    if isinstance(model, tuple):
        backbone, encoder = model
    else:
        backbone, encoder = load_model(model, config.max_length or plan.max_length)
    model_hash = backbone.fingerprint()
    check_plan(plan, backbone, model_hash)

    if search_lr:
        result = _search_learning_rate(
            backbone, encoder, plan, label_map, dataset, tuner_obj, config, model_hash, out_path
        )
        if held_out is not None:
            result.metrics = evaluate_classifier(result.classifier, encoder, held_out, progress=config.progress)
        if out_path is not None and is_main_process():
            save_result(out_path, result, plan)
        return result

    train_set, val_set = split_validation(dataset, config.val_fraction, config.seed)
    trainer = Trainer(
        backbone,
        encoder,
        plan.cut,
        label_map,
        tuner_obj,
        config,
        checkpoint_dir=out_path / CHECKPOINT if out_path is not None else None,
        cache_dir=out_path / FEATURES if out_path is not None else None,
        callbacks=callbacks,
        model_hash=model_hash,
    )
    try:
        result = trainer.fit(train_set, val=val_set)
        if held_out is not None:
            result.metrics = trainer.evaluate(trainer.source(held_out, "test"), held_out.encoded_labels(label_map))
    finally:
        trainer.cleanup()
    if out_path is not None and is_main_process():  # several processes: the first one writes
        save_result(out_path, result, plan)
    trainer.accelerator.wait_for_everyone()
    return result


def _search_learning_rate(
    backbone: Backbone,
    encoder: TextEncoder,
    plan: Plan,
    label_map: LabelMap,
    dataset: TextDataset,
    tuner: Tuner,
    config: TrainConfig,
    model_hash: str,
    out: Path | None,
) -> TrainResult:
    """Train every candidate learning rate on a copy of the model; keep the best on the validation split.

    The candidates share one feature cache (the trunk is frozen, so its output
    does not depend on the rate). The search itself is not checkpointed: an
    interrupted search starts over.
    """
    trained = backbone.num_layers - plan.cut
    tuner_name = tuner.name
    config = replace(config, val_fraction=config.val_fraction or 0.1)
    train_set, val_set = split_validation(dataset, config.val_fraction, config.seed)
    assert val_set is not None
    trials: list[dict[str, Any]] = []
    best: TrainResult | None = None
    with private_tempdir("edgetune-lr-search-") as scratch:
        cache_dir = out / FEATURES if out is not None else Path(scratch)
        steps = math.ceil(len(train_set) / config.batch_size) * config.epochs
        for lr, head_lr in lr_candidates(trained, backbone.num_layers, tuner_name, steps):
            trial_config = replace(config, lr=lr, head_lr=head_lr)
            trainer = Trainer(
                copy.deepcopy(backbone),
                encoder,
                plan.cut,
                label_map,
                get_tuner(tuner_name, **tuner.config.to_dict()),
                trial_config,
                cache_dir=cache_dir,
                model_hash=model_hash,
            )
            try:
                result = trainer.fit(train_set, val=val_set)
            finally:
                trainer.cleanup()
            kept = result.history[(result.best_epoch or len(result.history)) - 1]
            trials.append({"lr": lr, "head_lr": head_lr, **{k: kept[k] for k in ("val_accuracy", "val_macro_f1")}})
            if best_index(trials, config.metric) == len(trials) - 1:
                best = result
    assert best is not None
    best.lr_search = trials
    return best


def best_index(trials: list[dict[str, Any]], metric: str) -> int:
    """Index of the best trial (first of equals: the candidates run from the smallest rate up)."""
    scores = [t[f"val_{metric}"] for t in trials]
    return scores.index(max(scores))


def save_result(out: Path, result: TrainResult, plan: Plan) -> Path:
    """Swap in the finished output directory (layout in the module docstring) in one atomic step."""
    # The weights changed, so their hash no longer matches the plan's: record the model the plan was
    # made for, so that `edgetune export --plan` accepts this checkpoint with the same plan.
    result.classifier.meta.setdefault("base_model_hash", plan.model_hash)
    with atomic_directory(out) as tmp:
        result.classifier.write_files(tmp, result.encoder)
        plan.save(tmp / "plan.json")
        (tmp / "tuner.json").write_text(strict_json.dumps(result.tuner.to_dict(), indent=2))
        save_file(result.delta, str(tmp / "delta.safetensors"))
        (tmp / "train.json").write_text(strict_json.dumps(result.summary(), indent=2))
    return out
