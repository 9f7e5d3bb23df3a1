//! The long-context check: a Scout-shaped layer stack (`llama4-scout-slice`: Scout's repeating
//! unit of 3 chunked RoPE layers and 1 global NoPE layer at full width, random weights) decodes
//! at 1M tokens of context on the GPU, and reports the KV bytes each kind of layer holds per
//! token of context. The cache is filled by writing random keys and values straight into every
//! layer's paged cache, 8192 positions at a time (a forward pass over 1M tokens would spend the
//! run's device time on prefill), then a few greedy steps run through the whole stack.
//!
//! Only the global layers should grow: a chunked layer holds at most one 8192-token chunk of
//! blocks at any context. On the CPU the same check runs on `tiny-scout` at 64 tokens.
//!
//! Output: one line per context with the decode step time and, per layer kind, the bytes held
//! and the bytes per token of context; the process fails (through the runner) when a chunked
//! layer holds more than a chunk of blocks.

use std::time::Instant;

use l4_benches::runner;
use l4_core::{DType, Device, Result, Tensor};
use l4_model::hf_config::HfArchitecture;
use l4_model::weights::{RandomSource, WeightNames};
use l4_model::{Capture, Llama4, Span, preset};

/// Decode steps timed per context.
const STEPS: usize = 4;
/// Positions written per fill step (Scout's chunk: each write stays inside one chunk).
const FILL: usize = 8192;

/// Runs the check on every device (see the module docs).
pub fn long_context_check() {
    for device in runner::devices() {
        let (preset_name, dtype, contexts): (&str, DType, &[usize]) = if device.is_cuda() {
            ("llama4-scout-slice", DType::BF16, &[1 << 17, 1 << 20])
        } else {
            ("tiny-scout", DType::F32, &[64])
        };
        let id = format!("{device}/long_context/{preset_name}");
        if let Err(e) = run(device, preset_name, dtype, contexts) {
            runner::fail(&id, format!("{e}"));
        }
    }
}

fn run(device: Device, preset_name: &str, dtype: DType, contexts: &[usize]) -> Result<()> {
    let spec = preset(preset_name)?.spec();
    let names = WeightNames::for_architecture(HfArchitecture::CausalLm);
    let mut source = RandomSource::new(5, dtype, device);
    let model = Llama4::build(spec, &names, &mut source, dtype, device)?;
    let spec = model.spec();
    let (hk, dh) = (spec.num_kv_heads, spec.head_dim);
    let fill = FILL.min(contexts[0]);
    let k = l4_benches::runner::randn(&[1, hk, fill, dh], dtype, 41, device)?;
    let v = l4_benches::runner::randn(&[1, hk, fill, dh], dtype, 42, device)?;
    for &context in contexts {
        let mut cache = model.new_cache();
        let mut pos = 0;
        while pos < context {
            let n = fill.min(context - pos);
            for i in 0..spec.layers.len() {
                let layer = cache.layer_mut(i);
                layer.append(&k.narrow(2, 0, n)?, &v.narrow(2, 0, n)?, pos)?;
                layer.finish_step(pos + n)?;
            }
            pos += n;
        }
        cache.advance(context);
        let mut ids = Tensor::from_vec(vec![1i64], &[1, 1], Device::Cpu)?;
        let started = Instant::now();
        for _ in 0..STEPS {
            let logits = model.forward(&ids, &mut cache, Capture::default())?.logits; // [1, 1, v]
            // The argmax leaves the device: this also waits for the step.
            let next = logits.to_device(Device::Cpu)?.to_dtype(DType::F32)?.argmax(2, false)?;
            ids = next.reshape(&[1, 1])?;
        }
        let step_ms = started.elapsed().as_secs_f64() * 1e3 / STEPS as f64;
        let held = cache.bytes_per_layer();
        let reserved = cache.bytes_reserved_per_layer();
        let position = cache.position();
        let mut report = format!(
            "long_context {device} {preset_name} {dtype}: context {position}, decode step {step_ms:.2} ms (batch 1, {STEPS} steps)"
        );
        for (kind, chunked) in [("chunked", true), ("global", false)] {
            let layers: Vec<usize> = (0..spec.layers.len())
                .filter(|&i| matches!(spec.layers[i].span, Span::Chunked(_)) == chunked)
                .collect();
            let bytes: usize = layers.iter().map(|&i| held[i]).sum();
            let pools: usize = layers.iter().map(|&i| reserved[i]).sum();
            report += &format!(
                "; {} {kind} layers hold {:.1} MiB (pools {:.1} MiB), {:.1} B per token of context per layer",
                layers.len(),
                bytes as f64 / (1 << 20) as f64,
                pools as f64 / (1 << 20) as f64,
                bytes as f64 / layers.len().max(1) as f64 / position as f64
            );
            if chunked {
                for &i in &layers {
                    let Span::Chunked(chunk) = spec.layers[i].span else {
                        continue;
                    };
                    let per_token = 2 * hk * dh * dtype.size_in_bytes();
                    if held[i] > chunk * per_token {
                        return Err(l4_core::Error::invalid(
                            "long_context",
                            format!(
                                "chunked layer {i} holds {} bytes, more than a {chunk}-token chunk",
                                held[i]
                            ),
                        ));
                    }
                }
            }
        }
        println!("{report}");
    }
    Ok(())
}
