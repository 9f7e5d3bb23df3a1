//! The early-fusion vision path against Hugging Face transformers, on the fixtures made by
//! tools/make_vision_fixtures.py (model/testdata/VISION.md): parity of the adapter output, the
//! projected features, the fused embeddings, the logits and greedy decoding in f32 on every
//! device (one tile per image in a batch of two, and a 2x3 grid plus the global tile);
//! preprocessing and the prompt's token layout against HF's processor; and the invariants of
//! the parts (the class token's RoPE is the identity, pixel shuffle is a permutation, features
//! land exactly on the image tokens, a prompt without images is the text model's).
//!
//! Parity bounds are docs/numerics.md's "Model parity with HF" rule: `3·|HF − f64|` per kind of
//! tensor, from each fixture's `hf_vs_f64_reference_maxabs`.

use std::path::{Path, PathBuf};

use l4_core::checkpoint::{Checkpoint, save_safetensors};
use l4_core::testing::{Tolerance, assert_close, test_devices};
use l4_core::{DType, Device, Tensor};
use l4_kernels::ops;
use l4_model::generate::{GreedyOptions, greedy, greedy_with_images};
use l4_model::vision::fusion::scatter_image_features;
use l4_model::vision::image_file::read_image;
use l4_model::vision::layout::{expand_prompt, image_text};
use l4_model::vision::pixel_shuffle::{pixel_shuffle, pixel_unshuffle};
use l4_model::vision::preprocess::{PreprocessConfig, preprocess};
use l4_model::vision::rope2d::Rope2d;
use l4_model::weights::{VisionTensor, WeightNames};
use l4_model::{Capture, Llama4, loader};
use proptest::prelude::*;

const FIXTURES: &[&str] = &["tiny-vision-1tile", "tiny-vision-tiles"];

/// The fixture folder, from the package directory (cargo test) or the repository root (packed
/// test binaries).
fn fixture_dir(name: &str) -> PathBuf {
    [
        PathBuf::from("testdata"),
        PathBuf::from("model/testdata"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata"),
    ]
    .iter()
    .map(|base| base.join(name))
    .find(|p| p.is_dir())
    .unwrap_or_else(|| panic!("fixture {name} not found under testdata/ or model/testdata/"))
}

fn meta(fixture: &str) -> serde_json::Value {
    let path = fixture_dir(fixture).join("expected_meta.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn expected(fixture: &str, name: &str) -> Tensor {
    Checkpoint::open(fixture_dir(fixture).join("expected.safetensors"))
        .unwrap()
        .load(name, Device::Cpu)
        .unwrap()
}

fn load(fixture: &str, device: Device) -> Llama4 {
    loader::load(fixture_dir(fixture).to_str().unwrap(), DType::F32, device)
        .unwrap_or_else(|e| panic!("{fixture} on {device}: {e}"))
}

/// The f32 parity bound of docs/numerics.md: `|ours − HF| ≤ 3·|HF − f64|` for `kind`.
fn parity_tolerance(fixture: &str, kind: &str) -> Tolerance {
    let hf_error = meta(fixture)["hf_vs_f64_reference_maxabs"][kind]
        .as_f64()
        .unwrap_or_else(|| panic!("{fixture}: no hf_vs_f64_reference_maxabs.{kind}"));
    let tol = Tolerance::new(3.0 * hf_error, 0.0);
    assert!(
        tol.atol <= 1e-4,
        "{fixture} {kind}: derived bound {tol} is looser than the 1e-4 ceiling"
    );
    tol
}

fn check(context: &str, got: &Tensor, want: &Tensor, tol: Tolerance) {
    assert_eq!(got.shape(), want.shape(), "{context}: shape");
    let (got, want) = (got.to_f64_vec().unwrap(), want.to_f64_vec().unwrap());
    let max_err = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0, f64::max);
    eprintln!("{context}: max |error| {max_err:.2e} (bound {tol})");
    if let Err(msg) = assert_close(&got, &want, tol, context) {
        panic!("{msg}");
    }
}

#[test]
fn the_weight_tables_name_exactly_the_tensors_hf_saved() {
    for &fixture in FIXTURES {
        let dir = fixture_dir(fixture);
        let (spec, architecture) = loader::resolve(dir.to_str().unwrap()).unwrap();
        let vision = loader::resolve_vision(dir.to_str().unwrap(), &spec).unwrap().unwrap();
        let checkpoint = Checkpoint::open(&dir).unwrap();
        let mut table = WeightNames::for_architecture(architecture).all(&spec);
        table.extend(
            VisionTensor::all(&vision)
                .into_iter()
                .map(|t| (t.name(), t.shape(&vision))),
        );
        let mut names: Vec<&str> = table.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, checkpoint.names(), "{fixture}: table vs checkpoint names");
        for (name, shape) in &table {
            assert_eq!(&checkpoint.info(name).unwrap().shape, shape, "{fixture}: {name}");
        }
        assert_eq!(
            vision.tokens_per_tile() as u64,
            meta(fixture)["tokens_per_tile"].as_u64().unwrap(),
            "{fixture}"
        );
        assert_eq!(
            vision.param_count(),
            VisionTensor::all(&vision)
                .iter()
                .map(|t| t.shape(&vision).iter().product::<usize>())
                .sum::<usize>()
        );
    }
}

#[test]
fn adapter_output_features_fused_embeddings_and_logits_match_hf() {
    for (&fixture, device) in FIXTURES
        .iter()
        .flat_map(|f| test_devices().into_iter().map(move |d| (f, d)))
    {
        let model = load(fixture, device);
        let name = |what: &str| format!("{fixture} ({device}) {what}");
        let ids = expected(fixture, "input_ids");
        let pixel_values = expected(fixture, "pixel_values");
        let vision = model.vision().expect("a multimodal fixture has a vision tower");
        let out = vision.forward(&pixel_values).unwrap();
        check(
            &name("vision_adapter_output"),
            &out.adapter_output,
            &expected(fixture, "vision_adapter_output"),
            parity_tolerance(fixture, "vision_adapter_output"),
        );
        check(
            &name("projected_features"),
            &out.features,
            &expected(fixture, "projected_features"),
            parity_tolerance(fixture, "projected_features"),
        );
        let embeddings = model.embed_with_images(&ids, Some(&pixel_values)).unwrap();
        check(
            &name("inputs_embeds"),
            &embeddings,
            &expected(fixture, "inputs_embeds"),
            parity_tolerance(fixture, "inputs_embeds"),
        );
        let mut cache = model.new_cache();
        let logits = model
            .forward_embeddings(&embeddings, &mut cache, Capture::default())
            .unwrap()
            .logits;
        check(
            &name("logits"),
            &logits,
            &expected(fixture, "logits"),
            parity_tolerance(fixture, "logits"),
        );
    }
}

#[test]
fn greedy_decoding_with_images_matches_hf_ids_and_step_logits() {
    for (&fixture, device) in FIXTURES
        .iter()
        .flat_map(|f| test_devices().into_iter().map(move |d| (f, d)))
    {
        let model = load(fixture, device);
        let ids = expected(fixture, "input_ids");
        let pixel_values = expected(fixture, "pixel_values");
        let want = expected(fixture, "greedy_ids");
        let n = want.shape()[1];
        let options = GreedyOptions {
            max_new_tokens: n,
            stop_ids: vec![],
        };
        let got = greedy_with_images(&model, &ids, Some(&pixel_values), &options, |_| {}).unwrap();
        assert_eq!(
            got.to_vec::<i64>().unwrap(),
            want.to_vec::<i64>().unwrap(),
            "{fixture} ({device}): greedy ids"
        );

        // Teacher-forced through the cache: step k sees the prompt (images fused) and HF's
        // first k ids.
        let mut cache = model.new_cache();
        let prefill = model.embed_with_images(&ids, Some(&pixel_values)).unwrap();
        let t = ids.shape()[1];
        let logits = model
            .forward_embeddings(&prefill, &mut cache, Capture::default())
            .unwrap()
            .logits;
        let mut steps = vec![logits.narrow(1, t - 1, 1).unwrap()];
        for k in 0..n - 1 {
            let next = want.narrow(1, k, 1).unwrap().contiguous().unwrap();
            steps.push(model.forward(&next, &mut cache, Capture::default()).unwrap().logits);
        }
        let steps = ops::cat(&steps.iter().collect::<Vec<_>>(), 1).unwrap();
        check(
            &format!("{fixture} ({device}) greedy_logits (cached decode)"),
            &steps,
            &expected(fixture, "greedy_logits"),
            parity_tolerance(fixture, "logits"),
        );
    }
}

/// HF's processor on each fixture image: our pixel values must be identical (the resampling is
/// integer arithmetic and the normalisation a fixed chain of bf16 roundings, so there is no
/// rounding freedom to allow for), and the prompt, expanded with the image's layout and
/// tokenized with the fixture's tokenizer.json, must give HF's ids.
#[test]
fn preprocessing_and_token_layout_match_hfs_processor() {
    for &fixture in FIXTURES {
        let dir = fixture_dir(fixture);
        let (spec, _) = loader::resolve(dir.to_str().unwrap()).unwrap();
        let vision = loader::resolve_vision(dir.to_str().unwrap(), &spec).unwrap().unwrap();
        let config = PreprocessConfig::for_model_dir(&dir, &vision).unwrap();
        assert_eq!(
            config.max_tiles as u64,
            meta(fixture)["max_patches"].as_u64().unwrap(),
            "{fixture}: preprocessor_config.json"
        );
        let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        let cases = meta(fixture)["processor_cases"].as_array().unwrap().clone();
        assert!(!cases.is_empty());
        for (i, case) in cases.iter().enumerate() {
            let file = case["image"].as_str().unwrap();
            let context = format!("{fixture} {file}");
            let image = read_image(&dir.join(file)).unwrap();
            let tiles = preprocess(&image, &config).unwrap();
            let grid = case["tiles"].as_array().unwrap();
            assert_eq!(
                [tiles.rows as u64, tiles.cols as u64],
                [grid[0].as_u64().unwrap(), grid[1].as_u64().unwrap()],
                "{context}: tile grid"
            );
            let want = expected(fixture, &format!("processor.{i}.pixel_values"));
            check(
                &format!("{context}: pixel_values"),
                &tiles.pixel_values,
                &want,
                Tolerance::exact(),
            );

            let text = expand_prompt(
                case["prompt"].as_str().unwrap(),
                &image_text(tiles.rows, tiles.cols, vision.tokens_per_tile()),
            )
            .unwrap();
            let ids: Vec<i64> = tokenizer
                .encode(text, true)
                .unwrap()
                .get_ids()
                .iter()
                .map(|&id| i64::from(id))
                .collect();
            let want = expected(fixture, &format!("processor.{i}.input_ids"))
                .to_vec::<i64>()
                .unwrap();
            assert_eq!(ids, want, "{context}: input_ids");
        }
    }
}

#[test]
fn a_jpeg_decodes_and_preprocesses_into_one_tile() {
    // JPEG decoders differ in their IDCT and chroma upsampling, so only the shape is HF's
    // business here; the pixels are compared on PNGs.
    let dir = fixture_dir("tiny-vision-1tile");
    let (spec, _) = loader::resolve(dir.to_str().unwrap()).unwrap();
    let vision = loader::resolve_vision(dir.to_str().unwrap(), &spec).unwrap().unwrap();
    let image = read_image(&dir.join("images/photo.jpg")).unwrap();
    assert_eq!((image.width, image.height), (26, 29));
    let tiles = preprocess(&image, &PreprocessConfig::for_model_dir(&dir, &vision).unwrap()).unwrap();
    assert_eq!(tiles.pixel_values.shape(), &[1, 3, 32, 32]);
    assert!(
        tiles
            .pixel_values
            .to_f32_vec()
            .unwrap()
            .iter()
            .all(|v| (-1.0..=1.0).contains(v))
    );
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Pixel shuffle moves every value once: unshuffling gives the input back bit for bit.
    #[test]
    fn pixel_shuffle_then_its_inverse_is_the_identity(
        n in 1usize..3,
        blocks in 1usize..4,
        r in 1usize..4,
        c in 1usize..6,
        seed in any::<u64>(),
    ) {
        let g = blocks * r;
        let x = Tensor::randn(&[n, g * g, c], DType::F32, seed, Device::Cpu).unwrap();
        let shuffled = pixel_shuffle(&x, r).unwrap();
        prop_assert_eq!(shuffled.shape(), &[n, blocks * blocks, r * r * c]);
        let back = pixel_unshuffle(&shuffled, r).unwrap();
        prop_assert_eq!(back.to_vec::<f32>().unwrap(), x.to_vec::<f32>().unwrap());
    }

    /// The scatter puts feature row k on the k-th image token (batch-major) and leaves every
    /// other row as it was, bit for bit.
    #[test]
    fn features_land_exactly_on_the_image_tokens(
        b in 1usize..3,
        t in 1usize..12,
        mask_bits in any::<u32>(),
        seed in any::<u64>(),
    ) {
        let image_token = 7i64;
        let ids: Vec<i64> = (0..b * t).map(|i| if mask_bits >> (i % 32) & 1 == 1 { image_token } else { (i % 5) as i64 }).collect();
        let m = ids.iter().filter(|&&id| id == image_token).count();
        let d = 3;
        let embeddings = Tensor::randn(&[b, t, d], DType::F32, seed, Device::Cpu).unwrap();
        let features = Tensor::randn(&[m, d], DType::F32, seed ^ 1, Device::Cpu).unwrap();
        let ids_t = Tensor::from_vec(ids.clone(), &[b, t], Device::Cpu).unwrap();
        let fused = scatter_image_features(&embeddings, &ids_t, image_token, &features).unwrap().to_vec::<f32>().unwrap();
        let (emb, feat) = (embeddings.to_vec::<f32>().unwrap(), features.to_vec::<f32>().unwrap());
        let mut k = 0;
        for (row, &id) in ids.iter().enumerate() {
            let want = if id == image_token { k += 1; &feat[(k - 1) * d..k * d] } else { &emb[row * d..(row + 1) * d] };
            prop_assert_eq!(&fused[row * d..(row + 1) * d], want, "row {}", row);
        }
        // One feature row too many or too few is an error, not a silent truncation.
        let extra = Tensor::randn(&[m + 1, d], DType::F32, seed, Device::Cpu).unwrap();
        prop_assert!(scatter_image_features(&embeddings, &ids_t, image_token, &extra).is_err());
    }
}

/// The class token (the last position) has angle 0 on every pair: the 2-D RoPE leaves it
/// exactly as it is (cos 0 = 1 and sin 0 = 0 make each output `x·1 ∓ y·0`), while every patch
/// position moves.
#[test]
fn the_class_tokens_rope_is_the_identity() {
    for &fixture in FIXTURES {
        let dir = fixture_dir(fixture);
        let (spec, _) = loader::resolve(dir.to_str().unwrap()).unwrap();
        let vision = loader::resolve_vision(dir.to_str().unwrap(), &spec).unwrap().unwrap();
        let rope = Rope2d::new(&vision, DType::F32, Device::Cpu).unwrap();
        let (q, hv, dhv) = (vision.num_patches() + 1, vision.num_heads, vision.head_dim);
        let x = Tensor::randn(&[2, q, hv, dhv], DType::F32, 5, Device::Cpu).unwrap();
        let y = rope.apply(&x).unwrap();
        let (xs, ys) = (x.to_vec::<f32>().unwrap(), y.to_vec::<f32>().unwrap());
        let row = hv * dhv;
        for tile in 0..2 {
            let cls = (tile * q + q - 1) * row;
            assert_eq!(&ys[cls..cls + row], &xs[cls..cls + row], "{fixture}: class token moved");
            for patch in 0..q - 1 {
                let at = (tile * q + patch) * row;
                assert_ne!(
                    &ys[at..at + row],
                    &xs[at..at + row],
                    "{fixture}: patch {patch} did not move"
                );
            }
        }
    }
}

/// Features replace exactly the image-token rows of the real fixtures: those rows are the
/// vision path's features in order, every other row is the token embedding, bit for bit.
#[test]
fn fused_embeddings_are_the_features_on_image_tokens_and_embeddings_elsewhere() {
    for &fixture in FIXTURES {
        let model = load(fixture, Device::Cpu);
        let vision = model.vision().unwrap();
        let ids = expected(fixture, "input_ids");
        let pixel_values = expected(fixture, "pixel_values");
        let fused = model
            .embed_with_images(&ids, Some(&pixel_values))
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        let plain = model.embed(&ids).unwrap().to_vec::<f32>().unwrap();
        let features = vision.forward(&pixel_values).unwrap().features.to_vec::<f32>().unwrap();
        let d = model.spec().hidden_size;
        let mut k = 0;
        for (row, id) in ids.to_vec::<i64>().unwrap().into_iter().enumerate() {
            let got = &fused[row * d..(row + 1) * d];
            if id == vision.spec().image_token_id {
                assert_eq!(got, &features[k * d..(k + 1) * d], "{fixture}: row {row}");
                k += 1;
            } else {
                assert_eq!(got, &plain[row * d..(row + 1) * d], "{fixture}: row {row}");
            }
        }
        assert_eq!(k * d, features.len(), "{fixture}: every feature row used");
    }
}

/// A prompt without images through the multimodal checkpoint is the text model: its logits
/// and greedy ids equal, bit for bit, those of a text-only (`Llama4ForCausalLM`) checkpoint made
/// of the same language-model tensors.
#[test]
fn a_prompt_without_images_equals_the_text_only_model() {
    let fixture = "tiny-vision-tiles";
    let dir = fixture_dir(fixture);
    let multimodal = load(fixture, Device::Cpu);

    let scratch = tempfile::tempdir().unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    std::fs::write(
        scratch.path().join("config.json"),
        serde_json::to_string(&config["text_config"]).unwrap(),
    )
    .unwrap();
    let checkpoint = Checkpoint::open(&dir).unwrap();
    let tensors: Vec<(String, Tensor)> = checkpoint
        .names()
        .into_iter()
        .filter_map(|n| {
            let renamed = n.strip_prefix("language_model.")?.to_string();
            Some((renamed, checkpoint.load(n, Device::Cpu).unwrap()))
        })
        .collect();
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save_safetensors(scratch.path().join("model.safetensors"), &refs, None).unwrap();
    let text_only = loader::load(scratch.path().to_str().unwrap(), DType::F32, Device::Cpu).unwrap();
    assert!(text_only.vision().is_none());

    let image_token = multimodal.vision().unwrap().spec().image_token_id;
    let ids: Vec<i64> = expected(fixture, "input_ids")
        .to_vec::<i64>()
        .unwrap()
        .into_iter()
        .filter(|&id| id != image_token)
        .collect();
    let t = ids.len();
    let ids = Tensor::from_vec(ids, &[1, t], Device::Cpu).unwrap();
    let logits = |model: &Llama4, embeddings: &Tensor| {
        let mut cache = model.new_cache();
        model
            .forward_embeddings(embeddings, &mut cache, Capture::default())
            .unwrap()
            .logits
            .to_vec::<f32>()
            .unwrap()
    };
    let fused = multimodal.embed_with_images(&ids, None).unwrap();
    assert_eq!(
        logits(&multimodal, &fused),
        logits(&text_only, &text_only.embed(&ids).unwrap())
    );
    let options = GreedyOptions {
        max_new_tokens: 4,
        stop_ids: vec![],
    };
    assert_eq!(
        greedy_with_images(&multimodal, &ids, None, &options, |_| {})
            .unwrap()
            .to_vec::<i64>()
            .unwrap(),
        greedy(&text_only, &ids, &options, |_| {})
            .unwrap()
            .to_vec::<i64>()
            .unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

#[test]
fn pixel_values_that_disagree_with_the_image_tokens_are_errors() {
    let fixture = "tiny-vision-tiles";
    let model = load(fixture, Device::Cpu);
    let ids = expected(fixture, "input_ids");
    let pixel_values = expected(fixture, "pixel_values"); // [7, 3, 28, 28]
    let six_tiles = pixel_values.narrow(0, 0, 6).unwrap().contiguous().unwrap();
    let err = model.embed_with_images(&ids, Some(&six_tiles)).unwrap_err().to_string();
    assert!(err.contains("6 tiles") && err.contains("28 image tokens"), "{err}");

    let wrong_size = Tensor::zeros(&[7, 3, 32, 32], DType::F32, Device::Cpu).unwrap();
    let err = model
        .embed_with_images(&ids, Some(&wrong_size))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pixel_values") && err.contains("[tiles, 3, 28, 28]"),
        "{err}"
    );

    let text_only = loader::load(fixture_dir("tiny-scout").to_str().unwrap(), DType::F32, Device::Cpu).unwrap();
    let ids = Tensor::from_vec(vec![1i64, 2, 3], &[1, 3], Device::Cpu).unwrap();
    let err = text_only
        .embed_with_images(&ids, Some(&pixel_values))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no vision encoder"), "{err}");
}

#[test]
fn unreadable_and_empty_image_files_are_errors_naming_the_file() {
    let scratch = tempfile::tempdir().unwrap();
    let garbage = scratch.path().join("garbage.png");
    std::fs::write(&garbage, b"not an image at all").unwrap();
    let missing = scratch.path().join("missing.png");
    let empty = scratch.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    for path in [&garbage, &missing, &empty] {
        let err = read_image(path).unwrap_err().to_string();
        let file = path.file_name().unwrap().to_str().unwrap();
        assert!(err.contains(file), "{err}");
    }
}
