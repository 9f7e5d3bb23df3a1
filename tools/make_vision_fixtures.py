#!/usr/bin/env python3
"""Build tiny random float32 Llama4ForConditionalGeneration checkpoints (early-fusion vision) and HF
reference outputs, for the vision parity tests (model/tests/vision.rs). Documented in model/testdata/VISION.md.

For every fixture in FIXTURES this writes, under model/testdata/<name>/:
  config.json                Llama4Config (text_config + vision_config) as save_pretrained writes it
  model.safetensors          float32 weights: language_model.*, vision_model.*, multi_modal_projector.*
  preprocessor_config.json   the Llama4ImageProcessor (tile size, max tiles) as save_pretrained writes it
  tokenizer.json             a byte-level BPE with the Llama 4 image special tokens at the top of the vocabulary
  images/*.png, images/*.jpg the image files the processor and the model saw
  expected.safetensors       HF outputs (model/testdata/VISION.md lists every tensor)
  expected_meta.json         versions, seeds, prompts, tile grids, checks, HF's distance from float64

Besides saving, the script checks (and fails loudly if a check does not hold):
  * an independent float64 re-implementation of the vision path (patch unfold, class token last, learned
    positions, pre/post LayerNorm, ViT layers with biases and exact GELU, 2-D RoPE, pixel shuffle, the
    adapter's two GELUs, the projector and the scatter into <|patch|> rows), written from
    ../shared/reference/llama4-spec.md section 5, not from HF's code, matches HF; the text model after
    fusion is checked with tools/make_fixtures.py's float64 reference;
  * the processor's bf16 normalisation equals bf16((bf16(bf16(x) * f32(1/255)) - mean) / std) for
    all 256 levels (the rule the Rust preprocessing implements);
  * KV-cached greedy generate with the image == no-cache generate == float64 recomputation (ids), with
    no near ties on the path;
  * every vision feature under test (image content, class-token position, RoPE, pixel-shuffle order,
    the second GELU) changes the logits;
  * saved files reload to bit-identical logits and greedy ids.

Usage (from the repository root):  <venv>/bin/python tools/make_vision_fixtures.py [--only NAME] [--check-only]
Needs, besides tools/requirements-fixtures.txt: torchvision==0.29.2 and pillow==13.0.0 (HF's image processor).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import math
import platform
import shutil
import sys
from pathlib import Path

import numpy as np
import PIL
import safetensors
import torch
import torchvision
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    Llama4Config,
    Llama4ForConditionalGeneration,
    Llama4ImageProcessor,
    Llama4Processor,
    PreTrainedTokenizerFast,
)
from transformers.modeling_outputs import MoeCausalLMOutputWithPast

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as text_fixtures  # noqa: E402  (the text model's float64 reference)

REPO = Path(__file__).resolve().parent.parent
OUT_ROOT = REPO / "model" / "testdata"
NUM_THREADS = 1

# transformers 5.24 bug (llama4-spec.md section 9.2): forward(return_dict=True) reads an attribute the
# output class lacks. Output packaging only; no numerics change.
MoeCausalLMOutputWithPast.image_outputs = None

# --------------------------------------------------------------------------------------
# Special tokens: Llama 4's image tokens, placed at the top of each tiny vocabulary.
# --------------------------------------------------------------------------------------

SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|image_start|>",
    "<|image_end|>",
    "<|tile_x_separator|>",
    "<|tile_y_separator|>",
    "<|image|>",
    "<|patch|>",
]

SENTENCES = [
    "Describe the picture in one short sentence, please. ",
    "What colour is the stripe across the middle of this image? ",
    "A small red square sits on a blue field with a green border. ",
    "Llama 4 reads images as tiles of patches fused into the text. ",
] * 20


def make_tokenizer(vocab_size: int) -> Tokenizer:
    """Byte-level BPE of vocab_size - 7 tokens, then the 7 special tokens as the last ids (like Llama 4, whose
    image tokens sit above the text vocabulary). Prepends <|begin_of_text|> like Llama 4's post-processor."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES, trainer)
    check(tok.get_vocab_size() == vocab_size - len(SPECIAL_TOKENS), "BPE vocabulary size")
    tok.add_special_tokens(SPECIAL_TOKENS)
    check(tok.get_vocab_size() == vocab_size, "vocabulary size with the special tokens")
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
    )
    return tok


def special_id(tok: Tokenizer, name: str) -> int:
    i = tok.token_to_id(name)
    check(i is not None, f"tokenizer lacks {name}")
    return i


# --------------------------------------------------------------------------------------
# Images: deterministic patterns (smooth gradients + seeded noise, so resampling rounds differently
# across pixels), saved as PNG (lossless: exact pixels on both sides) and one JPEG (decode path only).
# --------------------------------------------------------------------------------------


def pattern(h: int, w: int, seed: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = []
    for c in range(channels):
        smooth = 127.5 + 90 * np.sin(xx / (3.0 + 2 * c) + c) * np.cos(yy / (4.0 + c))
        stripe = np.where(np.abs(yy - h / 2 - (c - 1) * 3) < h / 8, 60.0, 0.0)
        noise = rng.normal(0, 25, (h, w))
        planes.append(np.clip(np.round(smooth + stripe + noise), 0, 255))
    return np.stack(planes, axis=-1).astype(np.uint8)


def image_bytes(spec: dict) -> bytes:
    h, w, kind = spec["height"], spec["width"], spec["mode"]
    if kind == "RGB":
        img = Image.fromarray(pattern(h, w, spec["seed"]), "RGB")
    elif kind == "RGBA":
        rgba = pattern(h, w, spec["seed"], channels=4)
        rgba[..., 3] = np.clip(rgba[..., 3].astype(np.int32) + 40, 0, 255).astype(np.uint8)
        rgba[: h // 4, : w // 4, 3] = 0  # a fully transparent corner
        img = Image.fromarray(rgba, "RGBA")
    elif kind == "L":
        img = Image.fromarray(pattern(h, w, spec["seed"], channels=1)[..., 0], "L")
    else:
        raise ValueError(kind)
    buf = io.BytesIO()
    if spec["file"].endswith(".jpg"):
        img.save(buf, format="JPEG", quality=90)
    else:
        img.save(buf, format="PNG", optimize=False, compress_level=9)
    return buf.getvalue()


# --------------------------------------------------------------------------------------
# Fixture definitions
# --------------------------------------------------------------------------------------

TEXT_COMMON = dict(
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
    vocab_size=320,  # 256 byte tokens + merges + the 7 special tokens
    intermediate_size=64,
    intermediate_size_mlp=128,
)

FIXTURES = {
    # One tile per image (each image fits the 32x32 tile after an aspect-preserving upscale and padding), two
    # sequences whose single images sit at different offsets: the scatter fills <|patch|> rows batch-major.
    # Text: Scout-like (every layer MoE, QK-norm), layer 1 NoPE, chunks of 16 that the image tokens cross.
    "tiny-vision-1tile": dict(
        seed=4243,
        N=6,
        max_patches=4,
        text=dict(
            TEXT_COMMON,
            num_hidden_layers=2,
            interleave_moe_layer_step=1,
            use_qk_norm=True,
            no_rope_layer_interval=2,
            attention_chunk_size=16,
            floor_scale=8,
            attn_scale=0.25,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
        vision=dict(
            hidden_size=32,
            num_attention_heads=2,  # head_dim 16: 4 x-pairs and 4 y-pairs
            num_hidden_layers=2,
            intermediate_size=128,  # = hidden / ratio^2, the adapter's input width (spec section 9.2)
            image_size=32,
            patch_size=4,  # 8x8 patches, 16 tokens per tile after the pixel shuffle
            pixel_shuffle_ratio=0.5,
            projector_input_dim=64,
            projector_output_dim=64,
            vision_output_dim=64,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
        # (image, text before, text after) per sequence; the texts are random ids of these lengths.
        batch=[("wide", 3, 9), ("tall", 8, 4)],
        images={
            "wide": dict(file="wide.png", height=24, width=30, mode="RGB", seed=11),
            "tall": dict(file="tall.png", height=31, width=17, mode="RGB", seed=12),
            "alpha": dict(file="alpha.png", height=20, width=20, mode="RGBA", seed=13),
            "gray": dict(file="gray.png", height=32, width=32, mode="L", seed=14),
            "photo": dict(file="photo.jpg", height=29, width=26, mode="RGB", seed=15),
        },
        # Prompts run through HF's processor, for the Rust preprocessing and token-layout tests.
        processor_cases=[
            ("wide", "<|image|>Describe the picture."),
            ("tall", "What is this? <|image|> Tell me."),
            ("alpha", "<|image|>"),
            ("gray", "A small red square<|image|>"),
        ],
    ),
    # Several tiles: a 2x3 grid of 28x28 tiles plus the global tile, from a downscaled image (antialiased
    # resampling), run through HF's processor end to end (the `l4 generate --image --prompt` path).
    # Text: Maverick-like (dense layer 0, MoE layer 1, no QK-norm), chunks of 24.
    "tiny-vision-tiles": dict(
        seed=777,
        N=6,
        max_patches=6,
        text=dict(
            TEXT_COMMON,
            num_hidden_layers=2,
            interleave_moe_layer_step=2,
            use_qk_norm=False,
            no_rope_layer_interval=2,
            attention_chunk_size=24,
            floor_scale=8,
            attn_scale=0.5,
            rope_parameters=dict(rope_type="default", rope_theta=500000.0),
        ),
        vision=dict(
            hidden_size=48,
            num_attention_heads=3,
            num_hidden_layers=2,
            intermediate_size=192,
            image_size=28,
            patch_size=7,  # 4x4 patches, 4 tokens per tile
            pixel_shuffle_ratio=0.5,
            projector_input_dim=96,
            projector_output_dim=96,
            vision_output_dim=96,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
        prompt=("grid", "<|image|>What is in the picture?"),
        images={
            "grid": dict(file="grid.png", height=61, width=97, mode="RGB", seed=21),
            "small": dict(file="small.png", height=9, width=40, mode="RGB", seed=22),
            "big": dict(file="big.png", height=130, width=45, mode="RGB", seed=23),
        },
        processor_cases=[
            ("grid", "<|image|>What is in the picture?"),
            ("small", "Tell me: <|image|>"),
            ("big", "<|image|>colour?"),
        ],
    ),
}

REF_TOL = 2e-4  # f32 HF vs f64 reference, max abs over every compared tensor
MIN_GREEDY_MARGIN = 1e-2
MIN_ROUTER_MARGIN = 1e-2
MIN_FEATURE_DIFF = 1e-3
MAX_FIXTURE_BYTES = 2 * 1024 * 1024


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise SystemExit(f"CHECK FAILED: {msg}")


def maxabs(a, b) -> float:
    return (a.to(torch.float64) - b.to(torch.float64)).abs().max().item()


def top2_margin(x: torch.Tensor) -> float:
    t = x.to(torch.float64).topk(2, dim=-1).values
    return (t[..., 0] - t[..., 1]).min().item()


# --------------------------------------------------------------------------------------
# Model construction
# --------------------------------------------------------------------------------------


def make_config(spec: dict, tok: Tokenizer, text_overrides: dict | None = None) -> Llama4Config:
    text = dict(spec["text"], **(text_overrides or {}))
    return Llama4Config(
        text_config=text,
        vision_config=copy.deepcopy(spec["vision"]),
        image_token_index=special_id(tok, "<|patch|>"),
        boi_token_index=special_id(tok, "<|image_start|>"),
        eoi_token_index=special_id(tok, "<|image_end|>"),
        tie_word_embeddings=False,
    )


def build_model(config: Llama4Config) -> Llama4ForConditionalGeneration:
    model = Llama4ForConditionalGeneration._from_config(config, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    for gc in (model.generation_config,):
        gc.eos_token_id = None
        gc.bos_token_id = None
        gc.pad_token_id = None
    return model


def init_weights(model, seed: int, text_std: float) -> dict:
    """Deterministic init from torch's CPU RNG in sorted-name order. Norm weights uniform(0.5, 1.5) so a port
    that ignores them fails; biases N(0, 0.1^2); vision and projector matrices N(0, 1/fan_in) so activations keep
    unit scale and the image moves the logits; text as tools/make_fixtures.py (router x8, lm_head x4)."""
    g = torch.Generator().manual_seed(seed)
    rule = {}
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight") or (
                name.startswith("vision_model.") and "layernorm" in name and name.endswith(".weight")
            ):
                p.copy_(torch.empty(p.shape).uniform_(0.5, 1.5, generator=g))
                rule[name] = "uniform(0.5, 1.5)"
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
                rule[name] = "N(0, 0.1^2)"
            elif name.startswith("vision_model.") or name.startswith("multi_modal_projector."):
                if p.dim() == 2 and not name.endswith("positional_embedding_vlm"):
                    std = 1.0 / math.sqrt(p.shape[1])
                else:  # class token and positions
                    std = 1.0
                p.copy_(torch.randn(p.shape, generator=g) * std)
                rule[name] = f"N(0, {std:.4g}^2)"
            else:
                p.copy_(torch.randn(p.shape, generator=g) * text_std)
                if name.endswith("feed_forward.router.weight"):
                    p.mul_(8.0)
                if name == "language_model.lm_head.weight":
                    p.mul_(4.0)
                rule[name] = "text"
    return rule


# --------------------------------------------------------------------------------------
# Independent float64 reference of the vision path (llama4-spec.md section 5), not HF's code.
# --------------------------------------------------------------------------------------


def ref_layernorm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def ref_gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def ref_rope2d_angles(grid: int, head_dim: int, theta: float) -> torch.Tensor:
    """[grid^2 + 1, head_dim/2] angles: pair j < head_dim/4 turns by (x+1) f_j, pair j >= head_dim/4 by
    (y+1) f_(j - head_dim/4), f_i = theta^(-2i / (head_dim/2)); the class token (last row) by 0."""
    quarter = head_dim // 4
    f = [theta ** (-2.0 * i / (head_dim // 2)) for i in range(quarter)]
    ang = torch.zeros(grid * grid + 1, head_dim // 2, dtype=torch.float64)
    for idx in range(grid * grid):
        x, y = idx % grid, idx // grid
        for j in range(quarter):
            ang[idx, j] = (x + 1) * f[j]
            ang[idx, quarter + j] = (y + 1) * f[j]
    return ang


def ref_rotate_pairs(x, ang):
    """x [n, s, h, dh]: adjacent pairs (x[2j], x[2j+1]) rotated by ang [s, dh/2]."""
    c, s = torch.cos(ang)[None, :, None, :], torch.sin(ang)[None, :, None, :]
    a, b = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


def ref_pixel_shuffle(x, grid: int, k: int):
    """x [n, grid^2, c] -> [n, (grid/k)^2, k^2 c]: token (i, j) is X[k i + dy][k j + dx] for dy, then dx."""
    n, _, c = x.shape
    g2 = grid // k
    out = torch.empty(n, g2 * g2, k * k * c, dtype=x.dtype)
    for i in range(g2):
        for j in range(g2):
            parts = [x[:, (k * i + dy) * grid + (k * j + dx)] for dy in range(k) for dx in range(k)]
            out[:, i * g2 + j] = torch.cat(parts, dim=-1)
    return out


def ref_vision(
    sd: dict,
    vc: dict,
    pixel_values: torch.Tensor,
    *,
    cls_first=False,
    rope=True,
    shuffle_transposed=False,
    second_gelu=True,
):
    """Returns (encoder output after layernorm_post without the class token [n, g^2, dv], adapter output
    [n, tokens, dv_out], projected [n * tokens, d]). Keyword switches are the bugs the fixture must catch."""
    W = {k: v.to(torch.float64) for k, v in sd.items()}
    V = lambda name: W["vision_model." + name]  # noqa: E731
    pv = pixel_values.to(torch.float64)
    n, c, size, _ = pv.shape
    p, dv, nh = vc["patch_size"], vc["hidden_size"], vc["num_attention_heads"]
    grid, dh = size // p, dv // nh
    patches = torch.empty(n, grid * grid, c * p * p, dtype=torch.float64)
    for py in range(grid):
        for px in range(grid):
            patches[:, py * grid + px] = pv[:, :, py * p : (py + 1) * p, px * p : (px + 1) * p].reshape(n, -1)
    x = patches @ V("patch_embedding.linear.weight").T
    cls = V("class_embedding").expand(n, 1, dv)
    x = torch.cat([cls, x], 1) if cls_first else torch.cat([x, cls], 1)
    x = x + V("positional_embedding_vlm")
    x = ref_layernorm(x, V("layernorm_pre.weight"), V("layernorm_pre.bias"))
    ang = ref_rope2d_angles(grid, dh, vc["rope_parameters"]["rope_theta"])
    if cls_first:
        ang = torch.cat([ang[-1:], ang[:-1]], 0)
    s = grid * grid + 1
    for i in range(vc["num_hidden_layers"]):
        L = lambda name: V(f"model.layers.{i}.{name}")  # noqa: E731, B023
        h = ref_layernorm(x, L("input_layernorm.weight"), L("input_layernorm.bias"))
        q = (h @ L("self_attn.q_proj.weight").T + L("self_attn.q_proj.bias")).view(n, s, nh, dh)
        k = (h @ L("self_attn.k_proj.weight").T + L("self_attn.k_proj.bias")).view(n, s, nh, dh)
        v = (h @ L("self_attn.v_proj.weight").T + L("self_attn.v_proj.bias")).view(n, s, nh, dh)
        if rope:
            q, k = ref_rotate_pairs(q, ang), ref_rotate_pairs(k, ang)
        scores = torch.einsum("nqhd,nkhd->nhqk", q, k) * dh**-0.5
        a = torch.einsum("nhqk,nkhd->nqhd", torch.softmax(scores, -1), v).reshape(n, s, dv)
        x = x + a @ L("self_attn.o_proj.weight").T + L("self_attn.o_proj.bias")
        h = ref_layernorm(x, L("post_attention_layernorm.weight"), L("post_attention_layernorm.bias"))
        h = ref_gelu(h @ L("mlp.fc1.weight").T + L("mlp.fc1.bias")) @ L("mlp.fc2.weight").T + L("mlp.fc2.bias")
        x = x + h
    x = ref_layernorm(x, V("layernorm_post.weight"), V("layernorm_post.bias"))
    encoded = x[:, 1:] if cls_first else x[:, :-1]
    k = round(1.0 / vc["pixel_shuffle_ratio"])
    if shuffle_transposed:  # the wrong order: columns before rows inside each k x k block
        g = encoded.view(n, grid, grid, dv).transpose(1, 2).reshape(n, grid * grid, dv)
        shuffled = ref_pixel_shuffle(g, grid, k)
    else:
        shuffled = ref_pixel_shuffle(encoded, grid, k)
    h = ref_gelu(shuffled @ V("vision_adapter.mlp.fc1.weight").T)
    h = h @ V("vision_adapter.mlp.fc2.weight").T
    adapter = ref_gelu(h) if second_gelu else h
    projected = adapter.reshape(-1, adapter.shape[-1]) @ W["multi_modal_projector.linear_1.weight"].T
    return encoded, adapter, projected


def text_state_dict(sd: dict) -> dict:
    """The language model's tensors under Llama4ForCausalLM names, for make_fixtures.ref_forward."""
    out = {}
    for k, v in sd.items():
        if k.startswith("language_model.model."):
            out["model." + k[len("language_model.model.") :]] = v
        elif k == "language_model.lm_head.weight":
            out["lm_head.weight"] = v
    return out


def ref_fuse(sd: dict, ids: torch.Tensor, projected: torch.Tensor, image_token: int) -> torch.Tensor:
    """Token embeddings with the projected features written, in order, into the <|patch|> rows (batch-major)."""
    embeds = sd["language_model.model.embed_tokens.weight"].to(torch.float64)[ids].clone()
    rows = (ids == image_token).nonzero().tolist()
    check(len(rows) == projected.shape[0], f"{len(rows)} <|patch|> tokens for {projected.shape[0]} features")
    for r, (b, t) in enumerate(rows):
        embeds[b, t] = projected[r]
    return embeds


def ref_text_from_embeds(tsd: dict, text_cfg: dict, embeds: torch.Tensor):
    """make_fixtures.ref_forward over given input embeddings: the embedding table is replaced by the embeddings
    themselves and the ids by their row numbers, so the reference text stack is reused unchanged."""
    B, T, d = embeds.shape
    sd = dict(tsd)
    sd["model.embed_tokens.weight"] = embeds.reshape(B * T, d)
    ids = torch.arange(B * T).reshape(B, T)
    return text_fixtures.ref_forward(sd, text_cfg, ids)


def ref_greedy(sd, tsd, text_cfg, ids, projected, image_token, n):
    seq = ids.clone()
    table = sd["language_model.model.embed_tokens.weight"].to(torch.float64)
    embeds = ref_fuse(sd, ids, projected, image_token)
    for _ in range(n):
        logits = ref_text_from_embeds(tsd, text_cfg, embeds)[0]
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
        embeds = torch.cat([embeds, table[nxt]], 1)
    return seq[:, ids.shape[1] :]


# --------------------------------------------------------------------------------------
# HF runs
# --------------------------------------------------------------------------------------


def hf_forward(model, ids, pixel_values):
    captured = {}

    def grab(_module, _args, kwargs):
        captured["inputs_embeds"] = kwargs["inputs_embeds"].detach().clone()

    hook = model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        out = model(
            input_ids=ids, pixel_values=pixel_values, use_cache=False, output_router_logits=True, return_dict=True
        )
        image = model.get_image_features(pixel_values=pixel_values, return_dict=True).last_hidden_state
        projected = model.multi_modal_projector(image.view(-1, image.shape[-1]))
    hook.remove()
    return out.logits.detach(), captured["inputs_embeds"], image.detach(), projected.detach(), out.router_logits


def hf_generate(model, ids, pixel_values, n, use_cache=True):
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            pixel_values=pixel_values,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=n,
            min_new_tokens=n,
            use_cache=use_cache,
            return_dict_in_generate=True,
            output_logits=True,
        )
    T = ids.shape[1]
    return out.sequences[:, T:], torch.stack(out.logits, dim=1)


def bf16_normalisation_rule_holds(processor: Llama4ImageProcessor) -> bool:
    """HF's rescale_and_normalize on all 256 levels equals the rule the Rust side implements."""
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16).contiguous()
    got = processor.rescale_and_normalize(
        levels, True, processor.rescale_factor, True, processor.image_mean, processor.image_std
    )
    x = levels.to(torch.bfloat16).to(torch.float32)
    x = (x * torch.tensor(processor.rescale_factor, dtype=torch.float32)).to(torch.bfloat16).to(torch.float32)
    x = (x - torch.tensor(0.5, dtype=torch.bfloat16).float()).to(torch.bfloat16).to(torch.float32)
    x = (x / torch.tensor(0.5, dtype=torch.bfloat16).float()).to(torch.bfloat16)
    return got.dtype == torch.bfloat16 and torch.equal(got, x)


# --------------------------------------------------------------------------------------
# One fixture
# --------------------------------------------------------------------------------------


def make_fixture(name: str, spec: dict, write: bool) -> dict:
    print(f"\n=== {name} ===")
    seed, N = spec["seed"], spec["N"]
    text_cfg, vision_cfg = spec["text"], spec["vision"]
    tok = make_tokenizer(text_cfg["vocab_size"])
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>")
    size = vision_cfg["image_size"]
    image_processor = Llama4ImageProcessor(size={"height": size, "width": size}, max_patches=spec["max_patches"])
    check(bf16_normalisation_rule_holds(image_processor), "HF's bf16 normalisation differs from the documented rule")
    processor = Llama4Processor(
        image_processor=image_processor,
        tokenizer=hf_tok,
        patch_size=vision_cfg["patch_size"],
        pixel_shuffle_ratio=vision_cfg["pixel_shuffle_ratio"],
    )
    tokens_per_tile = round((size // vision_cfg["patch_size"]) ** 2 * vision_cfg["pixel_shuffle_ratio"] ** 2)
    files = {key: image_bytes(im) for key, im in spec["images"].items()}
    pil = {key: Image.open(io.BytesIO(b)) for key, b in files.items()}
    for im in pil.values():
        im.load()

    config = make_config(spec, tok)
    image_token = config.image_token_index
    model = build_model(config)
    init_rule = init_weights(model, seed, text_cfg["initializer_range"])
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tsd = text_state_dict(sd)

    # ---------------- processor cases (Rust preprocessing and token layout are compared with these)
    expected = {}
    cases_meta = []
    for idx, (key, prompt) in enumerate(spec["processor_cases"]):
        out = processor(text=prompt, images=pil[key], return_tensors="pt")
        ids = out["input_ids"].to(torch.int64)
        pv = out["pixel_values"]
        check(pv.dtype == torch.bfloat16, "processor pixel_values are not bf16")
        ratio = [int(r) for r in image_processor(pil[key], return_tensors="pt")["aspect_ratios"][0]]
        n_tiles = pv.shape[0]
        check(n_tiles == ratio[0] * ratio[1] + (1 if ratio[0] * ratio[1] > 1 else 0), "tile count vs aspect ratio")
        check(int((ids == image_token).sum()) == n_tiles * tokens_per_tile, "patch tokens vs tiles")
        expected[f"processor.{idx}.input_ids"] = ids.contiguous()
        expected[f"processor.{idx}.pixel_values"] = pv.to(torch.float32).contiguous()
        cases_meta.append(
            dict(
                image=f"images/{spec['images'][key]['file']}",
                prompt=prompt,
                tiles=list(ratio),
                pixel_values=list(pv.shape),
                tokens=ids.shape[1],
            )
        )
        print(
            f"  processor case {idx}: {spec['images'][key]['file']} {pil[key].mode} {pil[key].size} -> grid {ratio}, "
            f"pixel_values {list(pv.shape)}, {ids.shape[1]} tokens"
        )

    # ---------------- the forward input
    g = torch.Generator().manual_seed(seed + 1)
    vocab_text = text_cfg["vocab_size"] - len(SPECIAL_TOKENS)
    if "batch" in spec:
        rows, pvs = [], []
        for key, before, after in spec["batch"]:
            out = processor(text="<|image|>", images=pil[key], return_tensors="pt")
            layout = out["input_ids"][0, 1:].to(torch.int64)  # without BOS
            bos = torch.tensor([special_id(tok, "<|begin_of_text|>")])
            rows.append(
                torch.cat(
                    [
                        bos,
                        torch.randint(0, vocab_text, (before,), generator=g),
                        layout,
                        torch.randint(0, vocab_text, (after,), generator=g),
                    ]
                )
            )
            pvs.append(out["pixel_values"].to(torch.float32))
        check(len({len(r) for r in rows}) == 1, "batch rows must have one length")
        input_ids = torch.stack(rows)
        pixel_values = torch.cat(pvs)
        forward_meta = dict(
            kind="batch",
            rows=[
                dict(image=f"images/{spec['images'][k]['file']}", text_before=b, text_after=a)
                for k, b, a in spec["batch"]
            ],
        )
    else:
        key, prompt = spec["prompt"]
        out = processor(text=prompt, images=pil[key], return_tensors="pt")
        input_ids = out["input_ids"].to(torch.int64)
        pixel_values = out["pixel_values"].to(torch.float32)
        forward_meta = dict(kind="processor", image=f"images/{spec['images'][key]['file']}", prompt=prompt)
    B, T = input_ids.shape
    n_tiles = pixel_values.shape[0]
    print(
        f"  forward: input_ids {list(input_ids.shape)}, pixel_values {list(pixel_values.shape)}, "
        f"{int((input_ids == image_token).sum())} <|patch|> tokens"
    )

    # ---------------- HF forward
    logits, inputs_embeds, adapter, projected, router_logits = hf_forward(model, input_ids, pixel_values)
    logits2 = hf_forward(model, input_ids, pixel_values)[0]
    check(torch.equal(logits, logits2), "HF forward is not bit-reproducible")

    # ---------------- independent reference
    r_encoded, r_adapter, r_projected = ref_vision(sd, vision_cfg, pixel_values)
    r_embeds = ref_fuse(sd, input_ids, r_projected, image_token)
    r_logits, _, r_router, _ = ref_text_from_embeds(tsd, text_cfg, r_embeds)
    ref_diff = {
        "vision_adapter_output": maxabs(adapter, r_adapter),
        "projected_features": maxabs(projected, r_projected),
        "inputs_embeds": maxabs(inputs_embeds, r_embeds),
        "logits": maxabs(logits, r_logits),
    }
    print("  HF f32 vs independent f64 reference, max|diff|:", {k: f"{v:.2e}" for k, v in ref_diff.items()})
    for k, v in ref_diff.items():
        check(v < REF_TOL, f"reference mismatch on {k}: {v}")
    text_rows = input_ids != image_token
    check(
        torch.equal(inputs_embeds[text_rows], sd["language_model.model.embed_tokens.weight"][input_ids[text_rows]]),
        "text rows changed by the scatter",
    )

    moe_layers = list(config.text_config.moe_layers)
    router_margin = min(top2_margin(r) for r in router_logits)
    check(router_margin > MIN_ROUTER_MARGIN, f"router near-tie {router_margin}")
    feature_std = projected.std().item()
    text_std = sd["language_model.model.embed_tokens.weight"].std().item()
    print(
        f"  projected features std {feature_std:.3f} (text embeddings {text_std:.3f}); "
        f"min router gap {router_margin:.4f}"
    )

    # ---------------- greedy generation with the image
    greedy_ids, greedy_logits = hf_generate(model, input_ids, pixel_values, N, use_cache=True)
    nocache_ids, _ = hf_generate(model, input_ids, pixel_values, N, use_cache=False)
    ref_ids = ref_greedy(sd, tsd, text_cfg, input_ids, r_projected, image_token, N)
    # Routing along the whole greedy path (decoded tokens included) must have no near ties either.
    full_router = hf_forward(model, torch.cat([input_ids, greedy_ids], 1), pixel_values)[4]
    gen_checks = {
        "nocache_ids_equal": bool(torch.equal(nocache_ids, greedy_ids)),
        "ref_f64_ids_equal": bool(torch.equal(ref_ids, greedy_ids)),
        "min_top1_top2_gap_on_greedy_path": top2_margin(greedy_logits),
        "min_top1_top2_gap_prefill": top2_margin(logits),
        "min_router_gap_prompt_plus_generated": min(top2_margin(r) for r in full_router),
    }
    print("  greedy ids:", greedy_ids.tolist(), gen_checks)
    check(torch.equal(greedy_logits.argmax(-1), greedy_ids), "greedy ids != argmax of step logits")
    check(gen_checks["nocache_ids_equal"], "cached vs no-cache greedy ids differ")
    check(gen_checks["ref_f64_ids_equal"], "HF greedy ids differ from the f64 reference")
    check(gen_checks["min_top1_top2_gap_on_greedy_path"] > MIN_GREEDY_MARGIN, "greedy near-tie")
    check(
        gen_checks["min_router_gap_prompt_plus_generated"] > MIN_ROUTER_MARGIN, "router near-tie on a generated token"
    )

    # ---------------- sensitivity: each vision feature under test moves the logits
    def ref_logits_with(**switches):
        _, _, proj = ref_vision(sd, vision_cfg, pixel_values, **switches)
        return ref_text_from_embeds(tsd, text_cfg, ref_fuse(sd, input_ids, proj, image_token))[0]

    sens = {
        "image content (pixel_values -> zeros)": maxabs(
            logits, hf_forward(model, input_ids, torch.zeros_like(pixel_values))[0]
        ),
        "image order (tiles reversed)": (
            maxabs(logits, hf_forward(model, input_ids, pixel_values.flip(0))[0]) if n_tiles > 1 else None
        ),
        "[ref] class token first instead of last": maxabs(r_logits, ref_logits_with(cls_first=True)),
        "[ref] no 2-D RoPE": maxabs(r_logits, ref_logits_with(rope=False)),
        "[ref] pixel shuffle with x and y swapped": maxabs(r_logits, ref_logits_with(shuffle_transposed=True)),
        "[ref] no GELU after adapter fc2": maxabs(r_logits, ref_logits_with(second_gelu=False)),
    }
    sens = {k: v for k, v in sens.items() if v is not None}
    print("  feature sensitivity, max|d logits|:")
    for k, v in sens.items():
        print(f"    {k}: {v:.4g}")
        check(v > MIN_FEATURE_DIFF, f"feature has no effect: {k}")

    expected.update(
        {
            "input_ids": input_ids.contiguous(),
            "pixel_values": pixel_values.contiguous(),
            "vision_adapter_output": adapter.contiguous(),
            "projected_features": projected.contiguous(),
            "inputs_embeds": inputs_embeds.contiguous(),
            "logits": logits.contiguous(),
            "greedy_ids": greedy_ids.contiguous(),
            "greedy_logits": greedy_logits.contiguous(),
        }
    )
    for k, v in expected.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)

    meta = {
        "fixture": name,
        "generator": "tools/make_vision_fixtures.py",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
            "pillow": PIL.__version__,
        },
        "torch_num_threads": NUM_THREADS,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "attn_implementation": "eager",
        "dtype": "float32",
        "weight_seed": seed,
        "input_seed": seed + 1,
        "init": init_rule,
        "tokens_per_tile": tokens_per_tile,
        "image_token_id": image_token,
        "special_tokens": {t: special_id(tok, t) for t in SPECIAL_TOKENS},
        "max_patches": spec["max_patches"],
        "images": {
            f"images/{im['file']}": {k: im[k] for k in ("height", "width", "mode")} for im in spec["images"].values()
        },
        "processor_cases": cases_meta,
        "forward_input": forward_meta,
        "B": B,
        "T": T,
        "N": N,
        "tiles": n_tiles,
        "moe_layers": moe_layers,
        "tensors": {
            k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in expected.items()
        },
        "hf_vs_f64_reference_maxabs": ref_diff,
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
                extra.unlink()
        image_processor.save_pretrained(d)
        tok.save(str(d / "tokenizer.json"))
        (d / "images").mkdir()
        for key, im in spec["images"].items():
            (d / "images" / im["file"]).write_bytes(files[key])
        save_file(expected, d / "expected.safetensors", metadata={"format": "pt"})
        # Reload check: saved files reproduce the saved outputs bit for bit.
        m2 = Llama4ForConditionalGeneration.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
        m2.generation_config.eos_token_id = None
        exp2 = load_file(d / "expected.safetensors")
        check(torch.equal(hf_forward(m2, input_ids, pixel_values)[0], exp2["logits"]), "reloaded model logits differ")
        check(
            torch.equal(hf_generate(m2, input_ids, pixel_values, N)[0], exp2["greedy_ids"]),
            "reloaded greedy ids differ",
        )
        wsd = load_file(d / "model.safetensors")
        check(all(v.dtype == torch.float32 for v in wsd.values()), "model.safetensors not all f32")
        check(set(wsd) == set(sd), f"saved tensor names differ: {sorted(set(wsd) ^ set(sd))}")
        meta["weights"] = {k: list(v.shape) for k, v in sorted(wsd.items())}
        (d / "expected_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        size_bytes = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        digest = hashlib.sha256()
        for f in sorted(d.rglob("*")):
            if f.is_file():
                digest.update(f.relative_to(d).as_posix().encode() + f.read_bytes())
        print(f"  wrote {d.relative_to(REPO)}: {size_bytes} bytes, sha256 of all files {digest.hexdigest()[:16]}")
        check(size_bytes < MAX_FIXTURE_BYTES, "fixture folder too large")
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", choices=sorted(FIXTURES), help="build only this fixture (repeatable)")
    ap.add_argument("--check-only", action="store_true", help="run every check but write nothing")
    args = ap.parse_args()
    torch.set_num_threads(NUM_THREADS)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    print(
        f"python {platform.python_version()} torch {torch.__version__} torchvision {torchvision.__version__} "
        f"transformers {transformers.__version__}"
    )
    for name in args.only or list(FIXTURES):
        make_fixture(name, FIXTURES[name], write=not args.check_only)
    print("\nall checks passed")


if __name__ == "__main__":
    main()
