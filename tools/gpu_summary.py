#!/usr/bin/env python3
"""The Markdown summary of a packed GPU run (gpu-bin/run.sh), written to $OUT/summary.md and printed.

    python3 gpu_summary.py --out $OUT [--since UNIX_TIME]

Reads, all from the run's output folder (each part is optional):

* criterion/**/new/{benchmark,estimates}.json: every l4 bench entry (ids `<device>/<op>/...`);
  the median time per repetition, and throughput from criterion's "elements" and "bytes"
  (elements are FLOPs in the groups whose names contain `matmul`, `gemm` or `attention_prefill`;
  tensor elements elsewhere, where bytes/s is the figure that counts: benches/src/units.rs);
* peers.json from tools/peer_baselines.py: PyTorch peers at the same shapes, joined on the l4 id;
  `l4/peer` is the peer's median time over l4's (above 1: l4 is faster);
* e2e.log (the `l4 bench` output) and summary.txt (run.sh's PASS/FAIL lines), printed last;
* env.txt / peers.json / the bench logs for the card's name; fractions of peak use its dense
  datasheet peaks (the table of tools/peer_baselines.py, which mirrors benches/src/units.rs) and
  the roofline: max(FLOPs / peak FLOP/s, bytes / peak bytes/s) / time.

Only the Python standard library is needed (no torch). With --since, criterion results older
than that Unix time (left in the folder by an earlier run) are ignored.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    from peer_baselines import peaks_for, roofline  # noqa: E402  (standard library only at import)
except Exception:  # noqa: BLE001 - the summary must not depend on the peers script being there

    def peaks_for(name):
        return None

    def roofline(peaks, flops, bytes_, seconds, flop_key="bf16_flops"):
        return None, None


# Groups whose criterion "elements" are FLOPs (benches/src/units.rs); the rest count tensor
# elements and are read by their bytes/s.
FLOP_GROUPS = ("matmul", "gemm", "attention_prefill")


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_lines(path):
    try:
        with open(path, errors="replace") as f:
            return [line.rstrip("\n") for line in f]
    except OSError:
        return []


def natural_key(text):
    """Sorts `1x..` before `16x..` before `128x..`."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def criterion_results(criterion_dir, since=None):
    """(id, benchmark.json, median seconds) for every entry measured (at or after `since`)."""
    rows = []
    pattern = os.path.join(criterion_dir, "**", "new", "benchmark.json")
    for path in sorted(glob.glob(pattern, recursive=True)):
        if since is not None and os.path.getmtime(path) < since:
            continue
        bench = load_json(path)
        estimates = load_json(os.path.join(os.path.dirname(path), "estimates.json"))
        if not bench or not estimates:
            continue
        try:
            median_ns = float(estimates["median"]["point_estimate"])
        except (KeyError, TypeError, ValueError):
            continue
        rows.append((bench.get("full_id") or bench.get("title") or path, bench, median_ns / 1e9))
    rows.sort(key=lambda r: natural_key(r[0]))
    return rows


def throughput(bench):
    t = bench.get("throughput") or {}
    if "ElementsAndBytes" in t:
        return t["ElementsAndBytes"].get("elements"), t["ElementsAndBytes"].get("bytes")
    if "Bytes" in t:
        return None, t["Bytes"]
    if "Elements" in t:
        return t["Elements"], None
    return None, None


def fmt_time(seconds):
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_num(x, spec):
    return "-" if x is None else format(x, spec)


def fmt_fraction(fraction, bound=None):
    if fraction is None:
        return "-"
    suffix = {"compute": " C", "memory": " M"}.get(bound or "", "")
    return f"{100 * fraction:.0f}%{suffix}"


def ratio(peer_seconds, l4_seconds):
    if not peer_seconds or not l4_seconds:
        return "-"
    return f"{peer_seconds / l4_seconds:.2f}×"


def card_name(out_dir, peers):
    if peers and peers.get("device"):
        return peers["device"]
    for log in sorted(glob.glob(os.path.join(out_dir, "bench-*.log"))):
        for line in read_lines(log):
            m = re.match(r"l4-benches: cuda:\d+ is (.+?);", line)
            if m:
                return m.group(1)
    lines = read_lines(os.path.join(out_dir, "env.txt"))
    for i, line in enumerate(lines):
        if line.startswith("name, driver_version") and i + 1 < len(lines):
            return lines[i + 1].split(",")[0].strip()
    return None


def driver(out_dir):
    lines = read_lines(os.path.join(out_dir, "env.txt"))
    for i, line in enumerate(lines):
        if line.startswith("name, driver_version") and i + 1 < len(lines):
            parts = [p.strip() for p in lines[i + 1].split(",")]
            if len(parts) > 1:
                return parts[1]
    return None


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def summarize(out_dir, since=None):
    md = ["# l4lab GPU run summary", ""]
    peers = load_json(os.path.join(out_dir, "peers.json"))
    name = card_name(out_dir, peers)
    peaks = peaks_for(name) if name else None
    if name:
        drv = driver(out_dir)
        md.append(f"- card: {name}" + (f", driver {drv}" if drv else ""))
    else:
        md.append("- card: no CUDA device found (CPU dry run)")
    if peaks:
        md.append(
            f"- fractions of peak: {peaks['card']} datasheet, dense: {peaks['bf16_flops'] / 1e12:.0f} TFLOP/s bf16, "
            f"{peaks['fp8_flops'] / 1e12:.0f} TFLOP/s FP8, {peaks['hbm_bytes_per_s'] / 1e12:.2f} TB/s HBM; "
            "C/M = compute/memory roofline"
        )
    elif name:
        md.append(f"- fractions of peak: no datasheet peaks known for {name}; not derived")
    md.append("- l4/peer = peer median time / l4 median time (above 1: l4 faster); times are medians per repetition, L2 flushed before each")

    results = criterion_results(os.path.join(out_dir, "criterion"), since)
    cuda = [r for r in results if r[0].startswith("cuda")]
    shown = cuda if cuda else results
    hidden = len(results) - len(shown)
    peer_rows = (peers or {}).get("results") or []
    by_l4 = {r["l4_id"]: r for r in peer_rows if r.get("l4_id")}
    by_shape = {}
    for r in peer_rows:
        op = str(r.get("op", ""))
        if r.get("shape") and (op == "torch.matmul" or op.startswith("torch._scaled_mm")):
            by_shape[(op.split(" ")[0], tuple(r["shape"]))] = r
    joined = set()  # peers shown beside an l4 entry, not repeated in the last table

    def peer(l4_id=None, key=None):
        p = by_l4.get(l4_id) if l4_id else None
        if p is None and key is not None:
            p = by_shape.get(key)
        if p is not None:
            joined.add(id(p))
        return p

    def peer_seconds(p):
        return p["ms"] / 1e3 if p and p.get("status") == "ok" else None

    def peer_cells(l4_id, l4_seconds):
        p = peer(l4_id)
        if not p:
            return ["-", "-", "-"]
        if p.get("status") != "ok":
            return [p.get("op", "peer"), "unavailable", "-"]
        return [p.get("op", "peer"), fmt_time(p["ms"] / 1e3), ratio(p["ms"] / 1e3, l4_seconds)]

    # GEMM entries, one row per (device, gemm, m×n×k): the bf16 matmul (cuBLASLt on CUDA), l4's FP8
    # GEMM (row-wise and block scales) and cuBLASLt's FP8 GEMM, beside torch.matmul and
    # torch._scaled_mm at the same shape.
    gemm_kinds = {
        "cublaslt_matmul_bf16": "bf16",
        "matmul_bf16": "bf16",
        "fp8_gemm_rowwise": "fp8",
        "cublaslt_fp8_gemm_rowwise": "fp8_cublaslt",
        "fp8_gemm_block": "fp8_block",
    }
    gemms = {}
    other_gemm_rows, op_rows = [], []
    for full_id, bench, seconds in shown:
        group = bench.get("group_id", "")
        device_name, _, group_name = group.partition("/")
        function = bench.get("function_id") or ""
        value = bench.get("value_str") or ""
        elements, bytes_ = throughput(bench)
        on_cuda = full_id.startswith("cuda")
        if any(marker in group for marker in FLOP_GROUPS):
            flop_key = "fp8_flops" if "fp8" in group else "bf16_flops"
            fraction, bound = roofline(peaks, elements, bytes_, seconds, flop_key) if on_cuda else (None, None)
            entry = {"id": full_id, "seconds": seconds, "flops": elements, "fraction": fraction, "bound": bound}
            kind = gemm_kinds.get(group_name)
            if kind:
                gemms.setdefault((device_name, function, value), {})[kind] = entry
            else:
                other_gemm_rows.append(
                    [
                        f"{group_name}/{function}",
                        value,
                        fmt_time(seconds),
                        fmt_num(elements / seconds / 1e12 if elements else None, ".2f"),
                        fmt_fraction(fraction, bound),
                        *peer_cells(full_id, seconds),
                    ]
                )
        else:
            fraction = None
            if peaks and bytes_ and on_cuda:
                fraction = bytes_ / seconds / peaks["hbm_bytes_per_s"]
            cells = peer_cells(full_id, seconds)
            op_rows.append(
                [
                    group_name,
                    function,
                    value,
                    fmt_time(seconds),
                    fmt_num(bytes_ / seconds / 1e9 if bytes_ else None, ".0f"),
                    fmt_fraction(fraction),
                    *cells,
                ]
            )

    gemm_rows = []
    for (device_name, function, value), kinds in sorted(
        gemms.items(), key=lambda kv: (kv[0][0], kv[0][1], natural_key(kv[0][2]))
    ):
        try:
            shape = tuple(int(x) for x in value.split("x"))
        except ValueError:
            shape = None
        bf16, fp8, fp8_lt, block = (kinds.get(k) for k in ("bf16", "fp8", "fp8_cublaslt", "fp8_block"))
        torch_mm = peer(bf16["id"] if bf16 else None, ("torch.matmul", shape))
        scaled = peer(None, ("torch._scaled_mm", shape))

        def time_cells(e):
            if not e:
                return ["-", "-", "-"]
            tflops = e["flops"] / e["seconds"] / 1e12 if e["flops"] else None
            return [fmt_time(e["seconds"]), fmt_num(tflops, ".1f"), fmt_fraction(e["fraction"], e["bound"])]

        gemm_rows.append(
            [
                function,
                value,
                *time_cells(bf16),
                ratio(peer_seconds(torch_mm), bf16["seconds"]) if bf16 else "-",
                *time_cells(fp8),
                ratio(fp8_lt["seconds"], fp8["seconds"]) if fp8 and fp8_lt else "-",
                fmt_time(peer_seconds(scaled)) if scaled else "-",
                ratio(peer_seconds(scaled), fp8["seconds"]) if fp8 else "-",
                fmt_time(block["seconds"]) if block else "-",
            ]
        )

    device = shown[0][0].split("/", 1)[0] if shown else None
    md += ["", f"## GEMMs on {device or 'no device'} (bf16 out)", ""]
    if gemm_rows:
        md.append(
            "bf16 l4 = l4's bf16 matmul (cuBLASLt on CUDA), l4/torch against torch.matmul; fp8 l4 = l4's FP8 "
            "GEMM with row-wise scales (of peak against the FP8 peak), against cuBLASLt's FP8 GEMM and "
            "torch._scaled_mm row-wise; block l4 = l4's FP8 GEMM with 1x128/128x128 block scales"
        )
        md.append("")
        md += table(
            [
                "gemm",
                "m×n×k",
                "bf16 l4",
                "TFLOP/s",
                "of peak",
                "l4/torch",
                "fp8 l4",
                "TFLOP/s",
                "of peak",
                "l4/cuBLASLt",
                "_scaled_mm",
                "l4/_scaled_mm",
                "block l4",
            ],
            gemm_rows,
        )
    if not gemm_rows:
        md.append("no GEMM results")
    if other_gemm_rows:
        md += ["", f"## Other compute-bound entries on {device or 'no device'} (FLOPs of useful work)", ""]
        md += table(["entry", "dims", "l4", "TFLOP/s", "of peak", "peer", "peer time", "l4/peer"], other_gemm_rows)
    md += ["", f"## l4 kernels on {device or 'no device'} (bytes/s of compulsory traffic)", ""]
    if op_rows:
        md += table(["op", "dtype", "dims", "l4", "GB/s", "of HBM", "peer", "peer time", "l4/peer"], op_rows)
    else:
        md.append("no kernel results")
    if hidden:
        md.append(f"\n({hidden} CPU entries are in criterion/, not listed)")

    md += ["", "## Peers without an l4 counterpart yet", ""]
    if peers is None:
        md.append("no peers.json (peer baselines not run)")
    elif not peers.get("available"):
        md.append(f"peer baselines unavailable: {peers.get('reason', '?')}")
    else:
        others = [r for r in peer_rows if id(r) not in joined]
        rows = []
        for r in others:
            ok = r.get("status") == "ok"
            rows.append(
                [
                    r.get("op", "?"),
                    r.get("case", "?"),
                    fmt_time(r["ms"] / 1e3) if ok else "-",
                    fmt_num(r.get("tflops") if ok else None, ".1f"),
                    fmt_num(r.get("gbps") if ok else None, ".0f"),
                    fmt_fraction(r.get("peak_fraction"), r.get("bound")) if ok else "-",
                    (r.get("note") or "") if ok else f"unavailable: {(r.get('reason') or '')[:90]}",
                ]
            )
        md += table(["peer", "case", "time", "TFLOP/s", "GB/s", "of peak", "note"], rows) if rows else ["none"]
        md.append(
            f"\ntorch {peers.get('torch', '?')}; {sum(r.get('status') == 'ok' for r in peer_rows)} peer cases measured "
            f"in {peers.get('seconds', 0):.0f} s"
        )

    md += ["", "## End-to-end (`l4 bench`)", ""]
    e2e = read_lines(os.path.join(out_dir, "e2e.log"))
    if e2e:
        md += ["```", *e2e[-12:], "```"]
    else:
        md.append("not run (see the lines below)")

    md += ["", "## Binaries", "", "```"]
    md += read_lines(os.path.join(out_dir, "summary.txt")) or ["no summary.txt"]
    md.append("```")
    return "\n".join(md) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-out"), help="the run's output folder")
    parser.add_argument("--since", type=float, help="ignore criterion results older than this Unix time")
    parser.add_argument("--md", help="where to write the summary (default: OUT/summary.md)")
    args = parser.parse_args(argv)
    text = summarize(args.out, args.since)
    path = args.md or os.path.join(args.out, "summary.md")
    with open(path, "w") as f:
        f.write(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
