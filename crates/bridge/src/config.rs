//! The `[[bridge]]` sections of the configuration file.
//!
//! ```toml
//! [[bridge]]
//! name = "decisions"            # idempotency keys, metrics, the lease
//! source = "redis_streams"      # redis_streams | nats | postgres
//! url = "redis://127.0.0.1:6379"
//! streams = ["events"]          # the source's own options (docs/bridge.md)
//!
//! [[bridge.rule]]
//! match = { "data.type" = "DecisionMade" }
//! channels = ["session:{data.session_id}"]
//! ```
//!
//! The hub's configuration keeps these sections as TOML tables (`Config::bridge`); they are
//! checked here, with every source's own options, before any port is bound.

use crate::rules::{RuleConfig, RuleError, Rules};
use serde::Deserialize;
use std::time::Duration;

/// Why a `[[bridge]]` section is invalid.
#[derive(Debug, thiserror::Error)]
pub enum BridgeConfigError {
    /// A key is missing, unknown or of the wrong type.
    #[error("bridge {bridge}: {message}")]
    Invalid {
        /// The bridge's name (or its position when it has none).
        bridge: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A rule is invalid.
    #[error("bridge {bridge}: {error}")]
    Rule {
        /// The bridge's name.
        bridge: String,
        /// The rule's error.
        error: RuleError,
    },
}

/// The keys every bridge has, whatever its source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Common {
    name: String,
    source: String,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleConfig>,
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    lease_ttl: Duration,
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(5)
}

/// One bridge, checked.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Its name: unique among the bridges; prefix of its idempotency keys.
    pub name: String,
    /// The source kind (`redis_streams`, `nats`, `postgres`).
    pub source: String,
    /// The source's own options (every key not common to all bridges).
    pub options: toml::Table,
    /// Its rules, compiled.
    pub rules: Rules,
    /// How long a node holds the source after its last renewal: a dead node's source is taken
    /// over within this (clustered engines; one node alone always holds it).
    pub lease_ttl: Duration,
}

/// Source kinds this build can run.
pub const SOURCES: &[&str] = &["redis_streams", "nats", "postgres"];

impl BridgeConfig {
    /// Checks every `[[bridge]]` table: common keys, rules (namespaces checked with
    /// `namespace_known`), unique names, a known source. The source's own options are checked
    /// when it is built ([`crate::run::start`] or [`crate::sources::check`]).
    pub fn parse_all(
        tables: &[toml::Table],
        namespace_known: impl Fn(&str) -> bool,
    ) -> Result<Vec<BridgeConfig>, BridgeConfigError> {
        let mut out: Vec<BridgeConfig> = Vec::new();
        for (i, table) in tables.iter().enumerate() {
            let label = table
                .get("name")
                .and_then(toml::Value::as_str)
                .map_or_else(|| format!("#{}", i + 1), str::to_string);
            let invalid =
                |message: String| BridgeConfigError::Invalid { bridge: label.clone(), message };
            let mut common_keys = toml::Table::new();
            let mut options = toml::Table::new();
            for (k, v) in table {
                if ["name", "source", "rule", "lease_ttl"].contains(&k.as_str()) {
                    common_keys.insert(k.clone(), v.clone());
                } else {
                    options.insert(k.clone(), v.clone());
                }
            }
            let common: Common = common_keys
                .try_into()
                .map_err(|e: toml::de::Error| invalid(e.message().to_string()))?;
            if common.name.is_empty() || common.name.contains(char::is_whitespace) {
                return Err(invalid("name: one word, not empty".into()));
            }
            if out.iter().any(|b| b.name == common.name) {
                return Err(invalid("name: two bridges have this name".into()));
            }
            if !SOURCES.contains(&common.source.as_str()) {
                return Err(invalid(format!(
                    "source: {:?} is not one of {}",
                    common.source,
                    SOURCES.join(", ")
                )));
            }
            if common.lease_ttl < Duration::from_millis(300) {
                return Err(invalid("lease_ttl: at least 300ms".into()));
            }
            let rules = Rules::new(&common.name, &common.rules, &namespace_known)
                .map_err(|error| BridgeConfigError::Rule { bridge: label.clone(), error })?;
            out.push(BridgeConfig {
                name: common.name,
                source: common.source,
                options,
                rules,
                lease_ttl: common.lease_ttl,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<BridgeConfig>, BridgeConfigError> {
        #[derive(Deserialize)]
        struct Doc {
            bridge: Vec<toml::Table>,
        }
        let doc: Doc = toml::from_str(text).unwrap();
        BridgeConfig::parse_all(&doc.bridge, |ns| ns == "session")
    }

    #[test]
    fn common_keys_and_source_options() {
        let b = parse(
            r#"
            [[bridge]]
            name = "d"
            source = "redis_streams"
            url = "redis://x"
            streams = ["s"]
            [[bridge.rule]]
            channels = ["session:{data.id}"]
            "#,
        )
        .unwrap();
        assert_eq!(b[0].name, "d");
        assert_eq!(b[0].lease_ttl, Duration::from_secs(5));
        assert_eq!(b[0].options.keys().collect::<Vec<_>>(), ["streams", "url"]);
    }

    #[test]
    fn invalid_sections_name_the_key() {
        let rule = "[[bridge.rule]]\nchannels = [\"session:x\"]\n";
        let err = |t: &str| parse(&format!("{t}\n{rule}")).unwrap_err().to_string();
        assert!(err("[[bridge]]\nsource = \"nats\"").contains("name"));
        assert!(err("[[bridge]]\nname = \"a\"\nsource = \"kafka\"").contains("source"));
        assert!(err("[[bridge]]\nname = \"a b\"\nsource = \"nats\"").contains("name"));
        assert!(
            err("[[bridge]]\nname = \"a\"\nsource = \"nats\"\nlease_ttl = \"1ms\"")
                .contains("lease_ttl")
        );
        let two = format!(
            "[[bridge]]\nname = \"a\"\nsource = \"nats\"\n{rule}[[bridge]]\nname = \"a\"\nsource = \"nats\"\n{rule}"
        );
        assert!(parse(&two).unwrap_err().to_string().contains("two bridges"));
        let no_rule = parse("[[bridge]]\nname = \"a\"\nsource = \"nats\"").unwrap_err().to_string();
        assert!(no_rule.contains("at least one rule"), "{no_rule}");
    }
}
