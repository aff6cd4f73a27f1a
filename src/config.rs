//! Settings: one TOML file (`config/chunkgate.toml` documents every key), defaults that work out of
//! the box, `CHUNKGATE_SECTION__KEY=value` environment overrides for pod specs, and validation that
//! lists every problem at once. Unknown keys are errors.

use std::{fmt, path::Path};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::sim::SimConfig;

/// Exit status for a configuration that cannot be used (EX_USAGE, as linkerd2-proxy does).
pub const EXIT_BAD_CONFIG: i32 = 64;

/// The whole configuration file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    pub log: LogConfig,
    pub sim: SimConfig,
}

/// Log output.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `chunkgate=debug`; `RUST_LOG` overrides it.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".to_owned(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Every problem found in a configuration, one per line.
#[derive(Debug, PartialEq, Eq)]
pub struct Problems(pub Vec<String>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Prefix of environment overrides: `CHUNKGATE_SIM__LIMITS__MAX_PARTS=64` sets `sim.limits.max_parts`.
pub const ENV_PREFIX: &str = "CHUNKGATE_";

// === impl Config ===

impl Config {
    /// Reads `path` (or the defaults when `None`), applies overrides from `env`, and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, Problems> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|err| Problems(vec![format!("cannot read {}: {err}", path.display())]))?,
            None => String::new(),
        };
        Self::parse(&text, env)
    }

    /// Parses TOML text, applies overrides from `env`, and validates.
    pub fn parse(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, Problems> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|err: toml::de::Error| Problems(vec![err.to_string()]))?;
        let mut problems = Vec::new();
        for (name, value) in env {
            if let Some(path) = name.strip_prefix(ENV_PREFIX).filter(|p| p.contains("__")) {
                let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
                if let Err(p) = set_path(&mut table, &keys, env_value(&value)) {
                    problems.push(format!("{name}: {p}"));
                }
            }
        }
        let config: Config = deserialize_strict(toml::Value::Table(table), &mut problems);
        problems.extend(config.problems());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(Problems(problems))
        }
    }

    /// Every semantic problem (types and unknown keys are caught while parsing).
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.sim.problems();
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            out.push(format!("log.filter is not a valid filter: {err}"));
        }
        out
    }
}

/// Deserializes `value`, recording every unknown key and any type error in `problems`.
pub fn deserialize_strict<T: DeserializeOwned + Default>(
    value: toml::Value,
    problems: &mut Vec<String>,
) -> T {
    let mut unknown = Vec::new();
    let result = serde_ignored::deserialize(value, |path| unknown.push(path.to_string()));
    problems.extend(
        unknown
            .into_iter()
            .map(|key| format!("unknown key `{key}`")),
    );
    match result {
        Ok(value) => value,
        Err(err) => {
            problems.push(err.to_string().trim().to_owned());
            T::default()
        }
    }
}

/// An override's value: TOML when it parses as a TOML value (`64`, `true`, `["a"]`), else a string.
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = keys
        .split_last()
        .expect("split on `__` yields at least one key");
    let mut at = table;
    for key in parents {
        let entry = at
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{key}` is not a table"))?;
    }
    at.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_file_gives_working_defaults() {
        assert_eq!(Config::parse("", env(&[])).unwrap(), Config::default());
    }

    #[test]
    fn env_overrides_reach_nested_keys_and_keep_strings() {
        let c = Config::parse(
            "[sim]\ndialect = \"docusign\"\n",
            env(&[
                ("CHUNKGATE_SIM__LIMITS__MAX_PARTS", "64"),
                ("CHUNKGATE_SIM__LISTEN", "127.0.0.1:9999"),
                ("CHUNKGATE_SIM__DIALECT", "envelope"),
                ("CHUNKGATE_CONFIG", "ignored: no section separator"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(c.sim.limits.max_parts, 64);
        assert_eq!(c.sim.listen.port(), 9999);
        assert_eq!(c.sim.dialect, crate::envelope::Dialect::Envelope);
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let err = Config::parse(
            "[sim]\nbogus = 1\nthrottle_status = 418\n[sim.limits]\nmax_parts = 999\nnope = 2\n[extra]\n",
            env(&[]),
        )
        .unwrap_err();
        let all = err.0.join("\n");
        for needle in [
            "sim.bogus",
            "sim.limits.nope",
            "extra",
            "throttle_status",
            "max_parts",
        ] {
            assert!(all.contains(needle), "{needle} missing from:\n{all}");
        }
    }
}
