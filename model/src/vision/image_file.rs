//! Reading an image file into 8-bit RGB, as HF's image processor sees it: PNG and JPEG through
//! the `image` crate; an image with transparency (an alpha channel, or a PNG `tRNS` chunk) is
//! composited onto white with Pillow's integer `alpha_composite`, as transformers'
//! `convert_to_rgb` does; grayscale is replicated into the three channels.

use std::path::Path;

use l4_core::{Error, Result};

/// A decoded image: `height × width` pixels, row-major, `[r, g, b]` interleaved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    /// Pixels per row.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `height · width · 3` bytes.
    pub pixels: Vec<u8>,
}

/// Pillow's `ImagingAlphaComposite` of `[r, g, b, a]` over opaque white, in its integer
/// arithmetic (7 extra bits of precision, rounded divisions by 255).
fn over_white(rgba: [u8; 4]) -> [u8; 3] {
    const PRECISION_BITS: u32 = 7;
    let shift_div_255 = |a: u32| ((a >> 8) + a) >> 8;
    let [r, g, b, a] = rgba.map(u32::from);
    if a == 0 {
        return [255; 3];
    }
    let blend = 255 * (255 - a);
    let out_a255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / out_a255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    [r, g, b].map(|c| (shift_div_255(c * coef1 + 255 * coef2 + (0x80 << PRECISION_BITS)) >> PRECISION_BITS) as u8)
}

/// `image` as HF's RGB conversion leaves it.
pub fn to_rgb(image: image::DynamicImage) -> RgbImage {
    let (width, height) = (image.width() as usize, image.height() as usize);
    let pixels = if image.color().has_alpha() {
        image.into_rgba8().pixels().flat_map(|p| over_white(p.0)).collect()
    } else {
        image.into_rgb8().into_raw()
    };
    RgbImage { width, height, pixels }
}

/// Decodes the PNG or JPEG file at `path`. Errors name the file: unreadable, not an image in
/// a supported format, corrupt, or of zero size.
pub fn read_image(path: &Path) -> Result<RgbImage> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| Error::file(path, format!("cannot read the image: {e}")))?
        .with_guessed_format()
        .map_err(|e| Error::file(path, format!("cannot read the image: {e}")))?;
    let image = reader
        .decode()
        .map_err(|e| Error::file(path, format!("cannot decode the image (PNG or JPEG): {e}")))?;
    let rgb = to_rgb(image);
    if rgb.width == 0 || rgb.height == 0 {
        return Err(Error::file(
            path,
            format!("the image has zero size ({}x{})", rgb.width, rgb.height),
        ));
    }
    Ok(rgb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compositing_over_white_keeps_opaque_pixels_and_whitens_transparent_ones() {
        assert_eq!(over_white([10, 20, 30, 255]), [10, 20, 30]);
        assert_eq!(over_white([10, 20, 30, 0]), [255, 255, 255]);
        // Half transparent black: about half way to white.
        let [r, g, b] = over_white([0, 0, 0, 128]);
        assert!(r == g && g == b && (126..=128).contains(&r), "{r}");
    }
}
