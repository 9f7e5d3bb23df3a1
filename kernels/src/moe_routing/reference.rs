//! The CPU reference for `moe_routing`, which is also its CPU backend: the same rule in plain
//! loops, selection on logits by `f32::total_cmp` with ties to the lower expert, f32 weights, a stable counting
//! sort.

use l4_core::{Device, Result, Tensor};

use super::{RouteKind, RoutedTokens};

/// See [`super::route`]; the operands are checked.
pub fn route(logits: &Tensor, kind: RouteKind) -> Result<RoutedTokens> {
    let (t, e) = (logits.shape()[0], logits.shape()[1]);
    let k = kind.k();
    let values = logits.to_f32_vec()?;
    let mut topk_expert = Vec::with_capacity(t * k);
    let mut topk_weight = Vec::with_capacity(t * k);
    for row in values.chunks(e.max(1)).take(t) {
        let mut order: Vec<usize> = (0..e).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let chosen = &order[..k];
        let weights: Vec<f32> = match kind {
            RouteKind::Llama4 => chosen.iter().map(|&j| 1.0 / (1.0 + (-row[j]).exp())).collect(),
            RouteKind::SoftmaxTopK { renormalize, .. } => {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
                let probs: Vec<f32> = chosen.iter().map(|&j| (row[j] - max).exp() / sum).collect();
                let total: f32 = probs.iter().sum();
                match renormalize {
                    true => probs.iter().map(|p| p / total).collect(),
                    false => probs,
                }
            }
        };
        topk_expert.extend(chosen.iter().map(|&j| j as i32));
        topk_weight.extend(weights);
    }
    let mut count = vec![0i32; e];
    for &x in &topk_expert {
        count[x as usize] += 1;
    }
    let mut offset = vec![0i32; e + 1];
    for x in 0..e {
        offset[x + 1] = offset[x] + count[x];
    }
    let mut cursor: Vec<i32> = offset[..e].to_vec();
    let mut sorted = vec![0i32; t * k];
    for (slot, &x) in topk_expert.iter().enumerate() {
        sorted[cursor[x as usize] as usize] = slot as i32;
        cursor[x as usize] += 1;
    }
    Ok(RoutedTokens {
        topk_expert: Tensor::from_vec(topk_expert, &[t, k], Device::Cpu)?,
        topk_weight: Tensor::from_vec(topk_weight, &[t, k], Device::Cpu)?,
        expert_count: Tensor::from_vec(count, &[e], Device::Cpu)?,
        expert_offset: Tensor::from_vec(offset, &[e + 1], Device::Cpu)?,
        sorted_slots: Tensor::from_vec(sorted, &[t * k], Device::Cpu)?,
    })
}
