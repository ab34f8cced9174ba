"""`objective: dpo`: preference optimisation on the pairs a judge step built, with TRL's DPOTrainer.

The rows are the `pairs` table's rows of the `train.input` judge step, in TRL's conversational preference format
(`prompt`: the messages both sides answered, `chosen`, `rejected`: assistant turns), the same rows
`datagen export --format preference` writes. The held-out part (`eval.split`) is taken in whole inputs. With `lora:`
the reference model is the student with its adapters switched off (no second copy in memory); without it TRL keeps a
frozen copy.

Evaluation before and after, on the held-out pairs: `loss` (mean token loss on the chosen answers, the same quantity
the other objectives report), `preference_accuracy` (the share of pairs whose chosen answer the model gives a higher
log-probability per token than the rejected one) and `logp_margin` (the mean of that difference).
"""

from __future__ import annotations

from datagen.errors import UserError


def check_dpo(loaded, plan) -> None:
    """`datagen validate`: `objective: dpo` needs `train.input` to be a judge step that builds pairs."""
    from datagen.publish.export import default_input, resolve_input

    name = loaded.spec.train.input or default_input(plan)
    try:
        inp = resolve_input(plan, name, "preference")
    except UserError as exc:
        raise loaded.error(("train", "input"), str(exc)) from None
    if not inp.pairs:
        raise loaded.error(("train", "input") if loaded.spec.train.input else ("train", "objective"),
                           f"`objective: dpo` trains on preference pairs, and `{name}` builds none; set "
                           "`train.input` to a judge step with `pairs:` (or `revise: true`)")


def load_pairs(loaded, plan, input_name: str | None, eval_split: float | None):
    """The judge step's pairs as {prompt, chosen, rejected, completion, row} records, split train/held-out."""
    from datagen.publish.export import fetch_input, preference_record, resolve_input, split_records
    from datagen.store import reads
    from datagen.store.connection import open_store
    from sft.rows import TrainRows

    inp = resolve_input(plan, input_name, "preference")  # build_plan's check_dpo made sure it builds pairs
    name = inp.name
    judged = plan.step(inp.step.spec.input)  # the step whose answers are the two sides
    con = open_store(loaded.store_path, read_only=True)
    try:
        pairs = fetch_input(con, inp).to_pylist()
        # a record's `row` is the chosen answer's row (the input's columns, e.g. a reference answer for verifiers)
        answers = {r["_id"]: r for r in reads.rows(con, judged.name)}
    except UserError:
        raise UserError(f"no preference pairs in `{name}` yet; run `datagen run` first") from None
    finally:
        con.close()
    records, rows = [], []
    for pair in pairs:
        rec = preference_record(pair)
        row = {**answers.get(pair["chosen_id"], {}), "_parent_id": pair["_parent_id"], "_pair_id": pair["_id"]}
        records.append({**rec, "completion": rec["chosen"], "row": row})
        rows.append(row)
    if not records:
        raise UserError(f"nothing to train on: `{name}` has no preference pairs; see `datagen query SPEC \"select "
                        f"reason, count(*) from decisions where stage = 'pairs:{name}' group by 1\"` for why "
                        "candidates were not paired (a smaller `pairs.min_margin` keeps more)")
    parts = split_records(records, rows, eval_split, loaded.spec.seed)
    train, held = parts["train"], parts.get("test", [])
    return TrainRows(input=name, output_column=judged.spec.output, step=judged.name, train=train, eval=held)


def dpo_trainer(loaded, plan, settings, model, tok, rows, args: dict):
    """TRL's DPOTrainer on conversational prompt/chosen/rejected rows."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from sft.model import lora_config

    def dataset(records):
        return Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records])

    config = DPOConfig(**args, beta=settings.dpo.beta, loss_type=[settings.dpo.loss_type],
                       max_length=settings.max_length)
    # the held-out pairs go to TRL too, so `trainer.evaluate()` gives its DPO loss and reward accuracy on them
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset(rows.train),
                         eval_dataset=dataset(rows.eval) if rows.eval else None, processing_class=tok,
                         peft_config=lora_config(settings.lora))
    return trainer, []


def preference_metrics(model, tok, records: list[dict], max_length: int = 1024, batch_size: int = 8) -> dict:
    """preference_accuracy and logp_margin on held-out pairs (log-probabilities per completion token)."""
    if not records:
        return {}
    chosen = _mean_logps(model, tok, [(r["prompt"], r["chosen"]) for r in records], max_length, batch_size)
    rejected = _mean_logps(model, tok, [(r["prompt"], r["rejected"]) for r in records], max_length, batch_size)
    diffs = [c - r for c, r in zip(chosen, rejected)]
    return {"preference_accuracy": sum(d > 0 for d in diffs) / len(diffs), "logp_margin": sum(diffs) / len(diffs)}


def _mean_logps(model, tok, items: list[tuple[list, list]], max_length: int, batch_size: int) -> list[float]:
    """Each answer's mean log-probability per completion token (nan when truncation left it no token)."""
    from sft.evaluate import record_losses

    records = [{"prompt": p, "completion": c} for p, c in items]
    losses = record_losses(model, tok, records, max_length, batch_size)
    return [-total / n if n else float("nan") for total, n in losses]
