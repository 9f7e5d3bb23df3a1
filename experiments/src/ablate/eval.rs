//! The prompts every variant runs on: `input_ids` from a safetensors file, a text file cut into
//! rows by its tokenizer, or seeded random token ids.

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use l4_core::{Device, Tensor};

use super::resolve::{Eval, EvalSource};
use crate::run::read_input_ids;

/// The evaluation batch.
#[derive(Clone, Debug)]
pub struct Prompts {
    /// `[b, t]` I64 token ids on the host.
    pub ids: Tensor,
    /// Whether the ids come from a file (real text) rather than a random draw.
    pub from_file: bool,
}

/// The prompts `eval` describes, for a model with `vocab` tokens. `file` (the ablation file)
/// names the section in errors.
pub fn prompts(file: &Path, eval: &Eval, vocab: usize) -> Result<Prompts> {
    match &eval.source {
        EvalSource::Random { seed } => {
            let ids = random_ids(*seed, eval.prompts * eval.prompt_len, vocab);
            Ok(Prompts {
                ids: Tensor::from_vec(ids, &[eval.prompts, eval.prompt_len], Device::Cpu)?,
                from_file: false,
            })
        }
        EvalSource::Tokens(path) => Ok(Prompts {
            ids: read_input_ids(path, vocab).map_err(|e| anyhow!("{}: [eval]: {e:#}", file.display()))?,
            from_file: true,
        }),
        EvalSource::Text { path, tokenizer } => {
            let ids = tokenize_file(path, tokenizer, vocab)?;
            let (rows, len) = match ids.len() / eval.prompt_len {
                0 => (1, ids.len()),
                whole => (whole.min(eval.prompts), eval.prompt_len),
            };
            let ids = ids[..rows * len].to_vec();
            Ok(Prompts {
                ids: Tensor::from_vec(ids, &[rows, len], Device::Cpu)?,
                from_file: true,
            })
        }
    }
}

/// `n` ids uniform over `0..vocab` from SplitMix64 seeded with `seed`: the same prompts on
/// every machine.
fn random_ids(seed: u64, n: usize, vocab: usize) -> Vec<i64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            // The modulo bias is below 2^-40 for any vocabulary that fits in 2^24.
            (z % vocab as u64) as i64
        })
        .collect()
}

/// The token ids of the text file `path` under `tokenizer` (special tokens such as BOS added
/// as the tokenizer's post-processor says), each checked against the vocabulary.
fn tokenize_file(path: &Path, tokenizer: &Path, vocab: usize) -> Result<Vec<i64>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
    let tokenizer_model =
        tokenizers::Tokenizer::from_file(tokenizer).map_err(|e| anyhow!("{}: {e}", tokenizer.display()))?;
    let encoding = tokenizer_model
        .encode(text.as_str(), true)
        .map_err(|e| anyhow!("{}: cannot tokenize: {e}", path.display()))?;
    let ids: Vec<i64> = encoding.get_ids().iter().map(|&id| i64::from(id)).collect();
    if ids.is_empty() {
        bail!("{}: the text encodes to no tokens", path.display());
    }
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        bail!(
            "{}: token id {bad} is outside the model's vocabulary 0..{vocab}",
            tokenizer.display()
        );
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(source: EvalSource) -> Eval {
        Eval {
            source,
            prompts: 3,
            prompt_len: 5,
            decode_tokens: 0,
            repeats: 1,
        }
    }

    #[test]
    fn random_prompts_are_fixed_by_the_seed_and_cover_the_vocabulary() {
        let file = Path::new("study.toml");
        let a = prompts(file, &eval(EvalSource::Random { seed: 7 }), 11).unwrap();
        let b = prompts(file, &eval(EvalSource::Random { seed: 7 }), 11).unwrap();
        let c = prompts(file, &eval(EvalSource::Random { seed: 8 }), 11).unwrap();
        assert_eq!(a.ids.shape(), &[3, 5]);
        assert!(!a.from_file);
        let (a, b, c) = (
            a.ids.to_vec::<i64>().unwrap(),
            b.ids.to_vec::<i64>().unwrap(),
            c.ids.to_vec::<i64>().unwrap(),
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|&id| (0..11).contains(&id)));
        let many = random_ids(1, 10_000, 11);
        assert!((0..11).all(|id| many.contains(&id)));
    }

    #[test]
    fn token_files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.safetensors");
        let ids = Tensor::from_vec(vec![1i64, 2, 3, 4], &[2, 2], Device::Cpu).unwrap();
        l4_core::checkpoint::save_safetensors(&path, &[("input_ids", &ids)], None).unwrap();
        let got = prompts(Path::new("study.toml"), &eval(EvalSource::Tokens(path.clone())), 8).unwrap();
        assert_eq!(got.ids.to_vec::<i64>().unwrap(), [1, 2, 3, 4]);
        assert!(got.from_file);
        let err = prompts(Path::new("study.toml"), &eval(EvalSource::Tokens(path)), 3)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("study.toml: [eval]") && err.contains("outside the vocabulary"),
            "{err}"
        );
    }
}
