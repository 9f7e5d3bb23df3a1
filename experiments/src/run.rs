//! `l4 logits` and `l4 generate`: run a model over token ids read from a safetensors file (with
//! `pixel_values` for a multimodal model), or, for `generate`, over a text prompt and an image
//! file.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use l4_core::checkpoint::{Checkpoint, save_safetensors};
use l4_core::{DType, Device, Tensor};
use l4_model::generate::{GreedyOptions, greedy_with_images};
use l4_model::parts::fp8::Fp8Mode;
use l4_model::vision::fusion::count_image_tokens;
use l4_model::vision::image_file::read_image;
use l4_model::vision::layout::{expand_prompt, image_text};
use l4_model::vision::preprocess::{PreprocessConfig, preprocess};
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
    /// FP8 weights (`None`: the checkpoint as stored).
    pub fp8: Option<Fp8Mode>,
    /// Routing strategy spec for every MoE layer (`None`: the checkpoint's).
    pub router: Option<String>,
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

/// `pixel_values` (float `[tiles, c, px, px]`) from the input file when it holds them, checked
/// against the model's vision encoder and against the image tokens of `ids`.
fn read_pixel_values(path: &Path, checkpoint: &Checkpoint, ids: &Tensor, model: &Llama4) -> Result<Option<Tensor>> {
    if !checkpoint.contains("pixel_values") {
        return Ok(None);
    }
    let Some(vision) = model.vision() else {
        bail!(
            "{}: `pixel_values` given, but the model has no vision encoder (its config.json has no vision_config)",
            path.display()
        );
    };
    let spec = vision.spec();
    let info = checkpoint.info("pixel_values")?;
    if !matches!(info.dtype, DType::F32 | DType::BF16 | DType::F16) {
        bail!(
            "{}: `pixel_values` has dtype {}, expected f32 (or bf16, f16)",
            path.display(),
            info.dtype
        );
    }
    let expected = [spec.num_channels, spec.image_size, spec.image_size];
    if info.shape.len() != 4 || info.shape[1..] != expected || info.shape[0] == 0 {
        bail!(
            "{}: `pixel_values` has shape {:?}, expected [tiles, {}, {}, {}] with at least one tile",
            path.display(),
            info.shape,
            expected[0],
            expected[1],
            expected[2]
        );
    }
    let tiles = info.shape[0];
    let tokens = count_image_tokens(ids, spec.image_token_id)?;
    if tokens != tiles * spec.tokens_per_tile() {
        bail!(
            "{}: `pixel_values` holds {tiles} tiles ({} image features at {} per tile), but `input_ids` hold {tokens} \
             image tokens (id {})",
            path.display(),
            tiles * spec.tokens_per_tile(),
            spec.tokens_per_tile(),
            spec.image_token_id
        );
    }
    let pixel_values = checkpoint.load("pixel_values", Device::Cpu)?.to_dtype(DType::F32)?;
    if pixel_values.to_f32_vec()?.iter().any(|v| !v.is_finite()) {
        bail!("{}: `pixel_values` holds a value that is not finite", path.display());
    }
    Ok(Some(pixel_values))
}

/// `input_ids` and, when present, `pixel_values` from the input file.
fn read_inputs(path: &Path, model: &Llama4) -> Result<(Tensor, Option<Tensor>)> {
    let ids = read_input_ids(path, model.spec().vocab_size)?;
    let checkpoint = Checkpoint::open(path)?;
    let pixel_values = read_pixel_values(path, &checkpoint, &ids, model)?;
    Ok((ids, pixel_values))
}

/// The model `options` name, with their FP8 mode and routing strategy applied.
pub fn load_model(options: &RunOptions) -> Result<Llama4> {
    let device = options.device.ensure_usable()?;
    let model = loader::load_with(&options.model, options.dtype, device, options.fp8)?;
    Ok(match &options.router {
        Some(spec) => model.with_router(spec)?,
        None => model,
    })
}

fn check_output_path(path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!("{}: is a directory, expected an output file path", path.display());
    }
    Ok(())
}

/// `l4 logits`: one forward over all of `input_ids` (images from `pixel_values` fused in);
/// writes `logits` (F32 [b, t, v]) and, with `dump_hidden`, `hidden_states.{i}`,
/// `router_logits.{layer}` and `expert_load.{layer}` (I64 [experts]).
pub fn logits(options: &RunOptions, input: &Path, output: &Path, dump_hidden: bool) -> Result<()> {
    check_output_path(output)?;
    let model = load_model(options)?;
    let (ids, pixel_values) = read_inputs(input, &model)?;
    let capture = Capture {
        hidden_states: dump_hidden,
        router_logits: dump_hidden,
    };
    let mut cache = model.new_cache();
    let embeddings = model.embed_with_images(&ids, pixel_values.as_ref())?;
    let out = model.forward_embeddings_with_ids(&embeddings, Some(&ids), &mut cache, capture)?;
    let host_f32 = |t: &Tensor| t.to_device(Device::Cpu)?.to_dtype(DType::F32);
    let mut tensors: Vec<(String, Tensor)> = vec![("logits".into(), host_f32(&out.logits)?)];
    for (i, h) in out.hidden_states.iter().enumerate() {
        tensors.push((format!("hidden_states.{i}"), host_f32(h)?));
    }
    for (layer, logits) in &out.router_logits {
        tensors.push((format!("router_logits.{layer}"), host_f32(logits)?));
    }
    for (layer, routing) in &out.routing {
        let load: Vec<i64> = routing.load().into_iter().map(|l| l as i64).collect();
        let experts = load.len();
        tensors.push((
            format!("expert_load.{layer}"),
            Tensor::from_vec(load, &[experts], Device::Cpu)?,
        ));
    }
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save_safetensors(output, &refs, None)?;
    Ok(())
}

/// Where `l4 generate` takes its prompt from.
#[derive(Clone, Debug)]
pub enum PromptSource {
    /// `input_ids` (and `pixel_values` for a multimodal model) in a safetensors file.
    InputFile(std::path::PathBuf),
    /// Text, tokenized with the checkpoint folder's tokenizer.json.
    Text(String),
    /// Text and an image file (PNG or JPEG): the image is preprocessed as HF's image processor
    /// does, and its tokens replace the text's `<|image|>` placeholder (or go first).
    TextAndImage {
        /// The prompt.
        text: String,
        /// The image file.
        image: std::path::PathBuf,
    },
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

/// The prompt ids `[1, t]` and `pixel_values` of `text` with the image file `image`, for the
/// multimodal checkpoint folder `model_dir`: the image preprocessed as the folder's
/// preprocessor_config.json says (HF's defaults without one), its token layout put in place of
/// the text's `<|image|>` (or before the text), and the whole tokenized with tokenizer.json.
fn image_prompt(
    model_dir: &str,
    model: &Llama4,
    text: &str,
    image: &Path,
) -> Result<(Tensor, Tensor, tokenizers::Tokenizer)> {
    let Some(vision) = model.vision() else {
        bail!("{model_dir}: --image needs a multimodal model (its config.json has no vision_config)");
    };
    let spec = vision.spec();
    let config = PreprocessConfig::for_model_dir(Path::new(model_dir), spec)?;
    let tiles = preprocess(&read_image(image)?, &config)?;
    let expanded = expand_prompt(text, &image_text(tiles.rows, tiles.cols, spec.tokens_per_tile()))?;
    let (ids, tokenizer) = tokenize(model_dir, &expanded, model.spec().vocab_size)?;
    let n_tiles = tiles.pixel_values.shape()[0];
    let found = count_image_tokens(&ids, spec.image_token_id)?;
    if found != n_tiles * spec.tokens_per_tile() {
        bail!(
            "{}: the image's {} <|patch|> tokens encode to {found} tokens of id {} (the config's image_token_index); \
             the tokenizer must know Llama 4's image tokens",
            Path::new(model_dir).join("tokenizer.json").display(),
            n_tiles * spec.tokens_per_tile(),
            spec.image_token_id
        );
    }
    Ok((ids, tiles.pixel_values, tokenizer))
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
    let (ids, pixel_values, tokenizer) = match prompt {
        PromptSource::InputFile(path) => {
            let (ids, pixel_values) = read_inputs(path, &model)?;
            (ids, pixel_values, None)
        }
        PromptSource::Text(text) => {
            let (ids, tokenizer) = tokenize(&options.model, text, vocab_size)?;
            (ids, None, Some(tokenizer))
        }
        PromptSource::TextAndImage { text, image } => {
            let (ids, pixel_values, tokenizer) = image_prompt(&options.model, &model, text, image)?;
            (ids, Some(pixel_values), Some(tokenizer))
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
    let generated = greedy_with_images(
        &model,
        &ids,
        pixel_values.as_ref(),
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
