//! The results folder: `resolved.toml` (what ran), `metrics.jsonl` (one line per variant and
//! metric), `summary.csv` (one row per variant) and `plots/`. Everything is written into a
//! hidden sibling folder that is renamed into place only when the run has finished, so a failed
//! or interrupted run leaves no partial results, and an existing folder is replaced only when
//! the user asks (`--force`).

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::metrics::VariantMetrics;
use super::resolve::ResolvedSettings;

/// A results folder being written.
#[derive(Debug)]
pub struct Staging {
    target: PathBuf,
    staging: PathBuf,
    /// The outermost parent folder this run created, removed again if the run fails.
    created_parent: Option<PathBuf>,
    force: bool,
    committed: bool,
}

impl Staging {
    /// Starts writing the results folder `target`: fails if it exists (unless `force`) before
    /// anything runs, and creates the hidden sibling folder that [`Staging::commit`] renames.
    pub fn new(target: &Path, force: bool) -> Result<Staging> {
        if target.exists() && !force {
            bail!(
                "{}: already exists; pass --force to replace it, or --out another folder",
                target.display()
            );
        }
        if target.exists() && !target.is_dir() {
            bail!("{}: exists and is not a folder", target.display());
        }
        let name = target
            .file_name()
            .ok_or_else(|| anyhow!("{}: not a folder name", target.display()))?
            .to_string_lossy()
            .into_owned();
        let parent = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let created_parent = parent
            .ancestors()
            .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
            .last();
        let created_parent = created_parent.map(Path::to_path_buf);
        fs::create_dir_all(parent).with_context(|| format!("{}: cannot create the folder", parent.display()))?;
        let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
        let this = Staging {
            target: target.to_path_buf(),
            staging,
            created_parent,
            force,
            committed: false,
        };
        if this.staging.exists() {
            fs::remove_dir_all(&this.staging).with_context(|| format!("{}: cannot remove", this.staging.display()))?;
        }
        fs::create_dir(&this.staging)
            .with_context(|| format!("{}: cannot create the folder", this.staging.display()))?;
        Ok(this)
    }

    /// Where to write now.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// The folder the results will have once committed.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Moves the finished results into place (replacing the old folder under `--force`).
    pub fn commit(mut self) -> Result<PathBuf> {
        if self.target.exists() {
            if !self.force {
                bail!(
                    "{}: appeared while the ablation ran; the results are not written (pass --force to replace it)",
                    self.target.display()
                );
            }
            // Moved aside first, so the target is never half old and half new.
            let old = self.staging.with_extension("old");
            fs::rename(&self.target, &old).with_context(|| format!("{}: cannot replace", self.target.display()))?;
            fs::rename(&self.staging, &self.target)
                .with_context(|| format!("{}: cannot move the results into place", self.target.display()))?;
            fs::remove_dir_all(&old).with_context(|| format!("{}: cannot remove", old.display()))?;
        } else {
            fs::rename(&self.staging, &self.target)
                .with_context(|| format!("{}: cannot move the results into place", self.target.display()))?;
        }
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for Staging {
    /// A run that did not finish leaves nothing behind.
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.staging);
            // Only folders this run made and left empty: `remove_dir` refuses any other.
            if let Some(created) = &self.created_parent {
                for folder in self.staging.ancestors().skip(1) {
                    if fs::remove_dir(folder).is_err() || folder == created {
                        break;
                    }
                }
            }
        }
    }
}

/// The evaluation input, as resolved.toml records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolvedEval {
    /// `random`, `tokens` or `text`.
    pub source: String,
    /// The token or text file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The tokenizer of a text file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// The seed of random prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Sequences.
    pub prompts: usize,
    /// Tokens per sequence.
    pub prompt_len: usize,
    /// Greedy steps timed.
    pub decode_tokens: usize,
    /// Timed prefill repeats.
    pub repeats: usize,
    /// Whether perplexity is reported (real text on real weights).
    pub perplexity: bool,
}

/// One variant in resolved.toml.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolvedVariant {
    /// `base` or the variant's name.
    pub name: String,
    /// What it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Short hash of `settings`: equal hashes, equal runs.
    pub hash: String,
    /// Every option that determines its numbers.
    pub settings: ResolvedSettings,
}

/// resolved.toml: the run's environment and every variant's full settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolvedRun {
    /// The ablation's name.
    pub ablation: String,
    /// The ablation file.
    pub file: String,
    /// What it asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// l4lab's version.
    pub l4lab_version: String,
    /// `git rev-parse HEAD` where the run started, when it is a git checkout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_revision: Option<String>,
    /// Whether tracked files differed from that revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_dirty: Option<bool>,
    /// The device, as given (`cpu`, `cuda:0`).
    pub device: String,
    /// What it is (CPU threads, GPU name).
    pub device_name: String,
    /// The seed of a preset's random weights (absent for checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_seed: Option<u64>,
    /// How peak memory was measured.
    pub peak_memory: String,
    /// The prompts.
    pub eval: ResolvedEval,
    /// The base first, then the variants.
    pub variants: Vec<ResolvedVariant>,
}

/// `git rev-parse HEAD` and whether tracked files are modified, in the current folder; `None`
/// without git or outside a checkout.
pub fn git_state() -> (Option<String>, Option<bool>) {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let revision = run(&["rev-parse", "HEAD"]).filter(|r| !r.is_empty());
    let dirty = revision
        .as_ref()
        .and_then(|_| run(&["status", "--porcelain", "--untracked-files=no"]))
        .map(|s| !s.is_empty());
    (revision, dirty)
}

/// Writes resolved.toml into `dir`.
pub fn write_resolved(dir: &Path, run: &ResolvedRun) -> Result<()> {
    let text = toml::to_string(run).context("resolved.toml")?;
    let header = "# Written by `l4 ablate`: every variant's fully resolved settings. Not an ablation file.\n";
    fs::write(dir.join("resolved.toml"), format!("{header}{text}"))
        .with_context(|| format!("{}: cannot write", dir.join("resolved.toml").display()))
}

/// One line of metrics.jsonl, its keys in this order.
#[derive(Serialize)]
struct MetricLine<'a> {
    variant: &'a str,
    metric: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    layer: Option<usize>,
    value: serde_json::Value,
}

/// metrics.jsonl, appended one variant at a time as it finishes.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    out: BufWriter<File>,
}

impl MetricsLog {
    /// Creates `dir/metrics.jsonl`.
    pub fn create(dir: &Path) -> Result<MetricsLog> {
        let path = dir.join("metrics.jsonl");
        let file = File::create(&path).with_context(|| format!("{}: cannot create", path.display()))?;
        Ok(MetricsLog {
            path,
            out: BufWriter::new(file),
        })
    }

    /// One line per metric: `{"variant", "metric", ["layer",] "value"}`.
    pub fn append(&mut self, variant: &str, metrics: &VariantMetrics) -> Result<()> {
        for entry in metrics.entries() {
            let line = MetricLine {
                variant,
                metric: entry.metric,
                layer: entry.layer,
                value: entry.value,
            };
            let text = serde_json::to_string(&line)?;
            writeln!(self.out, "{text}").with_context(|| format!("{}: cannot write", self.path.display()))?;
        }
        self.out
            .flush()
            .with_context(|| format!("{}: cannot write", self.path.display()))
    }
}

/// The summary's columns: name, what the CSV writes, what the table prints, and how.
struct Column {
    name: &'static str,
    table: Option<(&'static str, usize)>,
    value: fn(&VariantMetrics) -> Option<f64>,
    digits: usize,
}

const COLUMNS: &[Column] = &[
    Column {
        name: "kl_mean",
        table: Some(("KL mean", 10)),
        value: |m| Some(m.agreement.kl_mean),
        digits: 5,
    },
    Column {
        name: "kl_max",
        table: None,
        value: |m| Some(m.agreement.kl_max),
        digits: 5,
    },
    Column {
        name: "top1_agreement",
        table: Some(("top-1", 6)),
        value: |m| Some(m.agreement.top1),
        digits: 3,
    },
    Column {
        name: "perplexity",
        table: Some(("ppl", 8)),
        value: |m| m.perplexity,
        digits: 2,
    },
    Column {
        name: "load_max_over_mean",
        table: Some(("max/mean", 8)),
        value: |m| m.overall.as_ref().map(|o| o.max_over_mean),
        digits: 2,
    },
    Column {
        name: "load_entropy",
        table: Some(("entropy", 7)),
        value: |m| m.overall.as_ref().map(|o| o.entropy),
        digits: 3,
    },
    Column {
        name: "dropped",
        table: Some(("dropped", 7)),
        value: |m| m.overall.as_ref().map(|o| o.dropped as f64),
        digits: 0,
    },
    Column {
        name: "unrouted_tokens",
        table: None,
        value: |m| m.overall.as_ref().map(|o| o.unrouted_tokens as f64),
        digits: 0,
    },
    Column {
        name: "prefill_tokens_per_s",
        table: Some(("prefill tok/s", 13)),
        value: |m| Some(m.prefill_tokens_per_s),
        digits: 0,
    },
    Column {
        name: "decode_tokens_per_s",
        table: Some(("decode tok/s", 12)),
        value: |m| m.decode_tokens_per_s,
        digits: 1,
    },
    Column {
        name: "load_seconds",
        table: None,
        value: |m| Some(m.load_seconds),
        digits: 3,
    },
    Column {
        name: "peak_rss_mib",
        table: Some(("peak MiB", 8)),
        value: |m| m.peak_rss_mib,
        digits: 0,
    },
    Column {
        name: "device_memory_mib",
        table: None,
        value: |m| m.device_memory_mib,
        digits: 0,
    },
];

/// `v` with −0 made +0: an entropy summed from `−p·ln p` terms with p = 1 is −0, which would
/// print as "-0.000". Rounding to a few digits can also give "-0.000" from a tiny negative
/// value, which this leaves as it is (it is a real sign).
fn without_negative_zero(v: f64) -> f64 {
    v + 0.0
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(text: &str) -> String {
    match text.contains([',', '"', '\n', '\r']) {
        true => format!("\"{}\"", text.replace('"', "\"\"")),
        false => text.to_string(),
    }
}

/// summary.csv: a header, then one row per variant, name first; empty cells for metrics that
/// do not apply (perplexity on random prompts, decode with no steps).
pub fn write_summary_csv(dir: &Path, rows: &[(String, String, VariantMetrics)]) -> Result<()> {
    let mut text = String::from("variant,hash");
    for c in COLUMNS {
        let _ = write!(text, ",{}", c.name);
    }
    text.push('\n');
    for (name, hash, metrics) in rows {
        let _ = write!(text, "{},{}", csv_field(name), csv_field(hash));
        for c in COLUMNS {
            let cell = (c.value)(metrics).map_or(String::new(), |v| without_negative_zero(v).to_string());
            let _ = write!(text, ",{cell}");
        }
        text.push('\n');
    }
    let path = dir.join("summary.csv");
    fs::write(&path, text).with_context(|| format!("{}: cannot write", path.display()))
}

/// The summary as an aligned text table (a subset of the CSV's columns).
pub fn summary_table(rows: &[(String, String, VariantMetrics)]) -> String {
    let width = rows
        .iter()
        .map(|(n, _, _)| n.len())
        .max()
        .unwrap_or(0)
        .max("variant".len());
    let shown: Vec<&Column> = COLUMNS
        .iter()
        .filter(|c| c.table.is_some() && rows.iter().any(|(_, _, m)| (c.value)(m).is_some()))
        .collect();
    let mut out = format!("{:<width$}", "variant");
    for c in &shown {
        let (title, w) = c.table.expect("filtered on table");
        let _ = write!(out, "  {title:>w$}");
    }
    out.push('\n');
    for (name, _, metrics) in rows {
        let _ = write!(out, "{name:<width$}");
        for c in &shown {
            let (_, w) = c.table.expect("filtered on table");
            let cell = (c.value)(metrics).map_or("-".to_string(), |v| {
                format!("{:.*}", c.digits, without_negative_zero(v))
            });
            let _ = write!(out, "  {cell:>w$}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_refuses_an_existing_folder_and_cleans_up_unless_committed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        fs::create_dir(&target).unwrap();
        let err = Staging::new(&target, false).unwrap_err().to_string();
        assert!(err.contains("already exists") && err.contains("--force"), "{err}");

        let fresh = dir.path().join("fresh");
        let staging = Staging::new(&fresh, false).unwrap();
        fs::write(staging.path().join("x"), "1").unwrap();
        drop(staging);
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from("out")], "a dropped run left {left:?}");

        fs::write(target.join("old"), "1").unwrap();
        let staging = Staging::new(&target, true).unwrap();
        fs::write(staging.path().join("new"), "1").unwrap();
        staging.commit().unwrap();
        assert!(target.join("new").exists() && !target.join("old").exists());
        let left = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(left, 1);
    }

    #[test]
    fn a_failed_run_removes_the_parent_folders_it_created_and_no_others() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::new(&dir.path().join("a/b/out"), false).unwrap();
        assert!(dir.path().join("a/b").is_dir());
        drop(staging);
        assert!(!dir.path().join("a").exists());
        assert!(dir.path().is_dir());

        fs::create_dir(dir.path().join("kept")).unwrap();
        let staging = Staging::new(&dir.path().join("kept/new/out"), false).unwrap();
        drop(staging);
        assert!(dir.path().join("kept").is_dir() && !dir.path().join("kept/new").exists());
    }

    #[test]
    fn negative_zero_prints_as_zero() {
        assert_eq!(format!("{:.3}", without_negative_zero(-0.0)), "0.000");
        assert_eq!(without_negative_zero(-0.0).to_string(), "0");
        assert_eq!(without_negative_zero(-1.5), -1.5);
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
