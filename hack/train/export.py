"""Exports a train.py checkpoint as the Hugging Face directory moegrid ships,
and measures it.

    python3 hack/train/export.py --work /tmp/kjv-train --out model/demo/kjv \
        --testdata model/demo/testdata

writes OUT/{config.json,generation_config.json,model.safetensors,
tokenizer.json}: the weights rounded to bfloat16, as stored. Every figure
(held-out perplexity, the unigram baselines, expert load) is computed with
those rounded weights, so it describes the shipped model, and printed as
JSON. TESTDATA gets the held-out text, the training split's word list and
golden logits for moegrid's forward-pass test.
"""

import argparse
import collections
import json
import math
import os
import re
import shutil
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bpe  # noqa: E402
import corpus  # noqa: E402
import mixtral  # noqa: E402
import train as trainer  # noqa: E402

GOLDEN_PROMPTS = ["And God said", "In the beginning God created the heaven"]
GOLDEN_GREEDY = 16
# The model was trained on train.CONTEXT-token windows; the context it
# declares is the longest at which its held-out perplexity was measured.
MAX_POSITIONS = 8 * trainer.CONTEXT
WORD = re.compile(r"[A-Za-z]+")


def hf_config(cfg):
    return {
        "architectures": ["MixtralForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": trainer.BOS,
        "eos_token_id": trainer.EOS,
        "hidden_act": "silu",
        "hidden_size": cfg["hidden_size"],
        "initializer_range": cfg["initializer_range"],
        "intermediate_size": cfg["intermediate_size"],
        "max_position_embeddings": MAX_POSITIONS,
        "model_type": "mixtral",
        "num_attention_heads": cfg["num_attention_heads"],
        "num_experts_per_tok": cfg["num_experts_per_tok"],
        "num_hidden_layers": cfg["num_hidden_layers"],
        "num_key_value_heads": cfg["num_key_value_heads"],
        "num_local_experts": cfg["num_local_experts"],
        "output_router_logits": False,
        "rms_norm_eps": cfg["rms_norm_eps"],
        "rope_theta": cfg["rope_theta"],
        "router_aux_loss_coef": cfg["router_aux_loss_coef"],
        "router_jitter_noise": 0.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.36.0",
        "use_cache": True,
        "vocab_size": cfg["vocab_size"],
    }


def write_safetensors(path, tensors):
    """Writes BF16 tensors: u64 LE header length, JSON header, raw data."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        data = tensors[name].contiguous().view(torch.int16).numpy().astype("<i2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)


def unigram_ppl(probs, counts):
    n = sum(counts.values())
    return math.exp(-sum(c * math.log(probs(v)) for v, c in counts.items()) / n)


@torch.no_grad()
def golden(model, enc, cfg):
    prompts = []
    for text in GOLDEN_PROMPTS:
        ids = [trainer.BOS] + enc.encode(text)
        logits, router_logits, _ = model(torch.tensor([ids]))
        logits = logits[0]
        experts, weights = [], []
        for rl in router_logits:
            p = torch.softmax(rl.float(), dim=-1)
            w, sel = torch.topk(p, cfg["num_experts_per_tok"], dim=-1)
            experts.append(sel.tolist())
            weights.append((w / w.sum(-1, keepdim=True)).tolist())
        top = torch.topk(logits, 10, dim=-1)
        seq = list(ids)
        for _ in range(GOLDEN_GREEDY):
            out, _, _ = model(torch.tensor([seq]))
            seq.append(int(out[0, -1].argmax()))
        prompts.append({
            "text": text, "ids": ids,
            "top10_ids": top.indices.tolist(), "top10_logits": top.values.tolist(),
            "last_logits": logits[-1].tolist(),
            "experts": experts, "expert_weights": weights,
            "greedy": seq[len(ids):],
        })
    return {"source": "hack/train/export.py (torch, float32 compute on the BF16-rounded weights)",
            "prompts": prompts}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--testdata", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ckpt = torch.load(os.path.join(args.work, "checkpoint.pt"))
    cfg = ckpt["config"]
    model = mixtral.MixtralForCausalLM(cfg)
    model.load_state_dict(ckpt["model"])
    model.eval()
    stored = {n: p.detach().to(torch.bfloat16) for n, p in model.state_dict().items()}
    with torch.no_grad():
        for n, p in model.state_dict().items():
            p.copy_(stored[n].float())

    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.testdata, exist_ok=True)
    write_safetensors(os.path.join(args.out, "model.safetensors"), stored)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(hf_config(cfg), f, indent=2)
        f.write("\n")
    with open(os.path.join(args.out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": trainer.BOS, "eos_token_id": trainer.EOS,
                   "transformers_version": "4.36.0"}, f, indent=2)
        f.write("\n")
    shutil.copyfile(os.path.join(args.work, "tokenizer.json"), os.path.join(args.out, "tokenizer.json"))

    with open(os.path.join(args.work, "tokenizer.json"), encoding="utf-8") as f:
        enc = bpe.Encoder(json.load(f))
    train, heldout = corpus.split()
    train_ids, heldout_ids = trainer.stream(enc, train), trainer.stream(enc, heldout)

    nll = trainer.heldout_nll(model, heldout_ids, trainer.CONTEXT)
    nll_long = trainer.heldout_nll(model, heldout_ids, MAX_POSITIONS)
    targets = np.concatenate([row[1:] for row in trainer.windows(heldout_ids, trainer.CONTEXT)])
    held_counts = collections.Counter(targets.tolist())
    train_counts = collections.Counter(train_ids.tolist())
    v, n_train, n_held = cfg["vocab_size"], len(train_ids), len(targets)
    uni_train = unigram_ppl(lambda t: (train_counts[t] + 1) / (n_train + v), held_counts)
    uni_held = unigram_ppl(lambda t: held_counts[t] / n_held, held_counts)

    load = []
    with torch.no_grad():
        for row in trainer.windows(heldout_ids, trainer.CONTEXT):
            _, _, choices = model(torch.from_numpy(row[None, :-1]))
            for layer, sel in enumerate(choices):
                if len(load) <= layer:
                    load.append(np.zeros(cfg["num_local_experts"], dtype=np.int64))
                load[layer] += np.bincount(sel.reshape(-1).numpy(), minlength=cfg["num_local_experts"])

    with open(os.path.join(args.testdata, "heldout.txt"), "w", encoding="utf-8") as f:
        for _, text in heldout:
            f.write(text + "\n")
    with open(os.path.join(args.testdata, "words.txt"), "w", encoding="utf-8") as f:
        for w in sorted({w.lower() for _, t in train for w in WORD.findall(t)}):
            f.write(w + "\n")
    with open(os.path.join(args.testdata, "golden.json"), "w") as f:
        json.dump(golden(model, enc, cfg), f, separators=(",", ":"))
        f.write("\n")

    report = {
        "step": ckpt["step"],
        "heldout_tokens": n_held,
        "heldout_ce_nats": round(nll, 4),
        "heldout_ppl": round(math.exp(nll), 2),
        f"heldout_ppl_context_{MAX_POSITIONS}": round(math.exp(nll_long), 2),
        "unigram_ppl_train_add_one": round(uni_train, 2),
        "unigram_ppl_heldout_empirical": round(uni_held, 2),
        "ratio_to_stricter": round(math.exp(nll) / min(uni_train, uni_held), 4),
        "expert_load_per_layer": [[round(c / l.sum(), 4) for c in l.tolist()] for l in load],
        "safetensors_bytes": os.path.getsize(os.path.join(args.out, "model.safetensors")),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
