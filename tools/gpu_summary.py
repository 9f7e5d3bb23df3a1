#!/usr/bin/env python3
"""The Markdown summary of a packed GPU run (gpu-bin/run.sh), written to $OUT/summary.md and printed.

    python3 gpu_summary.py --out $OUT [--since UNIX_TIME]

Reads, all from the run's output folder (each part is optional):

* criterion/**/new/{benchmark,estimates}.json: every l4 bench entry (ids `<device>/<op>/...`);
  the median time per repetition, and throughput from criterion's "elements" and "bytes"
  (elements are FLOPs in the GEMM groups, whose names contain `matmul`; tensor elements
  elsewhere, where bytes/s is the figure that counts: benches/src/units.rs);
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
    fp8 = {
        tuple(r["shape"]): r
        for r in peer_rows
        if r.get("op", "").startswith("torch._scaled_mm") and r.get("shape")
    }

    def peer_cells(l4_id, l4_seconds):
        p = by_l4.get(l4_id)
        if not p:
            return ["-", "-", "-"]
        if p.get("status") != "ok":
            return [p.get("op", "peer"), "unavailable", "-"]
        return [p.get("op", "peer"), fmt_time(p["ms"] / 1e3), ratio(p["ms"] / 1e3, l4_seconds)]

    gemm_rows, op_rows = [], []
    joined_fp8 = set()  # FP8 peers shown in the GEMM table, not repeated below
    for full_id, bench, seconds in shown:
        group = bench.get("group_id", "")
        function = bench.get("function_id") or ""
        value = bench.get("value_str") or ""
        elements, bytes_ = throughput(bench)
        if "matmul" in group:
            flops = elements
            fraction, bound = roofline(peaks, flops, bytes_, seconds) if full_id.startswith("cuda") else (None, None)
            peer = peer_cells(full_id, seconds)
            shape = None
            try:
                shape = tuple(int(x) for x in value.split("x"))
            except ValueError:
                pass
            f8 = fp8.get(shape) if shape else None
            if f8:
                joined_fp8.add(id(f8))
            f8_cells = ["-", "-"]
            if f8 and f8.get("status") == "ok":
                f8_cells = [fmt_time(f8["ms"] / 1e3), fmt_fraction(f8.get("peak_fraction"), f8.get("bound"))]
            elif f8:
                f8_cells = ["unavailable", "-"]
            group_name = group.split("/", 1)[-1]
            gemm_rows.append(
                [
                    function if group_name == "cublaslt_matmul_bf16" else f"{group_name}/{function}",
                    value,
                    fmt_time(seconds),
                    fmt_num(flops / seconds / 1e12 if flops else None, ".1f"),
                    fmt_num(bytes_ / seconds / 1e12 if bytes_ else None, ".2f"),
                    fmt_fraction(fraction, bound),
                    peer[1],
                    peer[2],
                    *f8_cells,
                ]
            )
        else:
            fraction = None
            if peaks and bytes_ and full_id.startswith("cuda"):
                fraction = bytes_ / seconds / peaks["hbm_bytes_per_s"]
            peer = peer_cells(full_id, seconds)
            op_rows.append(
                [
                    group.split("/", 1)[-1],
                    function,
                    value,
                    fmt_time(seconds),
                    fmt_num(bytes_ / seconds / 1e9 if bytes_ else None, ".0f"),
                    fmt_fraction(fraction),
                    peer[0],
                    peer[1],
                    peer[2],
                ]
            )

    device = shown[0][0].split("/", 1)[0] if shown else None
    md += ["", f"## GEMMs on {device or 'no device'} (l4 matmul, cuBLASLt on CUDA; bf16 in, bf16 out)", ""]
    if gemm_rows:
        md += table(
            ["gemm", "m×n×k", "l4", "TFLOP/s", "TB/s", "of peak", "torch.matmul", "l4/torch", "fp8 _scaled_mm", "fp8 of peak"],
            gemm_rows,
        )
    else:
        md.append("no GEMM results")
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
        others = [r for r in peer_rows if not r.get("l4_id") and id(r) not in joined_fp8]
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
