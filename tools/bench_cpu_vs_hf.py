#!/usr/bin/env python3
"""CPU speed of l4 vs Hugging Face transformers on a mid-size random Scout-like Llama 4 checkpoint.

One run does all of this (from the repository root):
  1. builds (if missing) a seeded float32 Llama4ForCausalLM checkpoint under target/bench-midsize/
     (hidden 512, 8 MoE layers, 16 experts top-1, 8 heads / 2 KV heads x 64, vocab 8192, chunk 128,
     QK-norm, NoPE every 4th layer, llama3 rope scaling like Scout, temperature tuning with floor 128);
  2. times HF (attn_implementation "eager" and "sdpa", torch.inference_mode, torch.set_num_threads(T)):
     prefill = one model(input_ids) forward over a random prompt, generate = model.generate(...) with
     do_sample=False and exactly --new-tokens new tokens (EOS disabled); median of R repeats after one
     untimed warm-up of each phase;
  3. runs `target/release/l4 bench` with the same sizes, repeats and threads and parses its numbers;
  4. prints a table (phase, HF eager, HF sdpa, l4, HF best / l4) and writes target/bench-midsize/results.json;
  5. measures peak RSS (`/usr/bin/time -v`) of load + one 8-token prefill, for l4 and for HF eager,
     next to the checkpoint's size on disk;
  6. checks that `l4 generate` and HF eager generate give the same greedy ids on a short prompt.

Build l4 first: `cargo build --release -p l4-experiments`.
Usage: /work/venv-hf/bin/python tools/bench_cpu_vs_hf.py [--threads 2] [--repeats 3] [--rounds 1] [--rebuild-checkpoint]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO / "target" / "bench-midsize"
DEFAULT_L4 = REPO / "target" / "release" / "l4"

SEED = 20250405
INIT_STD = 0.04
ROUTER_SCALE = 8.0  # as tools/make_fixtures.py: routing varies across tokens, no near ties
LM_HEAD_SCALE = 4.0  # logits far from uniform -> greedy path without near ties

CONFIG = dict(
    vocab_size=8192,
    hidden_size=512,
    num_hidden_layers=8,  # NoPE layers 3 and 7 (global attention + temperature tuning)
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=64,
    intermediate_size=512,  # expert and shared-expert width
    intermediate_size_mlp=1024,  # dense-layer width (unused: every layer is MoE, as in Scout)
    num_local_experts=16,
    num_experts_per_tok=1,
    interleave_moe_layer_step=1,
    hidden_act="silu",
    rms_norm_eps=1e-5,
    use_qk_norm=True,
    no_rope_layer_interval=4,
    attention_chunk_size=128,
    attn_temperature_tuning=True,
    floor_scale=128,  # Scout: 8192; 128 makes the temperature differ from 1 from position 127 on
    attn_scale=0.1,
    rope_parameters=dict(
        rope_type="llama3",
        rope_theta=500000.0,
        factor=16.0,
        low_freq_factor=1.0,
        high_freq_factor=1.0,
        # Scout's value. With theta 5e5 and head_dim 64 the 14 lowest frequencies (wavelength > 8192)
        # are divided by 16, which changes their angles by up to ~0.4 rad within 512 positions.
        original_max_position_embeddings=8192,
    ),
    max_position_embeddings=16384,  # > original_max_position_embeddings (HF warns otherwise)
    tie_word_embeddings=False,
    attention_bias=False,
    initializer_range=INIT_STD,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)


def spec_digest() -> str:
    spec = dict(config=CONFIG, seed=SEED, std=INIT_STD, router_scale=ROUTER_SCALE, lm_head_scale=LM_HEAD_SCALE)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def log(msg: str) -> None:
    print(msg, flush=True)


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def uptime_line() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except Exception:  # noqa: BLE001
        return "load average: " + ", ".join(f"{x:.2f}" for x in loadavg())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def dir_weight_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.glob("*.safetensors"))


# --------------------------------------------------------------------------------------
# Checkpoint
# --------------------------------------------------------------------------------------


def ensure_checkpoint(d: Path, rebuild: bool) -> dict:
    import torch
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    stamp = d / "bench_checkpoint.json"
    digest = spec_digest()
    if not rebuild and stamp.is_file() and (d / "config.json").is_file() and list(d.glob("*.safetensors")):
        meta = json.loads(stamp.read_text())
        if meta.get("spec_digest") == digest:
            log(f"checkpoint: reusing {d.relative_to(REPO) if d.is_relative_to(REPO) else d} (spec {digest})")
            return meta
        log("checkpoint: spec changed, rebuilding")
    log(f"checkpoint: building {d} (seed {SEED})")
    t0 = time.perf_counter()
    config = Llama4TextConfig(**CONFIG)
    model = Llama4ForCausalLM._from_config(config, attn_implementation="eager", dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        # Deterministic init that depends only on torch's CPU RNG (same scheme as make_fixtures.py).
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight"):
                p.copy_(torch.empty(p.shape).uniform_(0.5, 1.5, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * INIT_STD)
                if name.endswith("feed_forward.router.weight"):
                    p.mul_(ROUTER_SCALE)
                if name == "lm_head.weight":
                    p.mul_(LM_HEAD_SCALE)
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    model.generation_config.pad_token_id = None
    n_params = sum(p.numel() for p in model.parameters())
    # Write into a sibling temp folder, then swap, so an interrupted run never leaves a half checkpoint.
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".bench-midsize-", dir=d.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700
    model.save_pretrained(tmp, safe_serialization=True, max_shard_size="4GB")
    meta = dict(
        spec_digest=digest,
        seed=SEED,
        init_std=INIT_STD,
        router_scale=ROUTER_SCALE,
        lm_head_scale=LM_HEAD_SCALE,
        parameters=n_params,
        built_with=dict(torch=torch.__version__, transformers=__import__("transformers").__version__),
        built_at=datetime.datetime.now().isoformat(timespec="seconds"),
    )
    (tmp / "bench_checkpoint.json").write_text(json.dumps(meta, indent=2) + "\n")
    if d.exists():
        shutil.rmtree(d)
    tmp.rename(d)
    del model
    gc.collect()
    log(f"checkpoint: {n_params / 1e6:.1f} M parameters, {dir_weight_bytes(d) / 2**20:.1f} MiB, {time.perf_counter() - t0:.1f} s")
    return meta


# --------------------------------------------------------------------------------------
# HF timing
# --------------------------------------------------------------------------------------


def load_hf(d: Path, attn: str):
    import torch
    from transformers import Llama4ForCausalLM

    model = Llama4ForCausalLM.from_pretrained(d, attn_implementation=attn, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    model.generation_config.pad_token_id = None
    return model


def random_prompt(n: int, vocab: int, seed: int):
    import torch

    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed), dtype=torch.long)


def hf_generate(model, ids, n: int, **kw):
    import torch

    return model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        **kw,
    )


class HfTimer:
    """One loaded HF model; each round() is one warm-up + `repeats` timed runs of each phase."""

    def __init__(self, d: Path, attn: str, prompt_len: int, new_tokens: int):
        t0 = time.perf_counter()
        self.attn = attn
        self.model = load_hf(d, attn)
        self.load_seconds = time.perf_counter() - t0
        self.ids = random_prompt(prompt_len, CONFIG["vocab_size"], 0)
        self.prompt_len, self.new_tokens = prompt_len, new_tokens
        self.rounds: list[dict] = []

    def round(self, repeats: int) -> dict:
        import torch

        model, ids = self.model, self.ids

        def prefill() -> float:
            start = time.perf_counter()
            model(input_ids=ids)
            return time.perf_counter() - start

        def generate() -> float:
            start = time.perf_counter()
            out = hf_generate(model, ids, self.new_tokens)
            elapsed = time.perf_counter() - start
            assert out.shape[1] == self.prompt_len + self.new_tokens, out.shape
            return elapsed

        la_before = loadavg()
        with torch.inference_mode():
            prefill()  # warm-up
            c0, w0 = cpu_seconds(), time.perf_counter()
            p = [prefill() for _ in range(repeats)]
            generate()  # warm-up
            g = [generate() for _ in range(repeats)]
            c1, w1 = cpu_seconds(), time.perf_counter()
        r = dict(
            prefill_seconds=statistics.median(p),
            generate_seconds=statistics.median(g),
            prefill_all=p,
            generate_all=g,
            # CPU seconds / wall seconds over the timed runs (incl. the generate warm-up):
            # about `threads` on an idle machine, lower when other processes take the cores.
            cores_used=(c1 - c0) / (w1 - w0),
            loadavg_before=la_before,
            loadavg_after=loadavg(),
        )
        self.rounds.append(r)
        log(f"HF {self.attn:5s}: prefill {r['prefill_seconds']:.3f} s {fmt_all(p)}, generate "
            f"{r['generate_seconds']:.3f} s {fmt_all(g)}, cores used {r['cores_used']:.2f}, load {la_before[0]:.2f}")
        return r

    def summary(self) -> dict:
        return dict(
            load_seconds=self.load_seconds,
            prefill_seconds=statistics.median(r["prefill_seconds"] for r in self.rounds),
            generate_seconds=statistics.median(r["generate_seconds"] for r in self.rounds),
            best_round_prefill_seconds=min(r["prefill_seconds"] for r in self.rounds),
            best_round_generate_seconds=min(r["generate_seconds"] for r in self.rounds),
            rounds=self.rounds,
        )


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def fmt_all(xs: list[float]) -> str:
    return "[" + " ".join(f"{x:.3f}" for x in xs) + "]"


# --------------------------------------------------------------------------------------
# l4
# --------------------------------------------------------------------------------------


def run_l4_bench(l4: Path, d: Path, prompt_len: int, new_tokens: int, repeats: int, threads: int) -> dict:
    import resource

    cmd = [str(l4), "bench", "--model", str(d), "--prompt-len", str(prompt_len), "--new-tokens", str(new_tokens),
           "--repeats", str(repeats), "--threads", str(threads)]
    la_before = loadavg()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"l4 bench failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    vals = dict(re.findall(r"^(\w+_seconds)=([0-9.eE+-]+)$", proc.stdout, re.M))
    load = re.search(r"^load\s+([0-9.]+) s", proc.stdout, re.M)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    res = dict(
        prefill_seconds=float(vals["prefill_seconds"]),
        generate_seconds=float(vals["generate_seconds"]),
        load_seconds=float(load.group(1)) if load else None,
        wall_seconds=wall,
        # CPU seconds / wall seconds of the whole l4 process (load and warm-up included).
        cores_used=cpu / wall,
        command=" ".join(cmd),
        stdout=proc.stdout,
        loadavg_before=la_before,
        loadavg_after=loadavg(),
    )
    log(f"l4      : prefill {res['prefill_seconds']:.3f} s, generate {res['generate_seconds']:.3f} s "
        f"(load {res['load_seconds']} s), cores used {res['cores_used']:.2f}, load {la_before[0]:.2f}")
    return res


def peak_rss(cmd: list[str], env: dict | None = None) -> dict:
    """Max RSS (bytes) of `cmd` under /usr/bin/time -v."""
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return dict(error=f"exit {proc.returncode}: {proc.stderr[-2000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    w = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", proc.stderr)
    return dict(max_rss_bytes=int(m.group(1)) * 1024 if m else None, wall=w.group(1) if w else None, command=" ".join(cmd))


def hf_rss_probe(d: Path, threads: int) -> None:
    """Child mode for the HF memory measurement: load + one 8-token prefill, eager."""
    import torch

    torch.set_num_threads(threads)
    model = load_hf(d, "eager")
    with torch.inference_mode():
        model(input_ids=random_prompt(8, CONFIG["vocab_size"], 0))


# --------------------------------------------------------------------------------------
# Greedy agreement
# --------------------------------------------------------------------------------------


def greedy_check(l4: Path, d: Path, threads: int, prompt_len: int, new_tokens: int) -> dict:
    import torch
    from safetensors.torch import load_file, save_file

    ids = random_prompt(prompt_len, CONFIG["vocab_size"], 7)
    model = load_hf(d, "eager")
    with torch.inference_mode():
        out = hf_generate(model, ids, new_tokens, return_dict_in_generate=True, output_logits=True)
    hf_ids = out.sequences[:, prompt_len:]
    logits = torch.stack(out.logits, dim=1)[0]  # [N, V]
    top2 = logits.topk(2, dim=-1).values
    min_gap = float((top2[:, 0] - top2[:, 1]).min())
    del model
    gc.collect()
    with tempfile.TemporaryDirectory() as td:
        inp, outp = Path(td) / "input.safetensors", Path(td) / "generated.safetensors"
        save_file({"input_ids": ids.contiguous()}, inp)
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        cmd = [str(l4), "generate", "--model", str(d), "--input", str(inp), "--max-new-tokens", str(new_tokens),
               "--output", str(outp)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            return dict(agree=False, error=f"l4 generate exit {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        l4_ids = load_file(outp)["generated_ids"]
    agree = bool(torch.equal(l4_ids.to(torch.long), hf_ids))
    res = dict(
        agree=agree,
        prompt_len=prompt_len,
        new_tokens=new_tokens,
        hf_ids=hf_ids[0].tolist(),
        l4_ids=l4_ids[0].tolist(),
        hf_min_top1_top2_logit_gap=min_gap,
    )
    log(f"greedy ids ({prompt_len}-token prompt, {new_tokens} new): {'AGREE' if agree else 'DIFFER'}; "
        f"HF {res['hf_ids']} l4 {res['l4_ids']} (HF min top1-top2 logit gap {min_gap:.3f})")
    return res


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads / l4 --threads (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per phase, median reported (default 3)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="interleaved rounds of (l4, HF eager, HF sdpa); >1 evens out load from other processes")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--model-dir", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--l4", type=Path, default=DEFAULT_L4, help="l4 binary (default target/release/l4)")
    ap.add_argument("--attn", action="append", choices=["eager", "sdpa"], help="HF attention implementations (default both)")
    ap.add_argument("--rebuild-checkpoint", action="store_true")
    ap.add_argument("--skip-check", action="store_true", help="skip the greedy-ids agreement check")
    ap.add_argument("--skip-memory", action="store_true", help="skip the peak-RSS measurements")
    ap.add_argument("--hf-rss-probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--hf-rss-baseline", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    d = args.model_dir.resolve()

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if args.hf_rss_baseline:  # python + torch + transformers imported, no model
        return
    if args.hf_rss_probe:
        hf_rss_probe(d, args.threads)
        return
    torch.set_num_threads(args.threads)
    if not args.l4.is_file():
        sys.exit(f"{args.l4}: not found; run `cargo build --release -p l4-experiments` first")

    uptime_before = uptime_line()
    log(f"uptime before: {uptime_before}")
    log(f"python {platform.python_version()} torch {torch.__version__} transformers {transformers.__version__}; "
        f"CPU {cpu_model()} ({os.cpu_count()} logical cores); threads {args.threads}")
    ckpt = ensure_checkpoint(d, args.rebuild_checkpoint)
    weight_bytes = dir_weight_bytes(d)

    # Timings, interleaved in rounds (l4, then each HF attention) so that load from other processes
    # hits every engine alike; each engine's number is the median over rounds of its per-round median.
    timers = [HfTimer(d, attn, args.prompt_len, args.new_tokens) for attn in args.attn or ["eager", "sdpa"]]
    l4_rounds = []
    for k in range(args.rounds):
        log(f"-- round {k + 1}/{args.rounds} ({uptime_line()})")
        l4_rounds.append(run_l4_bench(args.l4, d, args.prompt_len, args.new_tokens, args.repeats, args.threads))
        for t in timers:
            t.round(args.repeats)
    hf_res = {t.attn: t.summary() for t in timers}
    del timers
    gc.collect()
    l4_res = dict(
        prefill_seconds=statistics.median(r["prefill_seconds"] for r in l4_rounds),
        generate_seconds=statistics.median(r["generate_seconds"] for r in l4_rounds),
        best_round_prefill_seconds=min(r["prefill_seconds"] for r in l4_rounds),
        best_round_generate_seconds=min(r["generate_seconds"] for r in l4_rounds),
        rounds=l4_rounds,
    )

    memory = None
    if not args.skip_memory:
        l4_mem = peak_rss([str(args.l4), "bench", "--model", str(d), "--prompt-len", "8", "--new-tokens", "1",
                           "--repeats", "1", "--threads", str(args.threads)])
        hf_mem = peak_rss([sys.executable, str(Path(__file__).resolve()), "--hf-rss-probe", "--model-dir", str(d),
                           "--threads", str(args.threads)])
        hf_base = peak_rss([sys.executable, str(Path(__file__).resolve()), "--hf-rss-baseline"])
        memory = dict(checkpoint_weight_bytes=weight_bytes, l4=l4_mem, hf_eager=hf_mem, hf_imports_only=hf_base)
        for who, m in (("l4 (load + 8-token prefill)", l4_mem), ("HF eager (load + 8-token prefill)", hf_mem),
                       ("HF baseline (python + torch + transformers imported, no model)", hf_base)):
            if m.get("max_rss_bytes"):
                log(f"peak RSS {who}: {m['max_rss_bytes'] / 2**20:.0f} MiB "
                    f"= {m['max_rss_bytes'] / weight_bytes:.2f}x the {weight_bytes / 2**20:.0f} MiB of weights")
            else:
                log(f"peak RSS {who}: {m}")

    check = None if args.skip_check else greedy_check(args.l4, d, args.threads, 64, 8)
    uptime_after = uptime_line()
    log(f"uptime after: {uptime_after}")

    # Two summaries, computed the same way for every engine: the median over rounds of the per-round
    # medians (primary), and the best (smallest) per-round median, which is less sensitive to load from
    # other processes on a shared machine (equal to the median when --rounds 1).
    attns = list(hf_res)
    rows, lines = [], []
    for stat, prefix in (("median", ""), ("best_round", "best_round_")):
        table = [["phase"] + [f"HF {a} (s)" for a in attns] + ["l4 (s)", "HF best / l4"]]
        for phase, label in (("prefill", f"prefill {args.prompt_len} tok"),
                             ("generate", f"generate {args.prompt_len}+{args.new_tokens} tok")):
            key = f"{prefix}{phase}_seconds"
            hf_vals = {a: r[key] for a, r in hf_res.items()}
            best = min(hf_vals.values())
            row = dict(stat=stat, phase=phase, label=label, hf=hf_vals, hf_best=best, l4=l4_res[key],
                       ratio_hf_best_over_l4=best / l4_res[key])
            rows.append(row)
            table.append([label] + [f"{hf_vals[a]:.3f}" for a in attns] + [f"{row['l4']:.3f}", f"{row['ratio_hf_best_over_l4']:.2f}x"])
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        block = [" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in table]
        block.insert(1, "-+-".join("-" * w for w in widths))
        title = (f"median over {args.rounds} round(s) of the median of {args.repeats} runs after 1 warm-up"
                 if stat == "median" else f"best of {args.rounds} round(s) (smallest per-round median)")
        lines += [title] + block + [""]
        if args.rounds == 1:
            break
    print()
    print(f"{args.threads} threads, f32, batch 1, {cpu_model()}, {os.cpu_count()} logical cores")
    print("\n".join(lines))

    results = dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        cpu_model=cpu_model(),
        logical_cores=os.cpu_count(),
        threads=args.threads,
        versions=dict(python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__),
        checkpoint=dict(path=str(d), weight_bytes=weight_bytes, config=CONFIG, **ckpt),
        prompt_len=args.prompt_len,
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        rounds=args.rounds,
        method=("median of repeats after one untimed warm-up; HF: torch.inference_mode, model(input_ids) for prefill, "
                "generate(do_sample=False, min_new_tokens=max_new_tokens, eos_token_id=None) for generate"),
        table=rows,
        table_text="\n".join(lines),
        hf=hf_res,
        l4=l4_res,
        memory=memory,
        greedy_check=check,
        uptime_before=uptime_before,
        uptime_after=uptime_after,
    )
    (d / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {d / 'results.json'}")


if __name__ == "__main__":
    main()
