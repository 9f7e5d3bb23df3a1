//! The token layout of an image in the prompt (llama4-spec.md §5.2), as HF's `Llama4Processor`
//! expands each `<|image|>` placeholder of the text:
//!
//! * one tile: `<|image_start|> <|image|> <|patch|>×tv <|image_end|>`;
//! * `h × w` tiles: `<|image_start|>`, then per row, per column, `<|patch|>×tv` followed by
//!   `<|tile_x_separator|>` except after the last column, and `<|tile_y_separator|>` after each
//!   row; then `<|image|> <|patch|>×tv` for the global tile, and `<|image_end|>`.
//!
//! Only the `<|patch|>` tokens receive image features; the others keep their text embeddings.

use l4_core::{Error, Result};

/// The placeholder a prompt marks its image with, and the token before the global tile.
pub const IMAGE: &str = "<|image|>";
/// Opens an image.
pub const IMAGE_START: &str = "<|image_start|>";
/// Closes an image.
pub const IMAGE_END: &str = "<|image_end|>";
/// One feature token.
pub const PATCH: &str = "<|patch|>";
/// Between two tiles of a row.
pub const TILE_X_SEPARATOR: &str = "<|tile_x_separator|>";
/// After each row of tiles.
pub const TILE_Y_SEPARATOR: &str = "<|tile_y_separator|>";

/// The text standing for one image cut into `tiles_h × tiles_w` tiles (and a global tile when
/// there is more than one) of `tokens_per_tile` feature tokens each.
pub fn image_text(tiles_h: usize, tiles_w: usize, tokens_per_tile: usize) -> String {
    let patches = PATCH.repeat(tokens_per_tile);
    let mut text = String::from(IMAGE_START);
    if tiles_h * tiles_w > 1 {
        for _ in 0..tiles_h {
            for col in 0..tiles_w {
                text.push_str(&patches);
                if col + 1 < tiles_w {
                    text.push_str(TILE_X_SEPARATOR);
                }
            }
            text.push_str(TILE_Y_SEPARATOR);
        }
    }
    text.push_str(IMAGE);
    text.push_str(&patches);
    text.push_str(IMAGE_END);
    text
}

/// `prompt` with its `<|image|>` placeholder replaced by `image` (from [`image_text`]). A prompt
/// without a placeholder gets the image before its text, where a chat template puts an image
/// that comes first in a message. More than one placeholder for one image is an error.
pub fn expand_prompt(prompt: &str, image: &str) -> Result<String> {
    match prompt.matches(IMAGE).count() {
        0 => Ok(format!("{image}{prompt}")),
        1 => Ok(prompt.replacen(IMAGE, image, 1)),
        n => Err(Error::invalid(
            "prompt",
            format!("the prompt holds {n} {IMAGE} placeholders for one image"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_tile_has_no_separators_and_no_global_tile() {
        assert_eq!(
            image_text(1, 1, 2),
            "<|image_start|><|image|><|patch|><|patch|><|image_end|>"
        );
    }

    #[test]
    fn tiles_go_row_major_with_separators_then_the_global_tile() {
        let p = PATCH;
        let want = format!(
            "<|image_start|>{p}<|tile_x_separator|>{p}<|tile_x_separator|>{p}<|tile_y_separator|>\
             {p}<|tile_x_separator|>{p}<|tile_x_separator|>{p}<|tile_y_separator|><|image|>{p}<|image_end|>"
        );
        assert_eq!(image_text(2, 3, 1), want);
    }

    #[test]
    fn the_placeholder_is_replaced_once_or_the_image_goes_first() {
        assert_eq!(expand_prompt("a <|image|> b", "[I]").unwrap(), "a [I] b");
        assert_eq!(expand_prompt("a b", "[I]").unwrap(), "[I]a b");
        let err = expand_prompt("<|image|><|image|>", "[I]").unwrap_err().to_string();
        assert!(err.contains("2 <|image|> placeholders"), "{err}");
    }
}
