"""Trains the demo Mixtral on the King James Bible (see README.md).

    python3 hack/train/train.py --work /tmp/kjv-train

writes WORK/tokenizer.json, WORK/checkpoint.pt and WORK/train.log; export.py
turns the checkpoint into the Hugging Face directory that moegrid ships.
Everything is seeded: the same package, script and thread count give the
same model.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bpe  # noqa: E402
import corpus  # noqa: E402
import mixtral  # noqa: E402

SEED = 1611
BOS, EOS = 1, 2

CONFIG = {
    "vocab_size": 2048,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "initializer_range": 0.02,
    "router_aux_loss_coef": 0.02,
    "max_position_embeddings": 1024,
}

CONTEXT = 128
BATCH = 24
STEPS = 1000
WARMUP = 50
LR = 3e-3
MIN_LR = 3e-4
WEIGHT_DECAY = 0.1
EVAL_EVERY = 200


def stream(enc, chapters):
    """Token ids of the chapters, each followed by EOS."""
    out = []
    for _, text in chapters:
        out.extend(enc.encode(text))
        out.append(EOS)
    return np.array(out, dtype=np.int64)


def windows(ids, context):
    """Rows [BOS] + chunk for consecutive chunks of context tokens of ids:
    fed row[:-1], the model predicts every token of ids exactly once."""
    return [np.concatenate(([BOS], ids[start:start + context])) for start in range(0, len(ids), context)]


def lr_at(step):
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    t = (step - WARMUP) / max(1, STEPS - WARMUP)
    return MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * t))


@torch.no_grad()
def heldout_nll(model, ids, context, limit=None):
    """Mean negative log-likelihood (nats/token) over the held-out stream."""
    model.eval()
    total, count = 0.0, 0
    for row in windows(ids, context)[:limit]:
        x = torch.from_numpy(row[None, :])
        logits, _, _ = model(x[:, :-1])
        total += F.cross_entropy(logits[0], x[0, 1:], reduction="sum").item()
        count += x.shape[1] - 1
    model.train()
    return total / count


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="directory for the tokenizer, checkpoint and log")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    rng = np.random.RandomState(SEED)
    log = open(os.path.join(args.work, "train.log"), "a", buffering=1)

    def say(msg):
        print(msg, file=log)
        print(msg, flush=True)

    start = time.time()
    train, heldout = corpus.split()
    pieces, merges = bpe.train([t for _, t in train], CONFIG["vocab_size"])
    doc = bpe.tokenizer_json(pieces, merges)
    if len(doc["model"]["vocab"]) != CONFIG["vocab_size"]:
        raise SystemExit(f"tokenizer has {len(doc['model']['vocab'])} pieces, want {CONFIG['vocab_size']}")
    with open(os.path.join(args.work, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
    enc = bpe.Encoder(doc)
    train_ids, heldout_ids = stream(enc, train), stream(enc, heldout)
    say(f"corpus: {len(train)} train chapters, {len(train_ids)} tokens; "
        f"{len(heldout)} held-out chapters, {len(heldout_ids)} tokens ({time.time() - start:.0f}s)")

    model = mixtral.MixtralForCausalLM(CONFIG)
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR, betas=(0.9, 0.95), foreach=True)
    say(f"model: {sum(p.numel() for p in model.parameters())} parameters, config {json.dumps(CONFIG)}")

    e, k = CONFIG["num_local_experts"], CONFIG["num_experts_per_tok"]
    t0 = time.time()
    for step in range(STEPS):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        offsets = rng.randint(0, len(train_ids) - CONTEXT, size=BATCH)
        rows = np.stack([np.concatenate(([BOS], train_ids[o:o + CONTEXT])) for o in offsets])
        x = torch.from_numpy(rows)
        logits, router_logits, _ = model(x[:, :-1])
        ce = F.cross_entropy(logits.reshape(-1, CONFIG["vocab_size"]), x[:, 1:].reshape(-1))
        aux = mixtral.load_balancing_loss([r for r in router_logits], e, k)
        loss = ce + CONFIG["router_aux_loss_coef"] * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 20 == 0:
            rate = (step + 1) * BATCH * CONTEXT / (time.time() - t0)
            say(f"step {step} lr {lr_at(step):.2e} train_ce {ce.item():.4f} aux {aux.item():.4f} "
                f"{rate:.0f} tok/s {time.time() - start:.0f}s")
        if (step + 1) % EVAL_EVERY == 0 or step + 1 == STEPS:
            nll = heldout_nll(model, heldout_ids, CONTEXT, limit=None if step + 1 == STEPS else 100)
            say(f"eval step {step + 1} heldout_ce {nll:.4f} ppl {math.exp(nll):.2f}")
            torch.save({"config": CONFIG, "step": step + 1, "model": model.state_dict()},
                       os.path.join(args.work, "checkpoint.pt"))
    say(f"done: {STEPS} steps, {STEPS * BATCH * CONTEXT} tokens, {time.time() - start:.0f}s wall")


if __name__ == "__main__":
    main()
