"""A training command for `roost iterate`: TRL's DPOTrainer on a directory of preference rows.

    roost iterate recipes/spin-demo.yaml \\
      --train "python scripts/train_dpo.py --data {data} --model {model} --output {output} --steps 8"

It reads every `*.parquet` in --data (prompt/chosen/rejected, or chosen/rejected holding whole
conversations, as in SPPO's subset),
trains --model for --steps steps (the reference model is the starting model, as in SPIN and
SPPO), and saves the model and its tokenizer to --output. On a GPU, use your own recipe
(e.g. `accelerate launch` of TRL's or the alignment handbook's DPO script); this one is small
on purpose, to make the loop run end to end here, on CPU.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="directory of Parquet files with prompt/chosen/rejected")
    ap.add_argument("--model", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--loss-type", default="sigmoid",
                    help="sigmoid (DPO), sppo_hard, ipo, ...; several comma-separated are summed, e.g. "
                         "sigmoid,sft (DPO plus the chosen answers' NLL: RPO / iterative RPO)")
    ap.add_argument("--loss-weights", default=None, help="comma-separated weights of the loss types (default 1 each)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--span", choices=("full", "first-difference"), default="full",
                    help="tokens the preference is computed on: the whole completions (TRL's DPO), or both cut "
                         "just after the first token where they differ (the shared prefix cancels, so the loss is "
                         "on that one decision; the tokens after it, right given their own past, are not pushed "
                         "down). See the README's 'Does the data help?'")
    ap.add_argument("--optim", default="adamw_torch", help="transformers optimizer name (adamw_torch, sgd, ...)")
    args = ap.parse_args()

    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    files = sorted(str(p) for p in Path(args.data).glob("*.parquet"))
    if not files:
        raise SystemExit(f"{args.data}: no *.parquet files")
    data = load_dataset("parquet", data_files=files, split="train")
    # explicit prompt (roost's main data) or implicit (chosen/rejected hold the whole conversation)
    data = data.select_columns([c for c in ("prompt", "chosen", "rejected") if c in data.column_names])
    print(f"{len(data)} preference rows from {len(files)} file(s)")
    config = DPOConfig(
        output_dir=str(Path(args.output) / "checkpoints"), max_steps=args.steps, learning_rate=args.lr,
        beta=args.beta, loss_type=args.loss_type.split(","),
        loss_weights=[float(w) for w in args.loss_weights.split(",")] if args.loss_weights else None, per_device_train_batch_size=args.batch_size,
        max_length=args.max_length, seed=args.seed, optim=args.optim, report_to=[], save_strategy="no", logging_steps=1,
        use_cpu=not torch.cuda.is_available(),
    )
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    trainer_class = DPOTrainer if args.span == "full" else first_difference_trainer(DPOTrainer)
    trainer = trainer_class(model=model, args=config, train_dataset=data, processing_class=tokenizer)
    result = trainer.train()
    print(f"trained {args.steps} steps, loss {result.training_loss:.4f}")
    trainer.save_model(args.output)
    tokenizer.save_pretrained(args.output)


def first_difference_trainer(base):
    """DPOTrainer whose rows are cut after the first token where chosen and rejected differ."""

    class FirstDifference(base):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            return dataset.map(cut_at_first_difference, desc=f"Cutting {dataset_name} at the first difference")

    return FirstDifference


def cut_at_first_difference(row: dict) -> dict:
    chosen, rejected = row["chosen_ids"], row["rejected_ids"]
    n = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
    return {"chosen_ids": chosen[: n + 1], "rejected_ids": rejected[: n + 1]}


if __name__ == "__main__":
    main()
