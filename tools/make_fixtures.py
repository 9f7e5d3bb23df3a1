#!/usr/bin/env python3
"""Build tiny random float32 Llama 4 text checkpoints and HF reference outputs.

For every fixture in FIXTURES this writes, under model/testdata/<name>/:
  config.json            Llama4TextConfig as transformers' save_pretrained writes it
  model.safetensors      float32 weights (Llama4ForCausalLM names: model.*, lm_head.weight)
  expected.safetensors   HF outputs (see model/testdata/README.md for every tensor)
  expected_meta.json     versions, seeds, shapes, checks and feature-sensitivity numbers

Besides saving, the script checks (and fails loudly if a check does not hold):
  * an independent float64 re-implementation of the Llama 4 text forward pass
    (written from the spec, not from HF's code) matches HF's logits, hidden states
    and router logits -> HF really applies chunked attention, NoPE, temperature
    tuning, llama3 rope, QK-norm and input-side router scaling in eager mode;
  * KV-cached greedy generate == full recomputation (HF no-cache and the f64 reference);
  * routing uses several experts in every MoE layer, with no near ties;
  * every feature under test changes the logits at these lengths;
  * saved files reload to bit-identical outputs.

Usage (from the repository root):  <venv>/bin/python tools/make_fixtures.py [--only NAME] [--check-only]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import sys
from pathlib import Path

import numpy as np
import safetensors
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import Llama4ForCausalLM, Llama4TextConfig

REPO = Path(__file__).resolve().parent.parent
OUT_ROOT = REPO / "model" / "testdata"
NUM_THREADS = 1

# --------------------------------------------------------------------------------------
# Fixture definitions
# --------------------------------------------------------------------------------------

COMMON = dict(
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    hidden_act="silu",
    rms_norm_eps=1e-5,
    num_experts_per_tok=1,
    num_local_experts=4,
    attn_temperature_tuning=True,
    tie_word_embeddings=False,
    attention_bias=False,
    max_position_embeddings=1024,
    bos_token_id=None,
    eos_token_id=None,  # greedy decode must never stop early
    pad_token_id=None,
    initializer_range=0.08,
)

FIXTURES = {
    # Scout-like: every layer MoE, QK-norm, llama3 rope scaling with all three bands.
    "tiny-scout": dict(
        seed=1234,
        B=2,
        T=30,  # chunks [0,8) [8,16) [16,24) [24,30); decode crosses 32 and 40
        N=12,
        router_scale=8.0,
        lm_head_scale=4.0,
        config=dict(
            COMMON,
            vocab_size=256,
            num_hidden_layers=4,  # layer 3 is NoPE (global attention + temperature)
            intermediate_size=64,
            intermediate_size_mlp=128,
            interleave_moe_layer_step=1,
            use_qk_norm=True,
            no_rope_layer_interval=4,
            attention_chunk_size=8,
            floor_scale=4,
            attn_scale=0.25,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=10000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
        ),
    ),
    # Maverick-like: even layers dense (intermediate_size_mlp), odd layers MoE, no QK-norm, no rope scaling.
    "tiny-maverick": dict(
        seed=5681,
        B=2,
        T=36,  # chunks [0,8) .. [32,36); decode crosses 40
        N=10,
        router_scale=8.0,
        lm_head_scale=4.0,
        config=dict(
            COMMON,
            vocab_size=320,
            num_hidden_layers=4,  # dense 0,2; MoE 1,3; NoPE 3
            intermediate_size=64,
            intermediate_size_mlp=128,
            interleave_moe_layer_step=2,
            use_qk_norm=False,
            no_rope_layer_interval=4,
            attention_chunk_size=8,
            floor_scale=8,
            attn_scale=0.5,
            rope_parameters=dict(rope_type="default", rope_theta=500000.0),
        ),
    ),
    # Scout's released rope scaling shape: llama3 with low_freq_factor == high_freq_factor (no blend band,
    # HF divides by zero there and discards it). Also a non-default NoPE interval (2 -> NoPE layers 1 and 3),
    # an odd layer count and a chunk size that is not a power of two.
    "tiny-scout-rope-eq": dict(
        seed=91011,
        B=2,
        T=40,  # chunks of 12: [0,12) [12,24) [24,36) [36,40); decode crosses 48
        N=11,
        router_scale=8.0,
        lm_head_scale=4.0,
        config=dict(
            COMMON,
            vocab_size=256,
            num_hidden_layers=5,
            intermediate_size=32,
            intermediate_size_mlp=64,
            interleave_moe_layer_step=1,
            use_qk_norm=True,
            no_rope_layer_interval=2,
            attention_chunk_size=12,
            floor_scale=5,
            attn_scale=0.3,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=16.0,
                low_freq_factor=1.0,
                high_freq_factor=1.0,
                original_max_position_embeddings=32,
            ),
        ),
    ),
}

# Thresholds for the sanity checks.
REF_TOL = 2e-4  # f32 HF vs f64 reference, max abs over logits / hidden states / router logits
MIN_ROUTER_MARGIN = 1e-2  # top-1 vs top-2 router logit gap, every token, every MoE layer
MIN_GREEDY_MARGIN = 1e-2  # top-1 vs top-2 logit gap along the greedy path
MIN_FEATURE_DIFF = 1e-3  # a feature "changes the output" if max |d logits| exceeds this
MAX_FIXTURE_BYTES = 2 * 1024 * 1024


# --------------------------------------------------------------------------------------
# Model construction
# --------------------------------------------------------------------------------------


def make_config(cfg: dict, **overrides) -> Llama4TextConfig:
    c = copy.deepcopy(cfg)
    c.update(overrides)
    return Llama4TextConfig(**c)


def build_model(config: Llama4TextConfig) -> Llama4ForCausalLM:
    model = Llama4ForCausalLM._from_config(config, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    # No EOS anywhere: generate must run for exactly N steps.
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    model.generation_config.pad_token_id = None
    return model


def init_weights(model: Llama4ForCausalLM, seed: int, std: float, router_scale: float, lm_head_scale: float) -> None:
    """Deterministic init that depends only on torch's CPU RNG, not on HF's init order."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight"):
                # Non-trivial RMSNorm weights so a port that ignores them fails.
                p.copy_(torch.empty(p.shape).uniform_(0.5, 1.5, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)
                if name.endswith("feed_forward.router.weight"):
                    p.mul_(router_scale)  # routing varies across tokens, no near ties
                if name == "lm_head.weight":
                    p.mul_(lm_head_scale)  # logits far from uniform


def hf_forward(model, input_ids):
    with torch.no_grad():
        out = model(
            input_ids=input_ids,
            output_hidden_states=True,
            output_router_logits=True,
            use_cache=False,
            return_dict=True,
        )
    return out


def hf_generate(model, input_ids, n, use_cache=True):
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=n,
            min_new_tokens=n,
            use_cache=use_cache,
            return_dict_in_generate=True,
            output_logits=True,
        )
    T = input_ids.shape[1]
    ids = out.sequences[:, T:]
    logits = torch.stack(out.logits, dim=1)  # [B, N, V], raw (unprocessed) logits of each step
    cache = getattr(out, "past_key_values", None)
    if cache is None:
        cache = getattr(out, "cache", None)
    return ids, logits, cache


# --------------------------------------------------------------------------------------
# Independent float64 reference implementation (from llama4-spec.md, not HF's code)
# --------------------------------------------------------------------------------------


def ref_inv_freq(cfg: dict) -> torch.Tensor:
    rp = cfg["rope_parameters"]
    hd = cfg["head_dim"]
    theta = float(rp["rope_theta"])
    j = torch.arange(hd // 2, dtype=torch.float64)
    inv = 1.0 / theta ** (2.0 * j / hd)
    if rp["rope_type"] == "default":
        return inv
    assert rp["rope_type"] == "llama3"
    factor, lo, hi = float(rp["factor"]), float(rp["low_freq_factor"]), float(rp["high_freq_factor"])
    orig = float(rp["original_max_position_embeddings"])
    out = inv.clone()
    for k in range(len(inv)):
        wl = 2 * math.pi / inv[k].item()
        if wl < orig / hi:
            out[k] = inv[k]
        elif wl > orig / lo:
            out[k] = inv[k] / factor
        else:  # only reachable when hi != lo
            s = (orig / wl - lo) / (hi - lo)
            out[k] = (1 - s) * inv[k] / factor + s * inv[k]
    return out


def ref_rmsnorm(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * (1.0 if w is None else w)


def ref_rope(x, cos, sin, half=False):
    # x [B, T, nh, hd]; cos/sin [T, hd/2]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    if half:  # WRONG for Llama 4 (rotate_half form); only used to show the fixture catches it
        h = x.shape[-1] // 2
        a, b = x[..., :h], x[..., h:]
        return torch.cat([a * c - b * s, a * s + b * c], dim=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


def ref_forward(sd: dict, cfg: dict, ids: torch.Tensor, *, rope_half=False, router_on_output=False):
    """Returns logits [B,T,V], hidden list (L+1 entries, HF convention), router logits {layer: [B*T,E]}."""
    W = {k: v.to(torch.float64) for k, v in sd.items()}
    B, T = ids.shape
    H, nh, nkv, hd = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    L, eps = cfg["num_hidden_layers"], cfg["rms_norm_eps"]
    C = cfg["attention_chunk_size"]
    interval, step = cfg["no_rope_layer_interval"], cfg["interleave_moe_layer_step"]
    pos = torch.arange(T)
    ang = pos.to(torch.float64)[:, None] * ref_inv_freq(cfg)[None, :]
    cos, sin = torch.cos(ang), torch.sin(ang)
    causal = pos[None, :] <= pos[:, None]  # [q, k]
    chunked = causal & ((pos[:, None] // C) == (pos[None, :] // C))
    temp = 1.0 + cfg["attn_scale"] * torch.log1p(torch.floor((pos.to(torch.float64) + 1.0) / cfg["floor_scale"]))

    x = W["model.embed_tokens.weight"][ids]
    hidden = [x]
    router = {}
    for i in range(L):
        p = f"model.layers.{i}."
        use_rope = (i + 1) % interval != 0
        is_moe = (i + 1) % step == 0
        # --- attention
        h = ref_rmsnorm(x, W[p + "input_layernorm.weight"], eps)
        q = (h @ W[p + "self_attn.q_proj.weight"].T).view(B, T, nh, hd)
        k = (h @ W[p + "self_attn.k_proj.weight"].T).view(B, T, nkv, hd)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).view(B, T, nkv, hd)
        if use_rope:
            q, k = ref_rope(q, cos, sin, rope_half), ref_rope(k, cos, sin, rope_half)
            if cfg["use_qk_norm"]:
                q, k = ref_rmsnorm(q, None, eps), ref_rmsnorm(k, None, eps)
            mask = chunked
        else:
            if cfg["attn_temperature_tuning"]:
                q = q * temp[None, :, None, None]
            mask = causal
        rep = nh // nkv
        k = k.repeat_interleave(rep, dim=2)  # q head j uses kv head j // rep
        v = v.repeat_interleave(rep, dim=2)
        sc = torch.einsum("bqhd,bkhd->bhqk", q, k) * hd**-0.5
        sc = sc.masked_fill(~mask[None, None], float("-inf"))
        a = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(sc, -1), v).reshape(B, T, nh * hd)
        x = x + a @ W[p + "self_attn.o_proj.weight"].T
        # --- FFN
        h = ref_rmsnorm(x, W[p + "post_attention_layernorm.weight"], eps)
        f = p + "feed_forward."
        if is_moe:
            hf = h.reshape(B * T, H)
            rl = hf @ W[f + "router.weight"].T  # [B*T, E]
            router[i] = rl
            e = rl.argmax(-1)
            s = torch.sigmoid(rl.gather(1, e[:, None]))  # [B*T, 1]
            xin = hf if router_on_output else hf * s
            gu = torch.einsum("nd,ndf->nf", xin, W[f + "experts.gate_up_proj"][e])
            g, u = gu.chunk(2, dim=-1)
            y = torch.einsum("nf,nfd->nd", u * torch.nn.functional.silu(g), W[f + "experts.down_proj"][e])
            if router_on_output:
                y = y * s
            sh = f + "shared_expert."
            ys = (
                torch.nn.functional.silu(hf @ W[sh + "gate_proj.weight"].T) * (hf @ W[sh + "up_proj.weight"].T)
            ) @ W[sh + "down_proj.weight"].T
            out = (ys + y).view(B, T, H)
        else:
            out = (
                torch.nn.functional.silu(h @ W[f + "gate_proj.weight"].T) * (h @ W[f + "up_proj.weight"].T)
            ) @ W[f + "down_proj.weight"].T
        x = x + out
        hidden.append(x)
    last_layer_output = x
    hidden[-1] = ref_rmsnorm(x, W["model.norm.weight"], eps)
    logits = hidden[-1] @ W["lm_head.weight"].T
    return logits, hidden, router, last_layer_output


def ref_greedy(sd, cfg, ids, n):
    seq = ids.clone()
    for _ in range(n):
        logits = ref_forward(sd, cfg, seq)[0]
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[:, ids.shape[1] :]


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def maxabs(a, b) -> float:
    return (a.to(torch.float64) - b.to(torch.float64)).abs().max().item()


def top2_margin(x: torch.Tensor) -> float:
    t = x.to(torch.float64).topk(2, dim=-1).values
    return (t[..., 0] - t[..., 1]).min().item()


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.iterdir() if f.is_file())


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise SystemExit(f"CHECK FAILED: {msg}")


# --------------------------------------------------------------------------------------
# One fixture
# --------------------------------------------------------------------------------------


def make_fixture(name: str, spec: dict, write: bool) -> dict:
    print(f"\n=== {name} ===")
    cfg, seed, B, T, N = spec["config"], spec["seed"], spec["B"], spec["T"], spec["N"]
    config = make_config(cfg)
    model = build_model(config)
    init_weights(model, seed, cfg["initializer_range"], spec["router_scale"], spec["lm_head_scale"])
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    L, E, V, H = cfg["num_hidden_layers"], cfg["num_local_experts"], cfg["vocab_size"], cfg["hidden_size"]
    C = cfg["attention_chunk_size"]
    moe_layers = list(config.moe_layers)
    check(
        moe_layers == [i for i in range(L) if (i + 1) % cfg["interleave_moe_layer_step"] == 0], "moe_layers rule"
    )
    check(
        list(config.no_rope_layers) == [int((i + 1) % cfg["no_rope_layer_interval"] != 0) for i in range(L)],
        "no_rope_layers rule",
    )
    nope_layers = [i for i in range(L) if not config.no_rope_layers[i]]
    print(f"layer_types={config.layer_types} moe_layers={moe_layers} nope_layers={nope_layers}")
    check(T > 2 * C, "prompt must span more than two chunks")

    g = torch.Generator().manual_seed(seed + 1)
    input_ids = torch.randint(0, V, (B, T), generator=g, dtype=torch.int64)

    # ---------------- HF forward
    out = hf_forward(model, input_ids)
    logits = out.logits
    hs = out.hidden_states
    rl = out.router_logits
    check(len(hs) == L + 1, f"hidden_states has {len(hs)} entries, expected {L + 1}")
    check(len(rl) == len(moe_layers), f"router_logits has {len(rl)} entries, expected {len(moe_layers)}")
    for r in rl:
        check(tuple(r.shape) == (B * T, E), f"router logits shape {tuple(r.shape)}")
    router = {layer: r for layer, r in zip(moe_layers, rl)}
    # Pre-final-norm output of the last decoder layer (HF replaces hidden_states[L] with the normed one).
    captured = {}
    hook = model.model.layers[L - 1].register_forward_hook(lambda m, a, o: captured.__setitem__("x", o))
    out2 = hf_forward(model, input_ids)
    hook.remove()
    last_layer_output = captured["x"].detach()
    check(torch.equal(out2.logits, logits), "HF forward is not bit-reproducible")
    normed = model.model.norm(last_layer_output)
    check(torch.equal(normed, hs[L]), "hidden_states[L] != final_norm(last layer output)")
    check(
        not torch.equal(hs[L], last_layer_output),
        "hidden_states[L] equals the un-normed last layer output (HF semantics changed?)",
    )
    with torch.no_grad():
        check(torch.equal(hs[0], model.model.embed_tokens(input_ids)), "hidden_states[0] != embeddings")
        check(torch.equal(model.lm_head(hs[L]), logits), "logits != lm_head(hidden_states[L])")

    # ---------------- independent reference
    r_logits, r_hidden, r_router, r_last = ref_forward(sd, cfg, input_ids)
    ref_diff = {
        "logits": maxabs(logits, r_logits),
        "hidden_states": max(maxabs(a, b) for a, b in zip(hs, r_hidden)),
        "router_logits": max(maxabs(router[i], r_router[i]) for i in moe_layers),
        "last_layer_output": maxabs(last_layer_output, r_last),
    }
    print("HF f32 vs independent f64 reference, max|diff|:", {k: f"{v:.2e}" for k, v in ref_diff.items()})
    for k, v in ref_diff.items():
        check(v < REF_TOL, f"reference mismatch on {k}: {v}")

    # ---------------- HF in bfloat16 (weights rounded to bf16, every op in bf16), against the
    # same f64 reference: the scale of bf16 error l4lab's bf16 paths are held to.
    model_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    bf16_logits = hf_forward(model_bf16, input_ids).logits
    bf16_greedy_ids, _, _ = hf_generate(model_bf16, input_ids, N, use_cache=True)
    del model_bf16
    hf_bf16 = {
        "logits": maxabs(bf16_logits, r_logits),
        "prefill_argmax_agreement_with_f32": (bf16_logits.argmax(-1) == logits.argmax(-1)).float().mean().item(),
        "greedy_ids": bf16_greedy_ids.tolist(),
    }
    print("HF bf16 vs independent f64 reference, max|diff| of logits:", f"{hf_bf16['logits']:.2e}")

    # ---------------- routing diversity
    hist = {}
    for i in moe_layers:
        counts = torch.bincount(router[i].argmax(-1), minlength=E).tolist()
        hist[i] = counts
        print(f"  layer {i} expert histogram over {B * T} prompt tokens: {counts}")
        check(sum(c > 0 for c in counts) >= min(E, 3), f"layer {i} routing too concentrated: {counts}")
    router_margin = min(top2_margin(router[i]) for i in moe_layers)
    print(f"  min router top1-top2 logit gap: {router_margin:.4f}")
    check(router_margin > MIN_ROUTER_MARGIN, "router near-tie")

    # logits statistics
    lstd_vocab = logits.std(-1).mean().item()
    lstd_tok = logits.std(1).mean().item()
    n_argmax = len(set(logits.argmax(-1).flatten().tolist()))
    print(
        f"  logits: mean std over vocab {lstd_vocab:.3f}, mean std over tokens {lstd_tok:.3f}, "
        f"{n_argmax} distinct argmax ids over {B * T} positions, min top1-top2 gap {top2_margin(logits):.4f}"
    )
    check(lstd_vocab > 0.3 and lstd_tok > 0.3 and n_argmax > 4, "logits look degenerate")

    # ---------------- greedy generation (KV cache) and its checks
    greedy_ids, greedy_logits, cache = hf_generate(model, input_ids, N, use_cache=True)
    check(tuple(greedy_ids.shape) == (B, N), f"greedy ids shape {tuple(greedy_ids.shape)}")
    check(torch.equal(greedy_logits.argmax(-1), greedy_ids), "greedy ids != argmax of step logits")
    cache_desc = f"{type(cache).__name__}"
    if hasattr(cache, "layers"):
        cache_desc += "[" + ", ".join(type(l).__name__ for l in cache.layers) + "]"
        for i, layer in enumerate(cache.layers):
            keys = getattr(layer, "keys", None)
            if keys is not None:
                cache_desc += f" L{i}:{tuple(keys.shape)}"
    print(f"  generate cache: {cache_desc}")
    nocache_ids, nocache_logits, _ = hf_generate(model, input_ids, N, use_cache=False)
    full_seq = torch.cat([input_ids, greedy_ids], dim=1)
    full_out = hf_forward(model, full_seq)
    full_logits = full_out.logits[:, T - 1 : T + N - 1]
    # Routing along the whole greedy path (decode tokens included) must have no near ties either.
    full_router_margin = min(top2_margin(r) for r in full_out.router_logits)
    ref_ids = ref_greedy(sd, cfg, input_ids, N)
    gen_checks = {
        "nocache_ids_equal": bool(torch.equal(nocache_ids, greedy_ids)),
        "ref_f64_ids_equal": bool(torch.equal(ref_ids, greedy_ids)),
        "cached_step_logits_vs_full_forward_maxabs": maxabs(greedy_logits, full_logits),
        "cached_vs_nocache_step_logits_maxabs": maxabs(greedy_logits, nocache_logits),
        "min_top1_top2_gap_on_greedy_path": top2_margin(greedy_logits),
        "min_router_gap_prompt_plus_generated": full_router_margin,
        "cache": cache_desc,
    }
    print("  greedy ids:", greedy_ids.tolist())
    print("  generate checks:", gen_checks)
    check(gen_checks["nocache_ids_equal"], "cached vs no-cache greedy ids differ")
    check(gen_checks["ref_f64_ids_equal"], "HF greedy ids differ from f64 reference")
    check(gen_checks["cached_step_logits_vs_full_forward_maxabs"] < 1e-4, "cached step logits drift")
    check(gen_checks["min_top1_top2_gap_on_greedy_path"] > MIN_GREEDY_MARGIN, "greedy near-tie")
    check(full_router_margin > MIN_ROUTER_MARGIN, "router near-tie on a generated token")

    # ---------------- feature sensitivity
    def variant_logits(**ov):
        c = make_config(cfg, **ov)
        m = build_model(c)
        m.load_state_dict(sd, strict=True)
        return hf_forward(m, input_ids).logits, m

    sens = {}
    no_chunk_logits, no_chunk_model = variant_logits(attention_chunk_size=T + N)
    sens["chunking (attention_chunk_size -> T+N)"] = maxabs(logits, no_chunk_logits)
    nc_ids = hf_generate(no_chunk_model, input_ids, N)[0]
    sens["chunking: greedy ids that differ (of B*N)"] = int((nc_ids != greedy_ids).sum())
    sens["temperature (attn_temperature_tuning -> False)"] = maxabs(
        logits, variant_logits(attn_temperature_tuning=False)[0]
    )
    sens["qk_norm (use_qk_norm flipped)"] = maxabs(logits, variant_logits(use_qk_norm=not cfg["use_qk_norm"])[0])
    sens["NoPE (no_rope_layers -> all RoPE/chunked)"] = maxabs(logits, variant_logits(no_rope_layers=[1] * L)[0])
    if cfg["rope_parameters"]["rope_type"] != "default":
        sens["rope scaling (llama3 -> none)"] = maxabs(
            logits,
            variant_logits(
                rope_parameters=dict(rope_type="default", rope_theta=cfg["rope_parameters"]["rope_theta"])
            )[0],
        )
    # Bugs a port could make, shown on the reference implementation:
    sens["[ref] rotate_half RoPE instead of interleaved pairs"] = maxabs(
        r_logits, ref_forward(sd, cfg, input_ids, rope_half=True)[0]
    )
    sens["[ref] router score on expert output instead of input"] = maxabs(
        r_logits, ref_forward(sd, cfg, input_ids, router_on_output=True)[0]
    )
    print("  feature sensitivity, max|d logits|:")
    for k, v in sens.items():
        print(f"    {k}: {v:.4g}")
        if "greedy" not in k:
            check(v > MIN_FEATURE_DIFF, f"feature has no effect: {k}")

    hf_inv_freq = model.model.rotary_emb.inv_freq.detach().clone().to(torch.float32)
    inv_diff = maxabs(hf_inv_freq, ref_inv_freq(cfg))
    print(f"  rope inv_freq (HF): {hf_inv_freq.tolist()}  (|HF - f64 ref| max {inv_diff:.2e})")
    check(inv_diff < 1e-6 * hf_inv_freq.max().item() + 1e-9, "inv_freq mismatch")

    expected = {
        "input_ids": input_ids.contiguous(),
        "logits": logits.detach().contiguous(),
        "last_layer_output": last_layer_output.contiguous(),
        "greedy_ids": greedy_ids.contiguous(),
        "greedy_logits": greedy_logits.detach().contiguous(),
        "rope_inv_freq": hf_inv_freq.contiguous(),
    }
    for i, h in enumerate(hs):
        expected[f"hidden_states.{i}"] = h.detach().contiguous()
    for i in moe_layers:
        expected[f"router_logits.{i}"] = router[i].detach().contiguous()
    for k, v in expected.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)

    meta = {
        "fixture": name,
        "generator": "tools/make_fixtures.py",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
        },
        "torch_num_threads": NUM_THREADS,
        "attn_implementation": "eager",
        "dtype": "float32",
        "weight_seed": seed,
        "input_seed": seed + 1,
        "init": {
            "linear_and_expert_std": cfg["initializer_range"],
            "router_weight_scale": spec["router_scale"],
            "lm_head_weight_scale": spec["lm_head_scale"],
            "rmsnorm_weights": "uniform(0.5, 1.5)",
            "order": "torch.Generator(weight_seed), parameters in sorted-name order",
        },
        "B": B,
        "T": T,
        "N": N,
        "attention_chunk_size": C,
        "moe_layers": moe_layers,
        "nope_layers": nope_layers,
        "layer_types": list(config.layer_types),
        "tensors": {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in expected.items()},
        "semantics": {
            "hidden_states.0": "token embeddings (input of layer 0)",
            "hidden_states.i (1 <= i < L)": "residual stream after decoder layer i-1 (no norm)",
            "hidden_states.L": "final RMSNorm applied to the output of decoder layer L-1 (HF overwrites the last entry)",
            "last_layer_output": "output of decoder layer L-1 before the final norm",
            "logits": "lm_head(hidden_states.L), every position",
            "router_logits.i": "decoder layer i's raw router logits x@Wr^T (pre-top-k, pre-sigmoid) for the post-attention-normed input; row = b*T + t",
            "greedy_ids": "new tokens only, generate(do_sample=False, max_new_tokens=N), DynamicCache, no EOS",
            "greedy_logits": "greedy_logits[:, k] = raw logits at position T-1+k given prompt + greedy_ids[:, :k]; greedy_ids = argmax",
            "rope_inv_freq": "HF rotary inv_freq (f32, after llama3 scaling if any), length head_dim/2",
        },
        "hf_vs_f64_reference_maxabs": ref_diff,
        "hf_bf16_vs_f64_reference": hf_bf16,
        "router_expert_histogram": {str(k): v for k, v in hist.items()},
        "min_router_top1_top2_gap": router_margin,
        "generate_checks": gen_checks,
        "feature_sensitivity_max_abs_logit_diff": sens,
    }

    if write:
        d = OUT_ROOT / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        model.save_pretrained(d, safe_serialization=True)
        for extra in d.iterdir():
            if extra.name not in ("config.json", "model.safetensors"):
                extra.unlink()  # e.g. generation_config.json: not needed, EOS is ignored anyway
        save_file(expected, d / "expected.safetensors", metadata={"format": "pt"})  # one key: byte-stable file
        # Reload check: saved files reproduce the saved outputs bit for bit.
        m2 = Llama4ForCausalLM.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
        m2.generation_config.eos_token_id = None
        o2 = hf_forward(m2, input_ids)
        exp2 = load_file(d / "expected.safetensors")
        check(torch.equal(o2.logits, exp2["logits"]), "reloaded model logits differ")
        for i in range(L + 1):
            check(torch.equal(o2.hidden_states[i], exp2[f"hidden_states.{i}"]), f"reloaded hidden_states.{i} differ")
        check(torch.equal(hf_generate(m2, input_ids, N)[0], exp2["greedy_ids"]), "reloaded greedy ids differ")
        wsd = load_file(d / "model.safetensors")
        check(all(v.dtype == torch.float32 for v in wsd.values()), "model.safetensors not all f32")
        check(set(wsd) == set(sd), f"saved tensor names differ: {sorted(set(wsd) ^ set(sd))}")
        meta["weights"] = {k: list(v.shape) for k, v in sorted(wsd.items())}
        meta["folder_bytes"] = 0
        for _ in range(3):  # the meta file holds the folder size, which includes the meta file itself
            (d / "expected_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            size = dir_size(d)
            if size == meta["folder_bytes"]:
                break
            meta["folder_bytes"] = size
        print(f"  wrote {d.relative_to(REPO)}: " + ", ".join(f"{f.name} {f.stat().st_size}" for f in sorted(d.iterdir())))
        print(f"  folder size {size} bytes")
        check(size < MAX_FIXTURE_BYTES, "fixture folder too large")
    return meta


def _rope_desc(rp: dict) -> str:
    if rp["rope_type"] == "default":
        return f"theta {rp['rope_theta']:g}, no scaling"
    return (
        f"theta {rp['rope_theta']:g}, llama3 factor {rp['factor']:g}, low/high_freq_factor "
        f"{rp['low_freq_factor']:g}/{rp['high_freq_factor']:g}, original_max_pos {rp['original_max_position_embeddings']}"
    )


def write_testdata_readme(metas: dict) -> None:
    any_meta = next(iter(metas.values()))
    v = any_meta["versions"]
    lines = [
        "# Llama 4 reference fixtures (HF transformers, float32)",
        "",
        "Generated by `tools/make_fixtures.py`; do not edit by hand (this file is generated too). Regenerate from the",
        "repository root with the pinned environment (see `tools/README.md`):",
        "",
        "```sh",
        "python3 -m venv /tmp/venv-hf && /tmp/venv-hf/bin/pip install -r tools/requirements-fixtures.txt",
        "/tmp/venv-hf/bin/python tools/make_fixtures.py",
        "```",
        "",
        f"Made with transformers {v['transformers']}, torch {v['torch']}, safetensors {v['safetensors']}, "
        f"Python {v['python']}; CPU, float32, `attn_implementation=\"eager\"`, {NUM_THREADS} torch thread.",
        "",
        "Each folder holds `config.json` (written by `save_pretrained`, transformers-5 style: `rope_parameters`,",
        "expanded `layer_types` / `moe_layers` / `no_rope_layers`), `model.safetensors` (all F32, `Llama4ForCausalLM`",
        "names `model.*` + `lm_head.weight`, untied), `expected.safetensors` and `expected_meta.json` (versions, seeds,",
        "routing histograms, check results, sensitivity numbers, every weight shape).",
        "",
        "## Fixtures",
        "",
        "All: hidden 64, 4 heads / 2 kv heads (q head h uses kv head h // 2), head_dim 16, 4 experts top-1, "
        "rms_norm_eps 1e-5, attn_temperature_tuning true, bos/eos/pad null, random RMSNorm weights in [0.5, 1.5].",
        "",
        "| fixture | layers | MoE layers (rest dense) | NoPE layers (global attn + temperature) | QK-norm | rope | chunk | floor_scale / attn_scale | vocab | intermediate / _mlp | B, T, N | bytes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in metas.items():
        c = FIXTURES[name]["config"]
        lines.append(
            f"| `{name}` | {c['num_hidden_layers']} | {m['moe_layers']} (step {c['interleave_moe_layer_step']}) | "
            f"{m['nope_layers']} (interval {c['no_rope_layer_interval']}) | {str(c['use_qk_norm']).lower()} | "
            f"{_rope_desc(c['rope_parameters'])} | {c['attention_chunk_size']} | {c['floor_scale']} / {c['attn_scale']} | "
            f"{c['vocab_size']} | {c['intermediate_size']} / {c['intermediate_size_mlp']} | {m['B']}, {m['T']}, {m['N']} | "
            f"{m.get('folder_bytes', '?')} |"
        )
    lines += [
        "",
        "Every prompt spans more than two chunks, starts at position 0 (no padding), and greedy decoding crosses at",
        "least one more chunk boundary. `tiny-scout-rope-eq` has Scout's released rope shape (low_freq_factor ==",
        "high_freq_factor: no blend band; HF's formula divides 0/0 there and discards it via `where`).",
        "",
        "## expected.safetensors",
        "",
        "L = num_hidden_layers, H = 64, V = vocab, E = 4. Shapes per fixture:",
        "",
        "| tensor | dtype | " + " | ".join(f"`{n}`" for n in metas) + " | meaning |",
        "|---|---|" + "---|" * len(metas) + "---|",
    ]
    meaning = {
        "input_ids": "prompt, random ids in [0, V), no BOS, no padding",
        "logits": "`lm_head(hidden_states.L)` at every prompt position",
        "hidden_states.0": "token embeddings (input of layer 0)",
        "hidden_states.i": "0 < i < L: residual stream after decoder layer i-1 (no norm)",
        "hidden_states.L": "**final RMSNorm** of the output of layer L-1 (HF overwrites the last entry)",
        "last_layer_output": "output of decoder layer L-1 **before** the final norm (not an HF output; captured by a hook)",
        "router_logits.i": "MoE layer i only (i = decoder layer index): raw `x @ Wr^T`, pre-top-k, pre-sigmoid; row = b*T + t",
        "greedy_ids": "new tokens only, `generate(do_sample=False, max_new_tokens=N)` with KV cache, EOS disabled",
        "greedy_logits": "`[:, k]` = raw logits at position T-1+k given prompt + `greedy_ids[:, :k]`; `greedy_ids` = argmax",
        "rope_inv_freq": "HF's rotary `inv_freq` (F32, after llama3 scaling), length head_dim/2",
    }

    def shape_of(m, key):
        t = m["tensors"].get(key)
        return "—" if t is None else "[" + ", ".join(map(str, t["shape"])) + "]"

    keys = ["input_ids", "logits", "hidden_states.0", "hidden_states.i", "hidden_states.L", "last_layer_output",
            "router_logits.i", "greedy_ids", "greedy_logits", "rope_inv_freq"]
    for key in keys:
        cells, dtype = [], "F32"
        for m in metas.values():
            L = len(m["layer_types"])
            if key == "hidden_states.i":
                cells.append(f"i = 1..{L - 1}: " + shape_of(m, "hidden_states.1"))
            elif key == "hidden_states.L":
                cells.append(f"`hidden_states.{L}` " + shape_of(m, f"hidden_states.{L}"))
            elif key == "router_logits.i":
                cells.append("i in " + str(m["moe_layers"]) + ": " + shape_of(m, f"router_logits.{m['moe_layers'][0]}"))
            else:
                cells.append(shape_of(m, key))
                dtype = m["tensors"][key]["dtype"].replace("float32", "F32").replace("int64", "I64")
        lines.append(f"| `{key}` | {dtype} | " + " | ".join(cells) + f" | {meaning[key]} |")
    lines += [
        "",
        "`router_logits` come from the post-attention-RMSNormed input, flattened batch-major (row b*T + t), all E",
        "columns. The selected expert is the argmax; its score is sigmoid(logit), applied to the expert **input**.",
        "Every MoE-layer top-1/top-2 router gap (prompt and generated tokens) and every greedy top-1/top-2 logit gap",
        f"is at least {min(MIN_ROUTER_MARGIN, MIN_GREEDY_MARGIN):g} (actual minima in `expected_meta.json`), so an f32",
        "port should reproduce the routing and `greedy_ids` exactly; compare float tensors with a tolerance of ~1e-4.",
        "",
        "## Checks done at generation time (numbers in each `expected_meta.json`)",
        "",
        "* HF f32 vs an independent float64 re-implementation of the spec (in the script): max |diff| over logits,",
        f"  hidden states and router logits {max(max(m['hf_vs_f64_reference_maxabs'].values()) for m in metas.values()):.1e}"
        f" (fails above {REF_TOL:g}); greedy ids identical.",
        "* KV-cached generate == HF without cache == f64 full recomputation (ids); cached step logits vs one full",
        f"  forward: max |diff| {max(m['generate_checks']['cached_step_logits_vs_full_forward_maxabs'] for m in metas.values()):.1e}.",
        "* Saved files reload to bit-identical logits, hidden states and greedy ids.",
        "",
        "Feature sensitivity, max |d logits| over the prompt when one thing changes (HF unless marked [ref]):",
        "",
        "| change | " + " | ".join(f"`{n}`" for n in metas) + " |",
        "|---|" + "---|" * len(metas),
    ]
    sens_keys = []
    for m in metas.values():
        for k in m["feature_sensitivity_max_abs_logit_diff"]:
            if k not in sens_keys:
                sens_keys.append(k)
    for k in sens_keys:
        cells = []
        for m in metas.values():
            val = m["feature_sensitivity_max_abs_logit_diff"].get(k)
            cells.append("—" if val is None else (str(val) if isinstance(val, int) else f"{val:.3g}"))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## HF behaviours these fixtures encode (transformers 5.24, eager, f32)",
        "",
        "* RoPE rotates adjacent pairs (x[2j], x[2j+1]) (complex form, no rotate_half); angle = f32(position) * f32",
        "  inv_freq, elementwise in f32, then cos/sin; q and k upcast to f32 for the rotation. QK-norm (unweighted RMS,",
        "  eps = rms_norm_eps) comes after RoPE, on RoPE layers only.",
        "* RoPE layers use chunked attention: query q sees key k iff k <= q and q // chunk == k // chunk (absolute",
        "  positions, fixed blocks, not a sliding window). NoPE layers are global causal and have no QK-norm.",
        "* Temperature (NoPE layers only): q *= 1 + attn_scale * log1p(floor((p + 1) / floor_scale)), p = absolute",
        "  0-based position (HF: cache length + index, not position_ids), computed in f32; k is not scaled.",
        "* Attention scale head_dim^-0.5; softmax over masked scores; GQA via repeat_kv (q head h -> kv head h // 2).",
        "* MoE: top-1 on raw router logits, score = sigmoid(logit) multiplies the expert input; output = shared expert",
        "  + routed expert. Experts: `gate_up_proj` [E, H, 2I] (gate = first I columns) and `down_proj` [E, I, H],",
        "  applied as x @ W; every other weight is nn.Linear [out, in].",
        "* generate uses DynamicCache with DynamicSlidingWindowLayer (keeps the last chunk-1 keys) on chunked layers and",
        "  DynamicLayer on NoPE layers; results equal full recomputation with the absolute-chunk mask.",
        "",
    ]
    (OUT_ROOT / "README.md").write_text("\n".join(lines))
    print(f"wrote {(OUT_ROOT / 'README.md').relative_to(REPO)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", choices=sorted(FIXTURES), help="build only this fixture (repeatable)")
    ap.add_argument("--check-only", action="store_true", help="run every check but write nothing")
    args = ap.parse_args()
    torch.set_num_threads(NUM_THREADS)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    print(f"python {platform.python_version()} torch {torch.__version__} transformers {transformers.__version__}")
    metas = {}
    for name in args.only or list(FIXTURES):
        metas[name] = make_fixture(name, FIXTURES[name], write=not args.check_only)
    if not args.check_only and not args.only:
        write_testdata_readme(metas)
    print("\nall checks passed")


if __name__ == "__main__":
    main()
