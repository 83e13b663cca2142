"""A plain-torch Mixtral with Hugging Face MixtralForCausalLM's semantics.

It follows /work/shared/spec/mixtral-semantics.md: pre-norm residual blocks,
RMSNorm with statistics in float32, rotate-half RoPE, grouped-query causal
attention (query head h reads kv head h // n_rep), a router softmax over all
experts in float32, top-k, the k weights renormalised to sum 1, experts
w2(silu(w1 x) * w3 x), a final RMSNorm and an untied lm_head. Parameter names
match the Hugging Face checkpoint names, so export is a rename-free dump.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_tables(head_dim, positions, theta):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        h, self.nh, self.nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.d = h // self.nh
        self.q_proj = nn.Linear(h, self.nh * self.d, bias=False)
        self.k_proj = nn.Linear(h, self.nkv * self.d, bias=False)
        self.v_proj = nn.Linear(h, self.nkv * self.d, bias=False)
        self.o_proj = nn.Linear(self.nh * self.d, h, bias=False)

    def forward(self, x, cos, sin, mask):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.nh, self.d).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.nkv, self.d).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.nkv, self.d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.nh // self.nkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        scores = (q @ k.transpose(-1, -2)) * self.d ** -0.5 + mask
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        out = (probs @ v).transpose(1, 2).reshape(b, t, self.nh * self.d)
        return self.o_proj(out)


class Expert(nn.Module):
    def __init__(self, h, f):
        super().__init__()
        self.w1 = nn.Linear(h, f, bias=False)
        self.w2 = nn.Linear(f, h, bias=False)
        self.w3 = nn.Linear(h, f, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SparseMoe(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        h, f = cfg["hidden_size"], cfg["intermediate_size"]
        self.k = cfg["num_experts_per_tok"]
        self.gate = nn.Linear(h, cfg["num_local_experts"], bias=False)
        self.experts = nn.ModuleList(Expert(h, f) for _ in range(cfg["num_local_experts"]))

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = self.gate(x)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        w, sel = torch.topk(probs, self.k, dim=-1)
        w = (w / w.sum(dim=-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.where(sel == e)
            if rows.numel() == 0:
                continue
            y = expert(x[rows]) * w[rows, slot, None]
            out.index_add_(0, rows, y)
        return out.view(shape), logits, sel


class DecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.block_sparse_moe = SparseMoe(cfg)

    def forward(self, x, cos, sin, mask):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        moe, logits, sel = self.block_sparse_moe(self.post_attention_layernorm(h))
        return h + moe, logits, sel


class Body(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg["num_hidden_layers"]))
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])


class MixtralForCausalLM(nn.Module):
    """Returns (logits, router logits per layer, expert choices per layer)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = Body(cfg)
        self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)
        std = cfg["initializer_range"]
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=std)
                if name.endswith(("o_proj.weight", "w2.weight")):
                    p.data.mul_(1 / math.sqrt(2 * cfg["num_hidden_layers"]))

    def forward(self, ids):
        t = ids.shape[1]
        d = self.cfg["hidden_size"] // self.cfg["num_attention_heads"]
        cos, sin = rope_tables(d, torch.arange(t), self.cfg["rope_theta"])
        mask = torch.full((t, t), torch.finfo(torch.float32).min).triu(1)
        x = self.model.embed_tokens(ids)
        router_logits, choices = [], []
        for layer in self.model.layers:
            x, logits, sel = layer(x, cos, sin, mask)
            router_logits.append(logits)
            choices.append(sel)
        return self.lm_head(self.model.norm(x)), router_logits, choices


def load_balancing_loss(router_logits, num_experts, k):
    """Hugging Face's load_balancing_loss_func (Switch Transformer auxiliary loss)."""
    logits = torch.cat(router_logits, dim=0)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    _, sel = torch.topk(probs, k, dim=-1)
    mask = F.one_hot(sel, num_experts).float()
    tokens_per_expert = mask.mean(dim=0)
    prob_per_expert = probs.mean(dim=0)
    return (tokens_per_expert * prob_per_expert.unsqueeze(0)).sum() * num_experts
