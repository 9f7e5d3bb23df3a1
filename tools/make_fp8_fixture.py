#!/usr/bin/env python3
"""Build model/testdata/tiny-scout-fp8: the tiny-scout fixture in the layout of a pre-quantized
FP8 checkpoint (compressed-tensors, as meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8).

Following Meta's `fp8_mixed` recipe (../shared/reference/llama4-spec.md section 6.3), the routed
experts of every MoE layer except the first and the last are stored per expert, in HF's
`nn.Linear` [out, in] layout, as e4m3 codes with one f32 scale per output channel:

    model.layers.{i}.feed_forward.experts.{j}.{gate,up,down}_proj.weight        F8_E4M3 [out, in]
    model.layers.{i}.feed_forward.experts.{j}.{gate,up,down}_proj.weight_scale  F32     [out, 1]

with  scale = max|W[n, :]| / 448  and  codes = round_to_nearest_even(W[n, :] / scale)  in f32
(W = the fused tensors of tiny-scout split per expert and transposed). Every other tensor is
copied from tiny-scout unchanged, and config.json gains a compressed-tensors
`quantization_config` (channel-wise static weights, token-wise dynamic activations) whose
`ignore` list names every linear left in float.

The quantization is the rule l4lab's `quant` kernel implements, written independently here with
torch, so loading this checkpoint must give exactly the weights l4lab makes when it quantizes
tiny-scout itself (the loader test relies on that).

Usage (from the repository root, after tools/make_fixtures.py):
    <venv>/bin/python tools/make_fp8_fixture.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "model" / "testdata" / "tiny-scout"
TARGET = REPO / "model" / "testdata" / "tiny-scout-fp8"
E4M3_MAX = 448.0


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row e4m3 codes and f32 scales of a [out, in] f32 matrix."""
    w = w.to(torch.float32)
    amax = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    scale = amax / E4M3_MAX
    codes = (w / scale).to(torch.float8_e4m3fn)  # RNE; |w / scale| <= 448 by construction
    return codes, scale


def main() -> None:
    config = json.loads((SOURCE / "config.json").read_text())
    weights = load_file(SOURCE / "model.safetensors")
    layers = config["num_hidden_layers"]
    step = config["interleave_moe_layer_step"]
    moe_layers = [i for i in range(layers) if (i + 1) % step == 0]
    quantized_layers = [i for i in moe_layers if 0 < i < layers - 1]
    out = {}
    for name, tensor in weights.items():
        out[name] = tensor.contiguous()
    for i in quantized_layers:
        prefix = f"model.layers.{i}.feed_forward.experts"
        gate_up = out.pop(f"{prefix}.gate_up_proj")  # [e, d, 2f], applied as x @ W
        down = out.pop(f"{prefix}.down_proj")  # [e, f, d]
        f = gate_up.shape[2] // 2
        for j in range(gate_up.shape[0]):
            linears = {
                "gate_proj": gate_up[j, :, :f].T,  # [f, d]
                "up_proj": gate_up[j, :, f:].T,  # [f, d]
                "down_proj": down[j].T,  # [d, f]
            }
            for proj, w in linears.items():
                codes, scale = quantize_rows(w.contiguous())
                out[f"{prefix}.{j}.{proj}.weight"] = codes.contiguous()
                out[f"{prefix}.{j}.{proj}.weight_scale"] = scale.contiguous()
    ignore = sorted(
        {name.rsplit(".weight", 1)[0] for name in out if name.endswith(".weight") and out[name].dtype != torch.float8_e4m3fn}
        - {"model.embed_tokens", "model.norm"}
    )
    config["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True, "dynamic": False},
                "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "symmetric": True, "dynamic": True},
            }
        },
        "ignore": [n for n in ignore if "norm" not in n.rsplit(".", 1)[-1]],
    }
    if TARGET.exists():
        shutil.rmtree(TARGET)
    TARGET.mkdir(parents=True)
    (TARGET / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(dict(sorted(out.items())), TARGET / "model.safetensors", metadata={"format": "pt"})
    n_fp8 = sum(1 for t in out.values() if t.dtype == torch.float8_e4m3fn)
    print(f"wrote {TARGET.relative_to(REPO)}: FP8 experts in layers {quantized_layers}, {n_fp8} e4m3 tensors")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
