//! What every config section's validation shares: the error that names the
//! field at fault, and readers for the value kinds sections have in common
//! (durations, addresses, positive numbers, paths relative to the file).
//! Each subsystem owns its section (raw form, validated form, validation);
//! `config` only composes them.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

/// A config value Leash refuses, with the dotted path of its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

/// The error for `field`.
pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Whole seconds, at least one.
pub fn secs(field: &str, value: Option<u64>, default: u64) -> Result<Duration, FieldError> {
    match value.unwrap_or(default) {
        0 => Err(invalid(field, "must be at least 1 second")),
        n => Ok(Duration::from_secs(n)),
    }
}

/// An `IP:port` address.
pub fn addr(field: &str, value: Option<&str>, default: &str) -> Result<SocketAddr, FieldError> {
    let text = value.unwrap_or(default);
    text.parse()
        .map_err(|_| invalid(field, format!("`{text}` is not an IP:port address")))
}

/// A count that must be positive.
pub fn positive<T: Default + PartialEq>(
    field: &str,
    value: Option<T>,
    default: T,
) -> Result<T, FieldError> {
    match value {
        Some(v) if v == T::default() => Err(invalid(field, "must be positive")),
        Some(v) => Ok(v),
        None => Ok(default),
    }
}

/// `path` taken relative to the config file's directory `base`.
pub fn resolve(base: &Path, path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

/// Compiles globs (`*` matches any run of characters, `/` included; `?`,
/// `[...]` and `{a,b}` as usual); the reason when one is not a glob.
pub fn globs(patterns: &[String]) -> Result<globset::GlobSet, String> {
    let mut set = globset::GlobSetBuilder::new();
    for p in patterns {
        set.add(globset::Glob::new(p).map_err(|e| format!("`{p}`: {e}"))?);
    }
    set.build().map_err(|e| e.to_string())
}

/// A YAML document that does not fit its schema: the path of the field at
/// fault and the parser's reason (with line and column).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    /// The dotted path of the field (`rules[0].action`), `.` for the whole
    /// document.
    pub path: String,
    message: String,
}

impl From<serde_path_to_error::Error<serde_norway::Error>> for YamlError {
    fn from(e: serde_path_to_error::Error<serde_norway::Error>) -> Self {
        let path = e.path().to_string();
        let reason = e.inner().to_string();
        // The parser names the enclosing field itself (`rules[0]: …`).
        let reason = match reason.split_once(": ") {
            Some((prefix, rest)) if path.starts_with(prefix) => rest.to_owned(),
            _ => reason,
        };
        let message = if path == "." {
            reason
        } else {
            format!("`{path}`: {reason}")
        };
        Self { path, message }
    }
}

/// Reads YAML `text` into `T`, naming the field at fault on error.
pub fn from_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    Ok(serde_path_to_error::deserialize(
        serde_norway::Deserializer::from_str(text),
    )?)
}

/// Reads a YAML value (e.g. a section given inline) into `T`, naming the
/// field at fault on error.
pub fn from_yaml_value<T: serde::de::DeserializeOwned>(
    value: serde_norway::Value,
) -> Result<T, YamlError> {
    Ok(serde_path_to_error::deserialize(value)?)
}

/// A short machine name: `a-z`, `0-9`, `-` and `_`, 1 to 64 of them.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A duration written like `30d` or `12h` (`default` when absent), at
/// least a second.
pub fn duration(
    field: &str,
    text: Option<&str>,
    default: Duration,
) -> Result<Duration, FieldError> {
    let Some(text) = text else {
        return Ok(default);
    };
    let d = humantime::parse_duration(text).map_err(|e| {
        invalid(
            field,
            format!("`{text}` is not a duration like 30d or 12h: {e}"),
        )
    })?;
    if d < Duration::from_secs(1) {
        return Err(invalid(field, "must be at least 1s"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_name_the_field() {
        assert_eq!(secs("a.b", Some(0), 5).unwrap_err().field, "a.b");
        assert_eq!(secs("a.b", None, 5), Ok(Duration::from_secs(5)));
        assert!(addr("x", Some("nope"), "127.0.0.1:1").is_err());
        assert_eq!(
            positive("n", Some(0usize), 3).unwrap_err().reason,
            "must be positive"
        );
        assert_eq!(positive("n", None, 3usize), Ok(3));
        assert_eq!(
            resolve(Path::new("/etc"), "a".into()),
            PathBuf::from("/etc/a")
        );
        assert!(valid_name("open-ai_2") && !valid_name("Open AI"));
        let set = globs(&["gpt-5*".into(), "*opus*".into(), "/opt/x/*".into()]).unwrap();
        for yes in ["gpt-5-mini", "claude-opus-4-1", "/opt/x/bin/python"] {
            assert!(set.is_match(yes), "{yes}");
        }
        for no in ["gpt-4o", "claude-sonnet-4", "/usr/bin/python"] {
            assert!(!set.is_match(no), "{no}");
        }
        assert!(globs(&["[".into()]).is_err());
    }
}
