//! `l4 plan --plot`: memory (weights plus KV cache) against context on log-log axes, iRoPE
//! beside all-global attention, with the GPU memory as a dashed line. The SVG is drawn in memory
//! and written to a temporary file beside the target, then renamed, so a failure never leaves a
//! partial file.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use plotters::prelude::*;

use super::budget::GIB;
use super::{Plan, Scheme};

/// The plot's context axis starts at 1K tokens and reaches at least Scout's 10M (10 × 2²⁰).
const FIRST_CONTEXT: u64 = 1 << 10;
const LAST_CONTEXT: u64 = 10 << 20;

/// Points per line, spaced evenly in log(context), plus every chunk boundary (the kinks).
const POINTS: usize = 160;

/// Fails unless `path` names an `.svg` file in an existing folder.
pub fn check_path(path: &Path) -> Result<()> {
    let is_svg = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    if !is_svg {
        bail!("--plot {}: must name an .svg file", path.display());
    }
    if path.is_dir() {
        bail!("--plot {}: is a folder", path.display());
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        bail!(
            "--plot {}: the folder {} does not exist",
            path.display(),
            parent.display()
        );
    }
    Ok(())
}

/// The contexts sampled: log-spaced from 1K to the end, plus the chunk sizes inside the range.
fn contexts(plan: &Plan) -> Vec<u64> {
    let last = LAST_CONTEXT.max(plan.options.context);
    let (lo, hi) = ((FIRST_CONTEXT as f64).ln(), (last as f64).ln());
    let mut points: Vec<u64> = (0..POINTS)
        .map(|i| (lo + (hi - lo) * i as f64 / (POINTS - 1) as f64).exp().round() as u64)
        .chain(plan.kv.chunked.iter().copied())
        .chain([FIRST_CONTEXT, last, plan.options.context])
        .filter(|c| (FIRST_CONTEXT..=last).contains(c))
        .collect();
    points.sort_unstable();
    points.dedup();
    points
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB as f64
}

/// The SVG text of the plot.
pub fn svg(plan: &Plan) -> Result<String> {
    let contexts = contexts(plan);
    let (first, last) = (contexts[0] as f64, contexts[contexts.len() - 1] as f64);
    let lines: Vec<(Scheme, Vec<(f64, f64)>)> = Scheme::BOTH
        .iter()
        .map(|&scheme| {
            let points = contexts
                .iter()
                .map(|&c| (c as f64, gib(plan.total_bytes_at(scheme, c))))
                .collect();
            (scheme, points)
        })
        .collect();
    let gpu = gib(plan.options.gpu.bytes);
    let weights = gib(plan.weights.bytes());
    let values = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .chain([gpu, weights]);
    let (low, high) = values.fold((f64::INFINITY, 0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (low, high) = ((low * 0.7).max(f64::MIN_POSITIVE), high * 1.5);

    let o = &plan.options;
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (900, 560)).into_drawing_area();
        let draw_error = |e: &dyn std::fmt::Display| anyhow!("drawing the plot: {e}");
        root.fill(&WHITE).map_err(|e| draw_error(&e))?;
        let caption = format!(
            "{}: weights + KV cache ({}, --fp8 {}, batch {})",
            o.model, o.dtype, o.fp8, o.batch
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .margin_right(36)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d((first..last).log_scale(), (low..high).log_scale())
            .map_err(|e| draw_error(&e))?;
        chart
            .configure_mesh()
            .x_desc("context (tokens per sequence)")
            .y_desc("memory (GiB)")
            .x_label_formatter(&|x| context_label(*x))
            .y_label_formatter(&|y| gib_label(*y))
            .light_line_style(RGBColor(238, 238, 238))
            .draw()
            .map_err(|e| draw_error(&e))?;
        let colours = [RGBColor(33, 102, 172), RGBColor(178, 24, 43)];
        for ((scheme, points), colour) in lines.into_iter().zip(colours) {
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(|e| draw_error(&e))?
                .label(scheme.name())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(2)));
        }
        let grey = RGBColor(120, 120, 120);
        chart
            .draw_series(LineSeries::new(
                [(first, weights), (last, weights)],
                grey.stroke_width(1),
            ))
            .map_err(|e| draw_error(&e))?
            .label("weights alone")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], grey.stroke_width(1)));
        chart
            .draw_series(DashedLineSeries::new(
                [(first, gpu), (last, gpu)],
                8,
                5,
                BLACK.stroke_width(2),
            ))
            .map_err(|e| draw_error(&e))?
            .label(format!("GPU memory: {}", o.gpu.name))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], BLACK.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| draw_error(&e))?;
        root.present().map_err(|e| draw_error(&e))?;
    }
    Ok(text)
}

/// A context tick as a whole number with thousands separators.
fn context_label(tokens: f64) -> String {
    super::grouped(tokens.round() as u64)
}

/// A memory tick with as many decimals as its size needs.
fn gib_label(gib: f64) -> String {
    match gib {
        g if g >= 10.0 => format!("{g:.0}"),
        g if g >= 0.1 => format!("{g:.2}"),
        g => format!("{g:.2e}"),
    }
}

/// Draws the plot and writes it to `path` through a temporary file renamed into place.
pub fn write_svg(path: &Path, plan: &Plan) -> Result<()> {
    check_path(path)?;
    let text = svg(plan).with_context(|| format!("--plot {}", path.display()))?;
    write_atomically(path, text.as_bytes())
}

/// Writes `bytes` to a hidden temporary sibling of `path`, then renames it over `path`; the
/// temporary file is removed if anything fails.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("--plot {}: names no file", path.display()))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".tmp{}", std::process::id()));
    let temp: PathBuf = path.with_file_name(temp_name);
    let written = fs::write(&temp, bytes).and_then(|()| fs::rename(&temp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(anyhow!("--plot {}: cannot write: {e}", path.display()));
    }
    Ok(())
}
