//! Reading an ablation file: TOML syntax, `--set key=value` overrides, then the typed
//! [`AblationFile`], with every error one line that names the file, where in it (the base, a
//! variant by name, the eval section) and the field.

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use toml::{Table, Value};

use super::settings::AblationFile;

/// Where in the file something is, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// The top level.
    Top,
    /// `[base]`.
    Base,
    /// `[eval]`.
    Eval,
    /// A `[[variants]]` entry, by name (or index when it has none).
    Variant(String),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Top => f.write_str("top level"),
            Place::Base => f.write_str("[base]"),
            Place::Eval => f.write_str("[eval]"),
            Place::Variant(name) => write!(f, "variant `{name}`"),
        }
    }
}

/// `FILE: PLACE: field `FIELD`: MSG`, the shape of every error about a file's contents.
pub fn field_error(file: &Path, place: &Place, field: &str, msg: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{}: {place}: field `{field}`: {msg}", file.display())
}

/// Reads `file`, applies `sets` (`dotted.key=value`, the value read as TOML, or as a string
/// when it is not valid TOML) and deserializes the result.
pub fn read(file: &Path, sets: &[String]) -> Result<AblationFile> {
    let text = std::fs::read_to_string(file).map_err(|e| anyhow!("{}: cannot read: {e}", file.display()))?;
    let mut table: Table = toml::from_str(&text).map_err(|e| syntax_error(file, &text, &e))?;
    for set in sets {
        apply_set(&mut table, set)?;
    }
    let value = Value::Table(table.clone());
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().message().to_string();
        located_error(file, &table, &path, &message)
    })
}

/// A TOML syntax error as one line with its line number (toml's own text spans several lines).
fn syntax_error(file: &Path, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            anyhow!("{}: line {line}: {message}", file.display())
        }
        None => anyhow!("{}: {message}", file.display()),
    }
}

/// serde's error at `path` (`variants[2].router.k`, `eval`, `.` for the top level) as
/// `FILE: PLACE: field `FIELD`: MESSAGE`, the variant named as the file names it.
fn located_error(file: &Path, table: &Table, path: &str, message: &str) -> anyhow::Error {
    let path = path.trim_start_matches('.');
    let (head, rest) = match path.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (path, None),
    };
    let place = if let Some(index) = head.strip_prefix("variants[").and_then(|i| i.strip_suffix(']')) {
        let name = index.parse::<usize>().ok().and_then(|i| {
            table
                .get("variants")?
                .as_array()?
                .get(i)?
                .get("name")?
                .as_str()
                .map(str::to_string)
        });
        Some(Place::Variant(name.unwrap_or_else(|| head.to_string())))
    } else {
        match head {
            "base" => Some(Place::Base),
            "eval" => Some(Place::Eval),
            _ => None,
        }
    };
    match (place, rest) {
        (Some(place), Some(field)) => field_error(file, &place, field, message),
        (Some(place), None) => anyhow!("{}: {place}: {message}", file.display()),
        (None, _) if !head.is_empty() && head != "?" => field_error(file, &Place::Top, head, message),
        (None, _) => anyhow!("{}: {message}", file.display()),
    }
}

/// Applies one `--set a.b.c=value` to the parsed file.
fn apply_set(table: &mut Table, set: &str) -> Result<()> {
    let Some((key, raw)) = set.split_once('=') else {
        bail!("--set {set:?}: expected key=value, e.g. --set eval.prompts=2");
    };
    let keys: Vec<&str> = key.trim().split('.').collect();
    if keys.iter().any(|k| k.is_empty()) {
        bail!("--set {set:?}: the key {key:?} has an empty part");
    }
    let value = parse_value(raw.trim());
    let (last, parents) = keys.split_last().expect("split yields at least one part");
    let mut current = table;
    for (i, part) in parents.iter().enumerate() {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        current = match entry {
            Value::Table(t) => t,
            _ => bail!(
                "--set {set:?}: `{}` is not a table (--set reaches [base], [eval] and the top level, not the variants)",
                keys[..=i].join(".")
            ),
        };
    }
    current.insert(last.to_string(), value);
    Ok(())
}

/// `raw` as a TOML value (`2`, `true`, `"x"`, `{ strategy = "hash" }`), or as a string.
fn parse_value(raw: &str) -> Value {
    toml::from_str::<Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, sets: &[&str]) -> Result<AblationFile> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("study.toml");
        std::fs::write(&file, text).unwrap();
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        read(&file, &sets)
    }

    fn error(text: &str) -> String {
        let err = parse(text, &[]).unwrap_err().to_string();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("study.toml"), "{err}");
        err
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_place_and_the_key() {
        let err = error("[[variants]]\nname = \"a\"\nrotuer = 1\n");
        assert!(
            err.contains("variant `a`") && err.contains("unknown field `rotuer`"),
            "{err}"
        );
        let err = error("[[variants]]\nname = \"b\"\nrouter = { strategy = \"hash\", kk = 2 }\n");
        assert!(err.contains("variant `b`") && err.contains("`kk`"), "{err}");
        let err = error("[eval]\npromtps = 2\n");
        assert!(err.contains("[eval]") && err.contains("`promtps`"), "{err}");
        let err = error("colour = 1\n");
        assert!(err.contains("`colour`"), "{err}");
    }

    #[test]
    fn wrong_types_are_errors_naming_the_field() {
        let err = error("[[variants]]\nname = \"a\"\nrouter = { strategy = \"llama4\", k = \"two\" }\n");
        assert!(
            err.contains("variant `a`: field `router.k`") && err.contains("invalid type"),
            "{err}"
        );
        let err = error("[base]\ndtype = \"f8\"\n");
        assert!(err.contains("[base]: field `dtype`") && err.contains("f8"), "{err}");
        let err = error("[[variants]]\nname = \"a\"\nnope = 0\n");
        assert!(err.contains("field `nope`") && err.contains("\"none\""), "{err}");
        let err = error("[[variants]]\nname = \"a\"\nrope_scaling = { factor = 8.0 }\n");
        assert!(
            err.contains("field `rope_scaling`") && err.contains("low_freq_factor"),
            "{err}"
        );
        let err = error("[[variants]]\nrouter = { strategy = \"top1\" }\n");
        assert!(err.contains("variants[0]") && err.contains("top1"), "{err}");
    }

    #[test]
    fn syntax_errors_give_the_line() {
        let err = error("[base]\nmodel = \"x\"\ndtype = \n");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn sets_reach_tables_and_keep_their_types() {
        let file = parse(
            "[eval]\nprompts = 4\n",
            &[
                "eval.prompts=2",
                "base.dtype=bf16",
                "base.router={ strategy = \"hash\" }",
            ],
        )
        .unwrap();
        assert_eq!(file.eval.prompts, Some(2));
        assert_eq!(file.base.dtype, Some(super::super::settings::Precision::Bf16));
        assert!(file.base.router.is_some());
        let err = parse("[[variants]]\nname = \"a\"\n", &["variants.name=b"]).unwrap_err();
        assert!(err.to_string().contains("not a table"), "{err}");
        let err = parse("", &["eval.prompts"]).unwrap_err();
        assert!(err.to_string().contains("key=value"), "{err}");
        let err = parse("", &["eval.prompts=two"]).unwrap_err();
        assert!(err.to_string().contains("[eval]: field `prompts`"), "{err}");
    }
}
