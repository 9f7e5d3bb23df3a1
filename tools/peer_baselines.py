#!/usr/bin/env python3
"""PyTorch peer baselines for l4lab's GPU benches, timed like l4's benches, on the same card.

Run by gpu-bin/run.sh on the GPU machine after the criterion benches (never by a Rust test):

    python3 peer_baselines.py --criterion $OUT/criterion --out $OUT/peers.json [--budget 60]

What it times (bf16 unless stated; every case catches its own failure and reports it as
"unavailable: <reason>", so a missing feature never stops the run):

* peers of l4's own bench entries, at exactly their shapes: every CUDA entry found under
  --criterion (criterion's benchmark.json files) whose op has a PyTorch counterpart:
  cuBLASLt matmul -> torch.matmul (a @ w.T, the weight stored [n, k] as l4 does), rms_norm ->
  F.rms_norm, softmax -> torch.softmax, rope -> HF Llama 4's eager complex-multiply RoPE,
  embedding -> F.embedding, cast bf16->f8e4m3 -> Tensor.to(float8_e4m3fn), silu -> F.silu,
  mul -> torch.mul, topk -> torch.topk, vector_add -> torch.add, moe_route -> torch's eager
  routing (topk, sigmoid, bincount, cumsum, stable argsort), attention_decode and causal
  attention_prefill -> scaled_dot_product_attention (default backend, enable_gqa), chunked
  attention_prefill -> the FlexAttention case of its shape (below), moe_block_grouped(_fp8) -> the
  MoE block in torch (topk routing, sorted rows, torch._grouped_mm or torch._scaled_grouped_mm with
  row-wise scales, silu * up, shared expert; timed last). Without --criterion results the
  Scout GEMM table (the same one benches/src/shapes.rs derives from the preset) is used;
* torch._scaled_mm in FP8 e4m3 with row-wise scales (per token x per output channel, bf16 out,
  inputs already quantized, use_fast_accum=False) at every GEMM shape l4 benched (the peer of
  l4's fp8_gemm_rowwise entries, joined on the shape by gpu_summary.py);
* scaled_dot_product_attention at Scout's attention (40 q heads, 8 kv heads, head dim 128):
  causal prefill of 1K, 2K, 4K, 16K and 64K tokens and decode (one query over 8192 keys, batch 1
  and 16; over 128K and 1M keys, batch 1), with
  each SDPA backend (default choice, flash, efficient, cuDNN); GQA by enable_gqa, or with k/v
  repeated to 40 heads (not timed) where a backend refuses enable_gqa;
* FlexAttention (torch.compile'd) with Llama 4's chunked causal mask (chunk 8192) at 2K, 16K,
  64K and 128K tokens, in a subprocess with a timeout (its compile time is the least predictable);
* torch._grouped_mm at Scout's MoE expert shapes: 16 experts, tokens split evenly, gate/up
  (k 5120 -> n 16384) and down (8192 -> 5120).

Timing (the scheme of triton.testing.do_bench, which l4's benches/src/timing.rs follows): warm-up
runs, then per repetition a 256 MB buffer is zeroed (flushing the 50 MB L2) before a CUDA event
pair around the op; one synchronisation at the end; the median over repetitions. FLOPs count
2 per multiply-add (attention: useful, unmasked pairs only); bytes are compulsory traffic (each
input read once, the output written once). Fractions of peak use the card's dense datasheet
peaks found from its name (H100 SXM / H800: 989.4 TFLOP/s bf16, 1978.9 FP8, 3.35 TB/s; H200:
989.4, 1978.9, 4.8 TB/s; others: none) and the roofline: max(FLOPs/peak FLOP/s, bytes/peak
bytes/s) / time.

Writes JSON (--out) and prints a table. Without CUDA (or without torch) it says so, writes a JSON
saying so, and exits 0. The whole run stays within --budget seconds (default 60): cases past the
budget are reported as skipped.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import signal
import subprocess
import sys
import time

START = time.monotonic()

# Scout's sizes (model/src/presets.rs; benches/src/shapes.rs derives the same from the preset).
HIDDEN = 5120
HEADS = 40
KV_HEADS = 8
HEAD_DIM = 128
EXPERTS = 16
EXPERT_FFN = 8192
VOCAB = 202_048
CHUNK = 8192
TOKEN_COUNTS = [1, 16, 128, 2048, 8192]
SCOUT_GEMMS = [
    ("qkv_proj", (HEADS + 2 * KV_HEADS) * HEAD_DIM, HIDDEN),
    ("o_proj", HIDDEN, HEADS * HEAD_DIM),
    ("expert_gate_up", 2 * EXPERT_FFN, HIDDEN),
    ("expert_down", HIDDEN, EXPERT_FFN),
    ("lm_head", VOCAB, HIDDEN),
]

FLUSH_BYTES = 256 << 20
# Where tensors are made (a module global so the logic can be exercised on the CPU by hand).
DEVICE = "cuda"
# FlexAttention compiles (Triton) in a subprocess limited to the budget left less this reserve,
# which keeps time for the grouped and FP8 GEMMs after it, and to at most FLEX_MAX_S.
FLEX_RESERVE_S = 12.0
FLEX_MAX_S = 40.0

# Dense datasheet peaks; mirrors benches/src/units.rs (DevicePeaks::for_device_name).
H100_SXM = {"card": "H100 SXM5", "bf16_flops": 989.4e12, "fp8_flops": 1978.9e12, "hbm_bytes_per_s": 3.35e12}
H200_SXM = {"card": "H200 SXM", "bf16_flops": 989.4e12, "fp8_flops": 1978.9e12, "hbm_bytes_per_s": 4.8e12}


def peaks_for(name: str):
    """The dense datasheet peaks for a device name, or None when the card is not in the table."""
    upper = name.upper()
    if "PCIE" in upper or "NVL" in upper:
        return None
    if "H100" in upper or "H800" in upper:
        return H100_SXM
    if "H200" in upper:
        return H200_SXM
    return None


def roofline(peaks, flops, bytes_, seconds, flop_key="bf16_flops"):
    """(fraction of the roofline, binding resource) or (None, None) without peaks."""
    if not peaks or not seconds:
        return None, None
    t_compute = (flops or 0.0) / peaks[flop_key]
    t_memory = (bytes_ or 0.0) / peaks["hbm_bytes_per_s"]
    bound = "compute" if t_compute >= t_memory else "memory"
    return max(t_compute, t_memory) / seconds, bound


def first_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:300]


class Budget:
    def __init__(self, seconds: float):
        self.deadline = START + seconds
        self.seconds = seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


class Timer:
    """do_bench-style timing: flush L2, event pair per repetition, one sync, median."""

    def __init__(self, torch, target_s: float = 0.1, min_reps: int = 10, max_reps: int = 100):
        self.torch = torch
        self.flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=DEVICE)
        self.target_s = target_s
        self.min_reps = min_reps
        self.max_reps = max_reps

    def median_ms(self, fn):
        torch = self.torch
        for _ in range(2):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(3):
            self.flush.zero_()
            fn()
        torch.cuda.synchronize()
        per_rep = (time.perf_counter() - t0) / 3
        reps = int(self.target_s / max(per_rep, 1e-6))
        reps = max(self.min_reps, min(self.max_reps, reps))
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for i in range(reps):
            self.flush.zero_()
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize()
        times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
        mid = len(times) // 2
        median = times[mid] if len(times) % 2 else 0.5 * (times[mid - 1] + times[mid])
        return median, reps


class Results:
    def __init__(self, peaks, budget: Budget):
        self.rows = []
        self.peaks = peaks
        self.budget = budget

    def run(self, op, case, fn, *, flops=None, bytes_=None, l4_id=None, flop_key="bf16_flops", extra=None):
        """Times what `fn()` returns: the callable to time (made after its inputs), or a pair of
        that callable and a note for the row."""
        row = {"op": op, "case": case, "l4_id": l4_id, "flops": flops, "bytes": bytes_}
        if extra:
            row.update(extra)
        if self.budget.left() <= 0:
            row.update(status="unavailable", reason=f"skipped: the {self.budget.seconds:.0f} s time budget was spent")
            self.rows.append(row)
            return row
        try:
            timed = fn()
            if isinstance(timed, tuple):
                timed, row["note"] = timed
            ms, reps = TIMER.median_ms(timed)
            seconds = ms / 1e3
            fraction, bound = roofline(self.peaks, flops, bytes_, seconds, flop_key)
            row.update(
                status="ok",
                ms=ms,
                reps=reps,
                tflops=(flops / seconds / 1e12) if flops else None,
                gbps=(bytes_ / seconds / 1e9) if bytes_ else None,
                peak_fraction=fraction,
                bound=bound,
            )
        except Exception as exc:  # noqa: BLE001 - every failure is a result, never a crash
            row.update(status="unavailable", reason=first_line(exc))
        finally:
            try:
                TORCH.cuda.synchronize()
                TORCH.cuda.empty_cache()
            except Exception:  # noqa: BLE001
                pass
        self.rows.append(row)
        return row

    def add(self, row):
        self.rows.append(row)


TORCH = None
TIMER = None


# ---------------------------------------------------------------------------------------------
# Peers of l4's own entries.

DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f8e4m3": "float8_e4m3fn", "f8e5m2": "float8_e5m2"}
DTYPE_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "f8e4m3": 1, "f8e5m2": 1, "i64": 8}


def tdtype(name):
    return getattr(TORCH, DTYPES[name])


def dims(value):
    return [int(x) for x in value.split("x")]


def criterion_entries(criterion_dir, since=None):
    """Every `new/benchmark.json` under criterion_dir (written at or after the Unix time `since`,
    when given), as dicts with the l4 id and throughput."""
    entries = []
    if not criterion_dir or not os.path.isdir(criterion_dir):
        return entries
    for path in sorted(glob.glob(os.path.join(criterion_dir, "**", "new", "benchmark.json"), recursive=True)):
        try:
            if since is not None and os.path.getmtime(path) < since:
                continue
            with open(path) as f:
                entries.append(json.load(f))
        except (OSError, ValueError):
            continue
    return entries


def default_gemm_entries():
    """The Scout GEMM table as l4's ids, for runs without criterion results."""
    out = []
    for name, n, k in SCOUT_GEMMS:
        for m in TOKEN_COUNTS:
            out.append(
                {
                    "group_id": "cuda:0/cublaslt_matmul_bf16",
                    "function_id": f"scout/{name}",
                    "value_str": f"{m}x{n}x{k}",
                    "full_id": f"cuda:0/cublaslt_matmul_bf16/scout/{name}/{m}x{n}x{k}",
                }
            )
    return out


def sync():
    if DEVICE == "cuda":
        TORCH.cuda.synchronize()


def randn(*shape, dtype=None):
    return TORCH.randn(*shape, device=DEVICE, dtype=dtype or TORCH.bfloat16)


def peer_for(entry, results: Results, weights: dict):
    """Times the PyTorch counterpart of one l4 entry; False when it has none."""
    torch = TORCH
    F = torch.nn.functional
    group = entry.get("group_id", "")
    function = entry.get("function_id") or ""
    value = entry.get("value_str") or ""
    l4_id = entry.get("full_id")
    if not group.startswith("cuda"):
        return False
    op = group.split("/", 1)[1] if "/" in group else group

    if op.endswith("matmul_bf16"):
        m, n, k = dims(value)

        def make():
            key = (n, k)
            if key not in weights:
                weights.clear()
                torch.cuda.empty_cache()
                weights[key] = randn(n, k)
            w = weights[key]
            a = randn(m, k)
            return lambda: torch.matmul(a, w.t())

        results.run("torch.matmul", f"{function} {value}", make, flops=2 * m * n * k,
                    bytes_=2 * (m * k + k * n + m * n), l4_id=l4_id, extra={"shape": [m, n, k]})
        return True

    dt = function.split("_")[0]
    if dt not in DTYPES:
        return False
    size = DTYPE_BYTES[dt]
    if op == "vector_add":
        (n,) = dims(value)

        def make():
            a, b = randn(n, dtype=tdtype(dt)), randn(n, dtype=tdtype(dt))
            return lambda: torch.add(a, b)

        results.run("torch.add", f"{dt} {value}", make, bytes_=3 * n * size, l4_id=l4_id)
    elif op == "rms_norm":
        t, d = dims(value)

        def make():
            x, w = randn(t, d, dtype=tdtype(dt)), randn(d, dtype=tdtype(dt))
            return lambda: F.rms_norm(x, (d,), w, 1e-5)

        results.run("F.rms_norm", f"{dt} {value}", make, bytes_=2 * t * d * size, l4_id=l4_id)
    elif op == "softmax":
        r, c = dims(value)

        def make():
            x = randn(r, c, dtype=tdtype(dt))
            return lambda: torch.softmax(x, -1)

        results.run("torch.softmax", f"{dt} {value}", make, bytes_=2 * r * c * size, l4_id=l4_id)
    elif op == "rope":
        b, t, h, dh = dims(value)

        def make():
            x = randn(b, t, h, dh, dtype=tdtype(dt))
            inv = 1.0 / (500_000.0 ** (torch.arange(0, dh, 2, device=DEVICE, dtype=torch.float32) / dh))
            pos = torch.arange(t, device=DEVICE, dtype=torch.float32)
            freqs = torch.polar(torch.ones(t, dh // 2, device=DEVICE), torch.outer(pos, inv))[None, :, None, :]

            def hf_rope():  # transformers' Llama 4 apply_rotary_emb
                xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
                return torch.view_as_real(xc * freqs).flatten(3).type_as(x)

            return hf_rope

        results.run("HF eager RoPE", f"{dt} {value}", make, bytes_=2 * b * t * h * dh * size, l4_id=l4_id)
    elif op == "embedding":
        t, v, d = dims(value)

        def make():
            key = ("table", v, d, dt)
            if key not in weights:
                weights.clear()
                torch.cuda.empty_cache()
                weights[key] = randn(v, d, dtype=tdtype(dt))
            table = weights[key]
            ids = torch.randint(0, v, (t,), device=DEVICE, dtype=torch.int64)
            return lambda: F.embedding(ids, table)

        results.run("F.embedding", f"{dt} {value}", make, bytes_=2 * t * d * size + 8 * t, l4_id=l4_id)
    elif op == "cast":
        parts = function.split("_to_")
        if len(parts) != 2 or parts[1] not in DTYPES:
            return False
        to = parts[1]
        r, c = dims(value)

        def make():
            x = randn(r, c, dtype=tdtype(dt))
            return lambda: x.to(tdtype(to))

        results.run(f"Tensor.to({to})", f"{function} {value}", make,
                    bytes_=r * c * (size + DTYPE_BYTES[to]), l4_id=l4_id)
    elif op in ("silu", "mul"):
        r, c = dims(value)

        def make():
            a = randn(r, c, dtype=tdtype(dt))
            if op == "silu":
                return lambda: F.silu(a)
            b = randn(r, c, dtype=tdtype(dt))
            return lambda: torch.mul(a, b)

        traffic = (2 if op == "silu" else 3) * r * c * size
        results.run("F.silu" if op == "silu" else "torch.mul", f"{dt} {value}", make, bytes_=traffic, l4_id=l4_id)
    elif op == "topk":
        k = int(function.rsplit("_k", 1)[1]) if "_k" in function else 1
        r, c = dims(value)

        def make():
            x = randn(r, c, dtype=tdtype(dt))
            return lambda: torch.topk(x, k, dim=-1)

        results.run("torch.topk", f"{function} {value}", make, bytes_=r * c * size + r * k * (size + 8), l4_id=l4_id)
    elif op in ("attention_decode", "attention_decode_paged"):
        if "_chunk" in function:
            return False  # a chunked layer's decode reads one chunk, not the context in its id
        b, h, hk, s_len, dh = dims(value)

        def make():
            q = randn(b, h, 1, dh, dtype=tdtype(dt))
            k = randn(b, hk, s_len, dh, dtype=tdtype(dt))
            v = randn(b, hk, s_len, dh, dtype=tdtype(dt))
            sdpa = F.scaled_dot_product_attention
            try:
                sdpa(q, k, v, enable_gqa=True)
                return lambda: sdpa(q, k, v, enable_gqa=True)
            except Exception as exc:  # noqa: BLE001 - a torch without enable_gqa: repeat k/v
                refused = first_line(exc)
            k2, v2 = k.repeat_interleave(h // hk, dim=1), v.repeat_interleave(h // hk, dim=1)
            return lambda: sdpa(q, k2, v2), f"k/v repeated to {h} heads (enable_gqa refused: {refused})"

        size_kv = 2 * b * hk * s_len * dh * size + 2 * b * h * dh * size
        results.run("SDPA default", f"decode {value}", make, flops=4 * b * h * s_len * dh, bytes_=size_kv,
                    l4_id=l4_id)
    elif op in ("attention_prefill", "attention_prefill_paged"):
        if "_chunk" in function:
            return False  # FlexAttention's chunked case is its peer (linked after it runs)
        b, h, hk, t, dh = dims(value)

        def make():
            q = randn(b, h, t, dh, dtype=tdtype(dt))
            k = randn(b, hk, t, dh, dtype=tdtype(dt))
            v = randn(b, hk, t, dh, dtype=tdtype(dt))
            sdpa = F.scaled_dot_product_attention
            try:
                sdpa(q, k, v, is_causal=True, enable_gqa=True)
                return lambda: sdpa(q, k, v, is_causal=True, enable_gqa=True)
            except Exception as exc:  # noqa: BLE001 - a torch without enable_gqa: repeat k/v
                refused = first_line(exc)
            k2, v2 = k.repeat_interleave(h // hk, dim=1), v.repeat_interleave(h // hk, dim=1)
            return lambda: sdpa(q, k2, v2, is_causal=True), f"k/v repeated to {h} heads (enable_gqa refused: {refused})"

        pairs = b * h * attention_pairs(t, t, True)
        results.run("SDPA default", f"prefill causal {value}", make, flops=4 * pairs * dh,
                    bytes_=2 * 2 * (h + hk) * b * t * dh, l4_id=l4_id)
    elif op == "moe_route":
        t, e = dims(value)

        def make():
            logits = randn(t, e, dtype=tdtype(dt))

            def eager():  # Llama 4's router as torch code writes it: top-1, sigmoid, group by expert
                vals, idx = torch.topk(logits, 1, dim=-1)
                weights = torch.sigmoid(vals.float())
                flat = idx.flatten()
                counts = torch.bincount(flat, minlength=e)
                offsets = torch.cumsum(counts, 0)
                order = torch.argsort(flat, stable=True)
                return weights, counts, offsets, order

            return eager

        results.run("torch eager routing", f"{function} {value}", make, bytes_=t * e * size + 4 * (3 * t + 2 * e + 1),
                    l4_id=l4_id)
    else:
        return False
    return True


def moe_block_cases(results: Results, entries):
    """Peers of l4's MoE block entries, last (their weights are the largest: Maverick's bf16
    experts are 32 GB), so they cannot take the time budget from the other peers."""
    torch = TORCH
    weights = {}
    for entry in entries:
        group = str(entry.get("group_id", ""))
        op = group.split("/", 1)[1] if "/" in group else group
        if op not in ("moe_block_grouped", "moe_block_grouped_fp8"):
            continue
        function, value, l4_id = entry.get("function_id") or "", entry.get("value_str") or "", entry.get("full_id")
        t, d, f, e = dims(value)
        fp8 = op.endswith("fp8")

        def make(t=t, d=d, f=f, e=e, fp8=fp8):
            key = (e, d, f, fp8)
            if key not in weights:
                weights.clear()
                torch.cuda.empty_cache()
                weights[key] = moe_weights(e, d, f, fp8)
            w = weights[key]
            x = randn(t, d)
            logits = randn(t, e)
            block = moe_block_fp8 if fp8 else moe_block_bf16
            block(x, logits, w)  # fails here, not in the timer, when this torch lacks the op
            return lambda: block(x, logits, w)

        # l4's FLOPs (top-1 routed plus shared SwiGLU) and bytes (chosen experts' weights once, at
        # most min(e, t) of them, the shared expert's, x and the output).
        wbytes = 1 if fp8 else 2
        peer = "torch._scaled_grouped_mm" if fp8 else "torch._grouped_mm"
        results.run(f"{peer} MoE block", f"{function} {value}", make, flops=2 * t * 3 * d * f * 2,
                    bytes_=min(e, t) * 3 * d * f * wbytes + 3 * d * f * 2 + 2 * t * d * 2, l4_id=l4_id,
                    flop_key="fp8_flops" if fp8 else "bf16_flops")
    weights.clear()
    torch.cuda.empty_cache()


def moe_weights(e, d, f, fp8):
    """Routed experts `[e, n, k]` (nn.Linear layout, multiplied through transposed views, as
    torch's grouped GEMMs want the second operand column-major) and the shared expert, bf16; FP8
    experts quantized per output channel."""
    torch = TORCH
    w = {"shared_gate_up": randn(2 * f, d) / math.sqrt(d), "shared_down": randn(d, f) / math.sqrt(f)}
    for name, n, k in [("gate_up", 2 * f, d), ("down", d, f)]:
        if not fp8:
            w[name] = randn(e, n, k) / math.sqrt(k)
            continue
        codes, scales = [], []
        for _ in range(e):  # one expert at a time keeps the bf16 temporaries small
            one = randn(n, k) / math.sqrt(k)
            s = one.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / 448.0
            codes.append((one.float() / s).to(torch.float8_e4m3fn))
            scales.append(s.view(1, n))
        w[name] = torch.stack(codes)
        w[name + "_scale"] = torch.cat(scales)  # [e, n]
    return w


def moe_route_sorted(x, logits):
    """Llama 4's routing as torch writes it: top-1, sigmoid weight on the input, slots sorted by
    expert; returns (sorted inputs, sort order, int32 end offsets)."""
    torch = TORCH
    e = logits.shape[1]
    vals, idx = torch.topk(logits, 1, dim=-1)
    xin = x * torch.sigmoid(vals.float()).to(x.dtype)
    flat = idx.flatten()
    order = torch.argsort(flat, stable=True)
    offs = torch.cumsum(torch.bincount(flat, minlength=e), 0).to(torch.int32)
    return xin[order], order, offs


def moe_unsort(y, order, x, w):
    """Rows back in token order plus the shared expert (three bf16 GEMMs)."""
    torch = TORCH
    out = torch.empty_like(y)
    out[order] = y
    f = w["shared_down"].shape[1]
    p = x @ w["shared_gate_up"].t()
    return out + (torch.nn.functional.silu(p[:, :f]) * p[:, f:]) @ w["shared_down"].t()


def moe_block_bf16(x, logits, w):
    torch = TORCH
    xs, order, offs = moe_route_sorted(x, logits)
    f = w["down"].shape[2]
    p = torch._grouped_mm(xs, w["gate_up"].transpose(-2, -1), offs=offs, out_dtype=torch.bfloat16)
    h = torch.nn.functional.silu(p[:, :f]) * p[:, f:]
    y = torch._grouped_mm(h, w["down"].transpose(-2, -1), offs=offs, out_dtype=torch.bfloat16)
    return moe_unsort(y, order, x, w)


def quantize_rows(a):
    s = a.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12, max=1200.0) / 448.0
    return (a.float() / s).clamp(-448.0, 448.0).to(TORCH.float8_e4m3fn), s.view(-1)


def moe_block_fp8(x, logits, w):
    torch = TORCH
    xs, order, offs = moe_route_sorted(x, logits)
    f = w["down"].shape[2]
    a8, sa = quantize_rows(xs)
    p = torch._scaled_grouped_mm(a8, w["gate_up"].transpose(-2, -1), sa, w["gate_up_scale"], offs=offs,
                                 out_dtype=torch.bfloat16)
    h = torch.nn.functional.silu(p[:, :f]) * p[:, f:]
    h8, sh = quantize_rows(h)
    y = torch._scaled_grouped_mm(h8, w["down"].transpose(-2, -1), sh, w["down_scale"], offs=offs,
                                 out_dtype=torch.bfloat16)
    return moe_unsort(y, order, x, w)


# ---------------------------------------------------------------------------------------------
# Peer-only baselines.


def scaled_mm_cases(results: Results, gemm_shapes):
    torch = TORCH
    if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        results.add({"op": "torch._scaled_mm fp8", "case": "all", "status": "unavailable",
                     "reason": "torch._scaled_mm or float8_e4m3fn missing in this torch"})
        return
    cache = {}
    for name, m, n, k in gemm_shapes:

        def make(m=m, n=n, k=k):
            if (n, k) not in cache:
                cache.clear()
                torch.cuda.empty_cache()
                cache[(n, k)] = randn(n, k).to(torch.float8_e4m3fn)
            w8 = cache[(n, k)]
            a8 = randn(m, k).to(torch.float8_e4m3fn)
            scale_a = torch.rand(m, 1, device=DEVICE, dtype=torch.float32) + 0.5
            scale_b = torch.rand(1, n, device=DEVICE, dtype=torch.float32) + 0.5
            out = torch._scaled_mm(a8, w8.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16)
            assert out.shape == (m, n)
            return lambda: torch._scaled_mm(a8, w8.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16)

        results.run("torch._scaled_mm fp8 row-wise", f"{name} {m}x{n}x{k}", make, flops=2 * m * n * k,
                    bytes_=m * k + k * n + 2 * m * n + 4 * (m + n), flop_key="fp8_flops",
                    extra={"shape": [m, n, k]})
    cache.clear()


def attention_pairs(t, s, causal, chunk=None):
    """Unmasked (query, key) pairs: t queries at the end of s keys."""
    if not causal:
        return t * s
    if chunk is None:
        # Query i (absolute position s - t + i) sees keys 0..=s-t+i.
        return sum(s - t + i + 1 for i in range(t))
    pairs = 0
    for start in range(0, s, chunk):
        length = min(chunk, s - start)
        pairs += length * (length + 1) // 2
    return pairs


def sdpa_cases(results: Results):
    torch = TORCH
    F = torch.nn.functional
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except Exception as exc:  # noqa: BLE001
        SDPBackend, sdpa_kernel = None, None
        results.add({"op": "SDPA backends", "case": "all", "status": "unavailable", "reason": first_line(exc)})
    backends = [("default", None)]
    if SDPBackend is not None:
        for label, attr in [("flash", "FLASH_ATTENTION"), ("efficient", "EFFICIENT_ATTENTION"), ("cudnn", "CUDNN_ATTENTION")]:
            if hasattr(SDPBackend, attr):
                backends.append((label, getattr(SDPBackend, attr)))
    cases = [("prefill causal", 1, 2048, 2048, True), ("decode", 1, 1, CHUNK, False), ("decode", 16, 1, CHUNK, False)]
    # The paged-attention benches' shapes: causal prefill at 1K-64K tokens, decode at 128K and 1M
    # keys (batch 1), beside l4's attention_prefill_paged and attention_decode_paged entries.
    cases += [("prefill causal", 1, t, t, True) for t in (1024, 4096, 16_384, 65_536)]
    cases += [("decode", 1, 1, s, False) for s in (131_072, 1_048_576)]
    for label, backend in backends:
        for case, b, t, s, causal in cases:
            pairs = b * HEADS * attention_pairs(t, s, causal)
            flops = 4 * pairs * HEAD_DIM
            bytes_ = 2 * (2 * b * HEADS * t * HEAD_DIM + 2 * b * KV_HEADS * s * HEAD_DIM)

            def make(b=b, t=t, s=s, causal=causal, backend=backend):
                q = randn(b, HEADS, t, HEAD_DIM)
                k = randn(b, KV_HEADS, s, HEAD_DIM)
                v = randn(b, KV_HEADS, s, HEAD_DIM)

                def call(q, k, v, gqa):
                    kwargs = {"is_causal": causal}
                    if gqa:
                        kwargs["enable_gqa"] = True
                    if backend is None:
                        return F.scaled_dot_product_attention(q, k, v, **kwargs)
                    with sdpa_kernel(backend):
                        return F.scaled_dot_product_attention(q, k, v, **kwargs)

                try:
                    call(q, k, v, True)
                    return lambda: call(q, k, v, True)
                except Exception as exc:  # noqa: BLE001 - retry with k/v repeated to the q heads
                    refused = first_line(exc)
                rep = HEADS // KV_HEADS
                k2 = k.repeat_interleave(rep, dim=1)
                v2 = v.repeat_interleave(rep, dim=1)
                call(q, k2, v2, False)
                return lambda: call(q, k2, v2, False), f"k/v repeated to {HEADS} heads (enable_gqa refused: {refused})"

            results.run(f"SDPA {label}", f"{case} b{b} t{t} s{s}", make, flops=flops, bytes_=bytes_,
                        extra={"shape": [b, HEADS, KV_HEADS, t, s, HEAD_DIM]})


def grouped_mm_cases(results: Results):
    torch = TORCH
    if not hasattr(torch, "_grouped_mm"):
        results.add({"op": "torch._grouped_mm", "case": "all", "status": "unavailable",
                     "reason": "torch._grouped_mm missing in this torch"})
        return
    for name, n, k in [("expert_gate_up", 2 * EXPERT_FFN, HIDDEN), ("expert_down", HIDDEN, EXPERT_FFN)]:
        for tokens in [16, 2048, 8192]:

            def make(n=n, k=k, tokens=tokens):
                per = tokens // EXPERTS
                x = randn(tokens, k)
                w = randn(EXPERTS, n, k)  # HF-style [e, out, in]; multiplied as [e, k, n] views
                offs = torch.arange(per, tokens + 1, per, device=DEVICE, dtype=torch.int32)[:EXPERTS]
                out = torch._grouped_mm(x, w.transpose(-2, -1), offs=offs, out_dtype=torch.bfloat16)
                assert out.shape == (tokens, n)
                return lambda: torch._grouped_mm(x, w.transpose(-2, -1), offs=offs, out_dtype=torch.bfloat16)

            results.run("torch._grouped_mm", f"{name} {EXPERTS}e x {tokens // EXPERTS} tok, n{n} k{k}", make,
                        flops=2 * tokens * n * k, bytes_=2 * (tokens * k + EXPERTS * k * n + tokens * n),
                        extra={"shape": [EXPERTS, tokens, n, k]})


def flex_worker(seqs):
    """Runs in a subprocess: FlexAttention with the chunked causal mask at each length."""
    torch = TORCH
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    compiled = torch.compile(flex_attention)
    rows = []
    for s in seqs:
        row = {"op": "FlexAttention chunked", "case": f"prefill b1 t{s} s{s} chunk {CHUNK}"}
        pairs = HEADS * attention_pairs(s, s, True, CHUNK)
        row["flops"] = 4 * pairs * HEAD_DIM
        row["bytes"] = 2 * (2 * HEADS * s * HEAD_DIM + 2 * KV_HEADS * s * HEAD_DIM)
        row["shape"] = [1, HEADS, KV_HEADS, s, s, HEAD_DIM]
        try:
            def chunked_causal(b, h, q, kv):
                return (q >= kv) & (q // CHUNK == kv // CHUNK)

            t0 = time.monotonic()
            mask = create_block_mask(chunked_causal, 1, 1, s, s, device=DEVICE)
            q = randn(1, HEADS, s, HEAD_DIM)
            k = randn(1, KV_HEADS, s, HEAD_DIM)
            v = randn(1, KV_HEADS, s, HEAD_DIM)
            compiled(q, k, v, block_mask=mask, enable_gqa=True)
            sync()
            row["compile_s"] = time.monotonic() - t0
            ms, reps = TIMER.median_ms(lambda: compiled(q, k, v, block_mask=mask, enable_gqa=True))
            row.update(status="ok", ms=ms, reps=reps)
        except Exception as exc:  # noqa: BLE001
            row.update(status="unavailable", reason=first_line(exc))
        rows.append(row)
        print("FLEX_ROW " + json.dumps(row), flush=True)


def flex_cases(results: Results, peaks, reserve):
    """FlexAttention in a subprocess, given the time budget left less `reserve` seconds (kept for
    the cases after it), at most FLEX_MAX_S."""
    seqs = [2048, 16_384, 65_536, 131_072]
    left = min(results.budget.left() - reserve, FLEX_MAX_S)
    if left < 15:
        for s in seqs:
            results.add({"op": "FlexAttention chunked", "case": f"prefill b1 t{s} s{s} chunk {CHUNK}",
                         "status": "unavailable", "reason": f"skipped: {max(left, 0):.0f} s of the time budget left"})
        return
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        results.add({"op": "FlexAttention chunked", "case": "all", "status": "unavailable", "reason": first_line(exc)})
        return
    cmd = [sys.executable, os.path.abspath(__file__), "--flex-worker", ",".join(str(s) for s in seqs)]
    got = {}
    reason = None
    try:
        # A session of its own, so a timeout also ends the compile workers torch.compile starts.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()
            stdout, stderr = proc.communicate()
            reason = f"timed out after {left:.0f} s (its share of the time budget; compiling FlexAttention is most of it)"
        for line in stdout.splitlines():
            if line.startswith("FLEX_ROW "):
                row = json.loads(line[len("FLEX_ROW "):])
                got[row["case"]] = row
        if reason is None and proc.returncode != 0:
            tail = (stderr.strip().splitlines() or ["no output"])[-1]
            reason = f"the FlexAttention subprocess exited with {proc.returncode}: {tail[:200]}"
    except Exception as exc:  # noqa: BLE001
        reason = first_line(exc)
    for s in seqs:
        case = f"prefill b1 t{s} s{s} chunk {CHUNK}"
        row = got.get(case) or {"op": "FlexAttention chunked", "case": case, "status": "unavailable",
                                "reason": reason or "no result", "shape": [1, HEADS, KV_HEADS, s, s, HEAD_DIM]}
        if row.get("status") == "ok":
            seconds = row["ms"] / 1e3
            row["tflops"] = row["flops"] / seconds / 1e12
            row["gbps"] = row["bytes"] / seconds / 1e9
            row["peak_fraction"], row["bound"] = roofline(peaks, row["flops"], row["bytes"], seconds)
        results.add(row)


def link_flex_to_l4(results: Results, entries):
    """Marks each FlexAttention row as the peer of l4's chunked prefill entry (contiguous or paged) of
    its shape."""
    for entry in entries:
        group, function = str(entry.get("group_id", "")), str(entry.get("function_id") or "")
        if not group.endswith(("attention_prefill", "attention_prefill_paged")) or f"_chunk{CHUNK}" not in function:
            continue
        try:
            b, h, hk, t, dh = dims(entry.get("value_str") or "")
        except ValueError:
            continue
        for row in results.rows:
            # One l4 entry per row: the first of a shape (16K has a contiguous and a paged one).
            if row.get("op", "").startswith("FlexAttention") and row.get("shape") == [b, h, hk, t, t, dh]:
                row.setdefault("l4_id", entry.get("full_id"))


# ---------------------------------------------------------------------------------------------


def fmt(x, spec, missing="-"):
    return missing if x is None else format(x, spec)


def print_table(rows, out=sys.stdout):
    print(f"{'op':<30} {'case':<44} {'ms':>9} {'TFLOP/s':>8} {'GB/s':>8} {'peak':>6}  status", file=out)
    for r in rows:
        ok = r.get("status") == "ok"
        frac = r.get("peak_fraction")
        peak = f"{100 * frac:.0f}%" if frac is not None else "-"
        status = "ok" if ok else f"unavailable: {r.get('reason', '')}"
        print(
            f"{r['op'][:30]:<30} {r['case'][:44]:<44} {fmt(r.get('ms') if ok else None, '9.4f'):>9} "
            f"{fmt(r.get('tflops') if ok else None, '8.1f'):>8} {fmt(r.get('gbps') if ok else None, '8.0f'):>8} "
            f"{peak:>6}  {status}",
            file=out,
        )


def write_json(path, payload):
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def main(argv=None):
    global TORCH, TIMER
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--criterion", help="criterion results of l4's benches ($CRITERION_HOME)")
    parser.add_argument("--since", type=float, help="ignore criterion results older than this Unix time")
    parser.add_argument("--out", help="JSON file to write (default: print only)")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds for the whole run (default 60)")
    parser.add_argument("--flex-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    payload = {"tool": "tools/peer_baselines.py", "available": False, "results": []}
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        payload["reason"] = f"torch cannot be imported: {first_line(exc)}"
        print(f"peer baselines: unavailable: {payload['reason']}")
        write_json(args.out, payload)
        return 0
    TORCH = torch
    payload["torch"] = torch.__version__
    payload["torch_cuda"] = getattr(torch.version, "cuda", None)
    if not torch.cuda.is_available():
        payload["reason"] = f"no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False); nothing measured"
        print(f"peer baselines: unavailable: {payload['reason']}")
        write_json(args.out, payload)
        return 0

    TIMER = Timer(torch)
    if args.flex_worker:
        flex_worker([int(s) for s in args.flex_worker.split(",")])
        return 0

    name = torch.cuda.get_device_name(0)
    peaks = peaks_for(name)
    budget = Budget(args.budget)
    results = Results(peaks, budget)
    payload.update(
        available=True,
        device=name,
        capability=list(torch.cuda.get_device_capability(0)),
        peaks=peaks,
        budget_s=args.budget,
        method="CUDA events per repetition, 256 MB L2 flush before each, one sync, median; warm-up first",
    )
    print(f"peer baselines on {name} (torch {torch.__version__}); peaks: {peaks['card'] if peaks else 'unknown card, no fractions'}")

    entries = [e for e in criterion_entries(args.criterion, args.since) if str(e.get("group_id", "")).startswith("cuda")]
    source = "criterion results" if entries else "the built-in Scout GEMM table"
    if not entries:
        entries = default_gemm_entries()
    print(f"peers of l4 entries from {source} ({len(entries)} entries)")
    weights = {}
    gemm_shapes = []
    for entry in entries:
        group = str(entry.get("group_id", ""))
        if "matmul" in group or "gemm" in group:
            try:
                m, n, k = dims(entry["value_str"])
            except (KeyError, ValueError):
                continue
            shape = (str(entry.get("function_id", "")).split("/")[-1], m, n, k)
            if shape not in gemm_shapes:
                gemm_shapes.append(shape)
        try:
            peer_for(entry, results, weights)
        except Exception as exc:  # noqa: BLE001
            results.add({"op": "peer", "case": entry.get("full_id", "?"), "status": "unavailable",
                         "reason": first_line(exc), "l4_id": entry.get("full_id")})
    weights.clear()
    torch.cuda.empty_cache()

    sdpa_cases(results)
    flex_cases(results, peaks, reserve=FLEX_RESERVE_S)
    link_flex_to_l4(results, entries)
    grouped_mm_cases(results)
    scaled_mm_cases(results, gemm_shapes)
    moe_block_cases(results, entries)

    payload["results"] = results.rows
    payload["seconds"] = time.monotonic() - START
    print_table(results.rows)
    ok = sum(r.get("status") == "ok" for r in results.rows)
    print(f"peer baselines: {ok} measured, {len(results.rows) - ok} unavailable, {payload['seconds']:.0f} s")
    write_json(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
