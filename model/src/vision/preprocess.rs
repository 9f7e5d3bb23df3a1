//! Image preprocessing (llama4-spec.md §5.1), as HF's `Llama4ImageProcessor` does it: choose a
//! canvas of whole tiles, resize without distortion, pad, normalise in bf16, cut into tiles, and
//! add a distorted global tile when there is more than one.
//!
//! 1. Canvases: for `n = max_tiles..=1`, every `rows × cols = n`, grouped by aspect ratio in
//!    first-seen order.
//! 2. Per canvas `scale = min(canvas_h / H, canvas_w / W)` (in f32, as HF's tensors compute it).
//!    The smallest scale ≥ 1 wins (the largest with `resize_to_max_canvas`), else the largest
//!    one below 1; among canvases with that exact scale, the smallest area (first on ties).
//! 3. Upscaling stops at the tile size: the target is `(min(max(H, tile), canvas_h),
//!    min(max(W, tile), canvas_w))` (the canvas itself with `resize_to_max_canvas`).
//! 4. The image is resized to the largest aspect-preserving size within the target (at least 1
//!    pixel a side), with [`super::resize::resize_rgb`], and padded bottom and right with black.
//! 5. Each byte `x` becomes `bf16(bf16(bf16(bf16(x)·f32(1/255)) − bf16(mean)) / bf16(std))`:
//!    HF normalises in bf16 "as in the original implementation", one rounding per operation
//!    (padding becomes −1.0 with Llama 4's mean = std = 0.5).
//! 6. Tiles are taken row-major; with more than one, the whole image resized to one tile (its
//!    aspect ratio not kept) is appended as the global tile.

use std::path::Path;

use l4_core::{DType, Device, Error, Result, Tensor, bf16};

use super::image_file::RgbImage;
use super::resize::resize_rgb;
use super::spec::VisionSpec;
use crate::hf_config::HfPreprocessorConfig;

/// What the image processor does, resolved from `preprocessor_config.json` and the vision spec.
#[derive(Clone, Debug, PartialEq)]
pub struct PreprocessConfig {
    /// Tile side in pixels (the encoder's `image_size`).
    pub tile: usize,
    /// Most tiles an image is cut into (the global tile not counted).
    pub max_tiles: usize,
    /// Upscale to the largest fitting canvas instead of the smallest.
    pub resize_to_max_canvas: bool,
    /// Multiplies the bytes before normalising (1/255).
    pub rescale_factor: f64,
    /// Per-channel mean subtracted after rescaling.
    pub mean: [f64; 3],
    /// Per-channel standard deviation divided by last.
    pub std: [f64; 3],
}

/// An image as the vision encoder takes it.
#[derive(Clone, Debug)]
pub struct Tiles {
    /// `[n, 3, px, px]` F32 on the CPU (bf16 values): the tiles row-major, then the global tile
    /// when `rows · cols > 1`.
    pub pixel_values: Tensor,
    /// Tile rows of the canvas.
    pub rows: usize,
    /// Tile columns of the canvas.
    pub cols: usize,
}

fn field_error(path: &Path, field: &str, msg: impl std::fmt::Display) -> Error {
    Error::file(path, format!("field `{field}`: {msg}"))
}

fn three(path: &Path, field: &str, values: Option<&Vec<f64>>) -> Result<[f64; 3]> {
    match values.map(Vec::as_slice) {
        None => Ok([0.5; 3]),
        Some(&[a, b, c]) => Ok([a, b, c]),
        Some(other) => Err(field_error(
            path,
            field,
            format!("needs 3 values (RGB), got {}", other.len()),
        )),
    }
}

impl PreprocessConfig {
    /// HF's `Llama4ImageProcessor` defaults with the tile size of `spec`.
    pub fn defaults(spec: &VisionSpec) -> Self {
        PreprocessConfig {
            tile: spec.image_size,
            max_tiles: 16,
            resize_to_max_canvas: false,
            rescale_factor: 1.0 / 255.0,
            mean: [0.5; 3],
            std: [0.5; 3],
        }
    }

    /// From a parsed `preprocessor_config.json` (`path` names it in errors), checked against the
    /// encoder it feeds.
    pub fn from_hf(cfg: &HfPreprocessorConfig, spec: &VisionSpec, path: &Path) -> Result<Self> {
        let defaults = PreprocessConfig::defaults(spec);
        if let Some(size) = &cfg.size {
            let (h, w) = (
                size.height.unwrap_or(spec.image_size),
                size.width.unwrap_or(spec.image_size),
            );
            if (h, w) != (spec.image_size, spec.image_size) {
                return Err(field_error(
                    path,
                    "size",
                    format!(
                        "{h}x{w} tiles, but the vision encoder takes {0}x{0} (config.json image_size)",
                        spec.image_size
                    ),
                ));
            }
        }
        let flags = [
            ("do_resize", cfg.do_resize),
            ("do_rescale", cfg.do_rescale),
            ("do_normalize", cfg.do_normalize),
            ("do_convert_rgb", cfg.do_convert_rgb),
        ];
        if let Some((field, _)) = flags.iter().find(|(_, v)| *v == Some(false)) {
            return Err(field_error(
                path,
                field,
                "false is not supported (l4 preprocesses as Llama 4's released processor)",
            ));
        }
        if let Some(resample) = cfg.resample
            && resample != 2
        {
            return Err(field_error(
                path,
                "resample",
                format!("{resample} is not supported (2, bilinear, is Llama 4's)"),
            ));
        }
        let max_tiles = cfg.max_patches.unwrap_or(defaults.max_tiles);
        if max_tiles == 0 {
            return Err(field_error(path, "max_patches", "must be positive"));
        }
        let rescale_factor = cfg.rescale_factor.unwrap_or(defaults.rescale_factor);
        let std = three(path, "image_std", cfg.image_std.as_ref())?;
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(rescale_factor) || !std.iter().all(|&s| positive(s)) {
            return Err(field_error(
                path,
                "image_std",
                "image_std and rescale_factor must be positive",
            ));
        }
        Ok(PreprocessConfig {
            max_tiles,
            resize_to_max_canvas: cfg.resize_to_max_canvas.unwrap_or(false),
            rescale_factor,
            mean: three(path, "image_mean", cfg.image_mean.as_ref())?,
            std,
            ..defaults
        })
    }

    /// For the model folder `dir`: its `preprocessor_config.json` when there is one, HF's
    /// defaults otherwise.
    pub fn for_model_dir(dir: &Path, spec: &VisionSpec) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        if !path.is_file() {
            return Ok(PreprocessConfig::defaults(spec));
        }
        PreprocessConfig::from_hf(&HfPreprocessorConfig::read(&path)?, spec, &path)
    }
}

/// Step 1: `(rows, cols)` canvases in HF's order.
pub fn canvases(max_tiles: usize) -> Vec<(usize, usize)> {
    let mut groups: Vec<(f64, Vec<(usize, usize)>)> = Vec::new();
    for n in (1..=max_tiles).rev() {
        for rows in (1..=n).filter(|r| n % r == 0) {
            let (cols, ratio) = (n / rows, rows as f64 / (n / rows) as f64);
            match groups.iter_mut().find(|(r, _)| *r == ratio) {
                Some((_, list)) => list.push((rows, cols)),
                None => groups.push((ratio, vec![(rows, cols)])),
            }
        }
    }
    groups.into_iter().flat_map(|(_, list)| list).collect()
}

/// Step 2: the canvas `(rows, cols)` for an image of `height × width`.
fn best_canvas(height: usize, width: usize, cfg: &PreprocessConfig) -> (usize, usize) {
    let options = canvases(cfg.max_tiles);
    let scales: Vec<f32> = options
        .iter()
        .map(|&(rows, cols)| {
            let scale_h = (rows * cfg.tile) as f32 / height as f32;
            let scale_w = (cols * cfg.tile) as f32 / width as f32;
            if scale_h > scale_w { scale_w } else { scale_h }
        })
        .collect();
    let up = scales.iter().copied().filter(|&s| s >= 1.0);
    let chosen = match (up.clone().next(), cfg.resize_to_max_canvas) {
        (Some(_), false) => up.fold(f32::INFINITY, f32::min),
        (Some(_), true) => up.fold(f32::NEG_INFINITY, f32::max),
        (None, _) => scales.iter().copied().fold(f32::NEG_INFINITY, f32::max),
    };
    options
        .iter()
        .zip(&scales)
        .filter(|&(_, &s)| s == chosen)
        .map(|(&canvas, _)| canvas)
        .fold(None, |best: Option<(usize, usize)>, c| match best {
            Some(b) if b.0 * b.1 <= c.0 * c.1 => Some(b),
            _ => Some(c),
        })
        .unwrap_or((1, 1))
}

/// Step 4: the largest size within `target` with the image's aspect ratio (HF's
/// `get_max_res_without_distortion`, in f64 as Python computes it).
fn size_without_distortion(height: usize, width: usize, target: (usize, usize)) -> (usize, usize) {
    let (th, tw) = target;
    let scale_w = tw as f64 / width as f64;
    let scale_h = th as f64 / height as f64;
    let (h, w) = if scale_w < scale_h {
        (((height as f64 * scale_w).floor() as usize).min(th), tw)
    } else {
        (th, ((width as f64 * scale_h).floor() as usize).min(tw))
    };
    (h.max(1), w.max(1))
}

/// Step 5, for every byte value of every channel.
fn normalisation_table(cfg: &PreprocessConfig) -> [[f32; 256]; 3] {
    let round = |x: f32| bf16::from_f32(x).to_f32();
    let scale = cfg.rescale_factor as f32;
    let mut table = [[0.0; 256]; 3];
    for (c, row) in table.iter_mut().enumerate() {
        let (mean, std) = (round(cfg.mean[c] as f32), round(cfg.std[c] as f32));
        for (x, v) in row.iter_mut().enumerate() {
            let rescaled = round(round(x as f32) * scale);
            *v = round(round(rescaled - mean) / std);
        }
    }
    table
}

/// The `h × w` RGB `pixels` as normalised channel planes `[3, canvas_h, canvas_w]`, padded
/// bottom and right with byte 0.
fn normalised_planes(pixels: &[u8], h: usize, w: usize, canvas: (usize, usize), table: &[[f32; 256]; 3]) -> Vec<f32> {
    let (ch, cw) = canvas;
    let mut planes = vec![0.0f32; 3 * ch * cw];
    for (c, plane) in planes.chunks_mut(ch * cw).enumerate() {
        for y in 0..ch {
            for x in 0..cw {
                let byte = if y < h && x < w { pixels[(y * w + x) * 3 + c] } else { 0 };
                plane[y * cw + x] = table[c][usize::from(byte)];
            }
        }
    }
    planes
}

/// Preprocesses `image` into tiles for an encoder of `cfg.tile`-pixel tiles.
pub fn preprocess(image: &RgbImage, cfg: &PreprocessConfig) -> Result<Tiles> {
    let (height, width, tile) = (image.height, image.width, cfg.tile);
    if height == 0 || width == 0 || image.pixels.len() != height * width * 3 {
        return Err(Error::invalid(
            "image preprocessing",
            format!(
                "an image of {width}x{height} pixels with {} bytes of RGB",
                image.pixels.len()
            ),
        ));
    }
    let (rows, cols) = best_canvas(height, width, cfg);
    let canvas = (rows * tile, cols * tile);
    let target = match cfg.resize_to_max_canvas {
        true => canvas,
        false => (height.max(tile).min(canvas.0), width.max(tile).min(canvas.1)),
    };
    let (new_h, new_w) = size_without_distortion(height, width, target);
    let resized = resize_rgb(&image.pixels, height, width, new_h, new_w);
    let table = normalisation_table(cfg);
    let planes = normalised_planes(&resized, new_h, new_w, canvas, &table); // [3, rows·px, cols·px]
    let planes = Tensor::from_vec(planes, &[3, rows, tile, cols, tile], Device::Cpu)?;
    // Row-major tiles: [rows, cols, 3, px, px].
    let mut tiles = planes
        .permute(&[1, 3, 0, 2, 4])?
        .contiguous()?
        .reshape(&[rows * cols, 3, tile, tile])?;
    if rows * cols > 1 {
        let global = resize_rgb(&image.pixels, height, width, tile, tile);
        let global = normalised_planes(&global, tile, tile, (tile, tile), &table);
        let global = Tensor::from_vec(global, &[1, 3, tile, tile], Device::Cpu)?;
        tiles = l4_kernels::ops::cat(&[&tiles, &global], 0)?;
    }
    debug_assert_eq!(tiles.dtype(), DType::F32);
    Ok(Tiles {
        pixel_values: tiles,
        rows,
        cols,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_tiles: usize) -> PreprocessConfig {
        PreprocessConfig {
            tile: 336,
            max_tiles,
            resize_to_max_canvas: false,
            rescale_factor: 1.0 / 255.0,
            mean: [0.5; 3],
            std: [0.5; 3],
        }
    }

    #[test]
    fn canvases_are_grouped_by_aspect_ratio_in_first_seen_order() {
        // HF's docstring example for 4 chunks: ratios 0.25, 1.0, 4.0, 0.33, 3.0, 0.5, 2.0.
        assert_eq!(
            canvases(4),
            vec![(1, 4), (2, 2), (1, 1), (4, 1), (1, 3), (3, 1), (1, 2), (2, 1)]
        );
    }

    #[test]
    fn canvas_choice_follows_hfs_examples() {
        // Upscaling possible: the smallest upscale, then the smallest area.
        assert_eq!(best_canvas(200, 300, &cfg(16)), (1, 1));
        // A wide image bigger than one tile: no upscale fits the width, so the largest
        // downscale, on the widest canvases.
        assert_eq!(best_canvas(336, 3000, &cfg(4)), (1, 4));
        // Exactly two tiles tall.
        assert_eq!(best_canvas(672, 336, &cfg(16)), (2, 1));
    }

    #[test]
    fn sizes_keep_the_aspect_ratio_within_the_target() {
        // HF's docstring examples, with the floor its code takes (the docstring rounds).
        assert_eq!(size_without_distortion(200, 300, (450, 200)), (133, 200));
        assert_eq!(size_without_distortion(800, 600, (450, 1300)), (450, 337));
        assert_eq!(size_without_distortion(1, 5000, (336, 336)), (1, 336));
    }

    #[test]
    fn normalisation_maps_black_to_minus_one_and_white_to_one() {
        let table = normalisation_table(&cfg(1));
        assert_eq!((table[0][0], table[2][255]), (-1.0, 1.0));
        assert!(table[1].windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn zero_size_images_are_errors() {
        let empty = RgbImage {
            width: 0,
            height: 5,
            pixels: vec![],
        };
        let err = preprocess(&empty, &cfg(4)).unwrap_err().to_string();
        assert!(err.contains("0x5"), "{err}");
    }
}
