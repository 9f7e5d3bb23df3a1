//! `l4 logits` and `l4 generate`: run a model over token ids read from a safetensors file.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use l4_core::checkpoint::{Checkpoint, save_safetensors};
use l4_core::{DType, Device, Tensor};
use l4_model::generate::{GreedyOptions, greedy};
use l4_model::{Capture, Llama4, loader};

/// Common options of the model-running commands.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Checkpoint folder or preset name.
    pub model: String,
    /// Where to run.
    pub device: Device,
    /// Compute dtype.
    pub dtype: DType,
}

/// Reads `input_ids` (I64 or I32 `[b, t]`) from a safetensors file, checking ids against the
/// vocabulary.
pub fn read_input_ids(path: &Path, vocab_size: usize) -> Result<Tensor> {
    let checkpoint = Checkpoint::open(path)?;
    let info = checkpoint
        .info("input_ids")
        .with_context(|| format!("{}: no tensor `input_ids`", path.display()))?;
    if !matches!(info.dtype, DType::I64 | DType::I32) {
        bail!(
            "{}: `input_ids` has dtype {}, expected i64 (or i32)",
            path.display(),
            info.dtype
        );
    }
    if info.shape.len() != 2 || info.shape.contains(&0) {
        bail!(
            "{}: `input_ids` has shape {:?}, expected [batch, tokens] with both non-zero",
            path.display(),
            info.shape
        );
    }
    let ids = checkpoint.load("input_ids", Device::Cpu)?.to_dtype(DType::I64)?;
    if let Some(&bad) = ids
        .to_vec::<i64>()?
        .iter()
        .find(|&&id| id < 0 || id as usize >= vocab_size)
    {
        bail!(
            "{}: `input_ids` holds token id {bad}, outside the vocabulary 0..{vocab_size}",
            path.display()
        );
    }
    Ok(ids)
}

fn load_model(options: &RunOptions) -> Result<Llama4> {
    loader::load(&options.model, options.dtype, options.device.ensure_usable()?).map_err(Into::into)
}

fn check_output_path(path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!("{}: is a directory, expected an output file path", path.display());
    }
    Ok(())
}

/// `l4 logits`: one forward over all of `input_ids`; writes `logits` (F32 [b, t, v]) and, with
/// `dump_hidden`, `hidden_states.{i}` and `router_logits.{layer}`.
pub fn logits(options: &RunOptions, input: &Path, output: &Path, dump_hidden: bool) -> Result<()> {
    check_output_path(output)?;
    let model = load_model(options)?;
    let ids = read_input_ids(input, model.spec().vocab_size)?;
    let capture = Capture {
        hidden_states: dump_hidden,
        router_logits: dump_hidden,
    };
    let mut cache = model.new_cache();
    let out = model.forward(&ids, &mut cache, capture)?;
    let host_f32 = |t: &Tensor| t.to_device(Device::Cpu)?.to_dtype(DType::F32);
    let mut tensors: Vec<(String, Tensor)> = vec![("logits".into(), host_f32(&out.logits)?)];
    for (i, h) in out.hidden_states.iter().enumerate() {
        tensors.push((format!("hidden_states.{i}"), host_f32(h)?));
    }
    for (layer, logits) in &out.router_logits {
        tensors.push((format!("router_logits.{layer}"), host_f32(logits)?));
    }
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save_safetensors(output, &refs, None)?;
    Ok(())
}

/// Where `l4 generate` takes its prompt from.
#[derive(Clone, Debug)]
pub enum PromptSource {
    /// `input_ids` in a safetensors file.
    InputFile(std::path::PathBuf),
    /// Text, tokenized with the checkpoint folder's tokenizer.json.
    Text(String),
}

/// Token ids `[1, t]` of `text` under `model`'s tokenizer.json, and the tokenizer.
fn tokenize(model: &str, text: &str, vocab_size: usize) -> Result<(Tensor, tokenizers::Tokenizer)> {
    let path = Path::new(model).join("tokenizer.json");
    if !path.is_file() {
        bail!(
            "{}: --prompt needs a tokenizer.json in the model folder",
            path.display()
        );
    }
    let tokenizer = tokenizers::Tokenizer::from_file(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let encoding = tokenizer
        .encode(text, true)
        .map_err(|e| anyhow::anyhow!("{}: cannot encode the prompt: {e}", path.display()))?;
    let ids: Vec<i64> = encoding.get_ids().iter().map(|&id| i64::from(id)).collect();
    if ids.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab_size) {
        bail!(
            "{}: token id {bad} is outside the model's vocabulary 0..{vocab_size}",
            path.display()
        );
    }
    let t = ids.len();
    Ok((Tensor::from_vec(ids, &[1, t], Device::Cpu)?, tokenizer))
}

/// Prints the text of `ids` beyond what was already printed (decoding the whole sequence each
/// time, so tokens that only form a character together print correctly).
fn stream_text(tokenizer: &tokenizers::Tokenizer, ids: &[u32], printed: &mut usize) {
    if let Ok(text) = tokenizer.decode(ids, true)
        && text.len() > *printed
        && text.is_char_boundary(*printed)
    {
        print!("{}", &text[*printed..]);
        let _ = std::io::stdout().flush();
        *printed = text.len();
    }
}

/// `l4 generate`: greedy decoding with the KV cache; writes `generated_ids` (I64 [b, n]).
pub fn generate(
    options: &RunOptions,
    prompt: &PromptSource,
    output: Option<&Path>,
    max_new_tokens: usize,
    stop_at_eos: bool,
) -> Result<()> {
    if let Some(output) = output {
        check_output_path(output)?;
    }
    let model = load_model(options)?;
    let vocab_size = model.spec().vocab_size;
    let (ids, tokenizer) = match prompt {
        PromptSource::InputFile(path) => (read_input_ids(path, vocab_size)?, None),
        PromptSource::Text(text) => {
            let (ids, tokenizer) = tokenize(&options.model, text, vocab_size)?;
            (ids, Some(tokenizer))
        }
    };
    let stop_ids = if stop_at_eos {
        model.spec().eos_token_ids.clone()
    } else {
        Vec::new()
    };
    let mut streamed: Vec<u32> = Vec::new();
    let mut printed = 0;
    let started = Instant::now();
    let generated = greedy(
        &model,
        &ids,
        &GreedyOptions {
            max_new_tokens,
            stop_ids,
        },
        |next| {
            if let (Some(tokenizer), Some(&id)) = (&tokenizer, next.first()) {
                streamed.push(id as u32);
                stream_text(tokenizer, &streamed, &mut printed);
            }
        },
    )?;
    let elapsed = started.elapsed().as_secs_f64();
    if tokenizer.is_some() {
        println!();
    }
    let new_tokens = generated.elem_count();
    // Written before the timing line, so that a failed write is the only line on stderr.
    if let Some(output) = output {
        let metadata = HashMap::from([("model".to_string(), options.model.clone())]);
        save_safetensors(output, &[("generated_ids", &generated)], Some(&metadata))?;
    }
    eprintln!(
        "generated {new_tokens} tokens in {elapsed:.2} s ({:.1} tokens/s)",
        new_tokens as f64 / elapsed.max(1e-9)
    );
    Ok(())
}
