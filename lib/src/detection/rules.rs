//! Rule files: YAML under `rules/`, one rule (a mapping) or several (a list
//! of mappings) per file. A bad file or rule is reported and skipped; the
//! others load.
//!
//! ```yaml
//! id: shell-from-web
//! name: Shell spawned by a web server
//! severity: high            # low | medium | high | critical
//! tags: [execution]
//! sql: |
//!   SELECT e.pid, e.process_key, p.name AS parent
//!   FROM process_events e JOIN processes p ON p.process_key = e.parent_key
//!   WHERE e.event_type = 'exec' AND e.name IN ('sh', 'bash') AND p.name IN ('nginx', 'httpd')
//! dedupe: { key: [process_key], window: 5m }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{Query, RuleIndex, SqlError};
use crate::proto::Severity;

/// One detection rule as written in its file.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique id (stable across edits; alerts carry it).
    pub id: String,
    /// Short human title.
    pub name: String,
    /// What it detects and why.
    pub description: String,
    /// Alert severity.
    pub severity: Severity,
    /// Optional category (e.g. `execution`).
    pub category: Option<String>,
    /// Free tags.
    pub tags: Vec<String>,
    /// Author.
    pub author: Option<String>,
    /// Rule version.
    pub version: Option<String>,
    /// Disabled rules are loaded and validated but not evaluated.
    pub enabled: bool,
    /// The SELECT.
    pub sql: String,
    /// How alerts of this rule are deduplicated.
    pub dedupe: Option<Dedupe>,
    /// The file it came from.
    pub source: PathBuf,
}

/// Deduplication of a rule's alerts.
#[derive(Debug, Clone, PartialEq)]
pub struct Dedupe {
    /// Output column names whose values form the dedupe key.
    pub key: Vec<String>,
    /// Window (`"5m"` in YAML); `None` = the agent's default.
    pub window: Option<Duration>,
}

/// A rule with its compiled query.
#[derive(Debug, Clone)]
pub struct LoadedRule {
    /// The rule.
    pub rule: Rule,
    /// Its compiled SQL.
    pub query: Query,
}

/// The result of loading a directory.
#[derive(Debug, Default)]
pub struct RuleSet {
    /// Rules that loaded, in file order.
    pub rules: Vec<LoadedRule>,
    /// Files and rules that did not.
    pub errors: Vec<RuleError>,
}

impl RuleSet {
    /// The index of the streaming rules' needs (see [`RuleIndex`]), in rule
    /// order. Built anew on each call: keep it with the set it came from.
    pub fn streaming_index(&self) -> RuleIndex {
        RuleIndex::new(self.rules.iter().map(|lr| lr.query.is_streaming().then_some(&lr.query)))
    }
}

/// Why a rule file or rule was not loaded.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// The directory or file could not be read.
    #[error("rule file {}: cannot read: {message}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// The YAML is malformed or has unknown or missing fields.
    #[error("{}: {message}", Where(path, rule))]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The rule id, when it could be read.
        rule: Option<String>,
        /// The problem, with its line and column.
        message: String,
    },
    /// A field has a bad value.
    #[error("{}: {message}", Where(path, rule))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The rule id, when known.
        rule: Option<String>,
        /// The problem.
        message: String,
    },
    /// The SQL was rejected.
    #[error("{}: {source}", Where(path, &Some(rule.clone())))]
    Sql {
        /// The file.
        path: PathBuf,
        /// The rule id.
        rule: String,
        /// Why.
        source: SqlError,
    },
    /// Another rule already has this id.
    #[error("{}: duplicate rule id (first defined in {})", Where(path, &Some(rule.clone())), first.display())]
    DuplicateId {
        /// The file of the later rule.
        path: PathBuf,
        /// The id.
        rule: String,
        /// The file of the first rule with it.
        first: PathBuf,
    },
}

impl RuleError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            RuleError::Io { path, .. }
            | RuleError::Yaml { path, .. }
            | RuleError::Invalid { path, .. }
            | RuleError::Sql { path, .. }
            | RuleError::DuplicateId { path, .. } => path,
        }
    }
}

/// Formats `rule file F, rule "id"` or `rule file F`.
struct Where<'a>(&'a Path, &'a Option<String>);

impl fmt::Display for Where<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule file {}", self.0.display())?;
        if let Some(id) = self.1 {
            write!(f, ", rule \"{id}\"")?;
        }
        Ok(())
    }
}

/// The YAML shape of a rule. Unknown fields are errors (a typo such as
/// `severtiy` must not silently fall back to a default).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    name: String,
    #[serde(default)]
    description: String,
    severity: String,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    author: Option<String>,
    #[serde(default)]
    version: Option<serde_norway::Value>,
    #[serde(default = "yes")]
    enabled: bool,
    sql: String,
    #[serde(default)]
    dedupe: Option<RawDedupe>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDedupe {
    key: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    window: Option<Duration>,
}

/// Loads every `*.yaml`/`*.yml` file of `dir`, sorted by path. Duplicate
/// ids are an error for the later rule.
pub fn load_rules_dir(dir: &Path) -> RuleSet {
    let mut set = RuleSet::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            set.errors.push(RuleError::Io { path: dir.to_owned(), message: e.to_string() });
            return set;
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut seen: std::collections::HashMap<String, PathBuf> = std::collections::HashMap::new();
    for f in files {
        let (rules, errors) = load_rule_file(&f);
        set.errors.extend(errors);
        for r in rules {
            if let Some(first) = seen.get(&r.rule.id) {
                set.errors.push(RuleError::DuplicateId {
                    path: f.clone(),
                    rule: r.rule.id.clone(),
                    first: first.clone(),
                });
                continue;
            }
            seen.insert(r.rule.id.clone(), f.clone());
            set.rules.push(r);
        }
    }
    set
}

/// Loads one file: its rules that are valid, and an error for each that
/// is not (or one for the whole file when it cannot be read or parsed).
pub fn load_rule_file(path: &Path) -> (Vec<LoadedRule>, Vec<RuleError>) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return (Vec::new(), vec![RuleError::Io { path: path.to_owned(), message: e.to_string() }]);
        }
    };
    load_rules_str(&text, path)
}

/// Loads rules from YAML text; `path` is used in messages and `Rule::source`.
pub fn load_rules_str(text: &str, path: &Path) -> (Vec<LoadedRule>, Vec<RuleError>) {
    let doc: serde_norway::Value = match serde_norway::from_str(text) {
        Ok(d) => d,
        Err(e) => {
            return (Vec::new(), vec![RuleError::Yaml { path: path.to_owned(), rule: None, message: e.to_string() }]);
        }
    };
    let items = match doc {
        serde_norway::Value::Sequence(items) => items,
        m @ serde_norway::Value::Mapping(_) => vec![m],
        serde_norway::Value::Null => return (Vec::new(), Vec::new()),
        _ => {
            return (
                Vec::new(),
                vec![RuleError::Yaml {
                    path: path.to_owned(),
                    rule: None,
                    message: "a rule file holds a rule (a mapping) or a list of rules".into(),
                }],
            );
        }
    };
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for (n, item) in items.into_iter().enumerate() {
        let id = item.get("id").and_then(|v| v.as_str()).map(str::to_owned);
        match load_one(item, path) {
            Ok(r) => {
                if !ids.insert(r.rule.id.clone()) {
                    errors.push(RuleError::DuplicateId {
                        path: path.to_owned(),
                        rule: r.rule.id.clone(),
                        first: path.to_owned(),
                    });
                } else {
                    rules.push(r);
                }
            }
            Err(RuleError::Yaml { path, rule: None, message }) => {
                let message = if id.is_none() { format!("rule #{}: {message}", n + 1) } else { message };
                errors.push(RuleError::Yaml { path, rule: id, message });
            }
            Err(e) => errors.push(e),
        }
    }
    (rules, errors)
}

#[allow(clippy::result_large_err)] // built once per rule, not on a hot path
fn load_one(item: serde_norway::Value, path: &Path) -> Result<LoadedRule, RuleError> {
    let raw: RawRule = serde_norway::from_value(item).map_err(|e| RuleError::Yaml {
        path: path.to_owned(),
        rule: None,
        message: e.to_string(),
    })?;
    let invalid = |message: String| RuleError::Invalid { path: path.to_owned(), rule: Some(raw.id.clone()), message };
    if raw.id.trim().is_empty() || raw.id.chars().any(char::is_whitespace) {
        return Err(RuleError::Invalid {
            path: path.to_owned(),
            rule: None,
            message: format!("rule id {:?} must be non-empty and have no spaces", raw.id),
        });
    }
    if raw.name.trim().is_empty() {
        return Err(invalid("name must not be empty".into()));
    }
    let severity = match raw.severity.to_ascii_lowercase().as_str() {
        "low" => Severity::Low,
        "medium" => Severity::Medium,
        "high" => Severity::High,
        "critical" => Severity::Critical,
        other => {
            return Err(invalid(format!("severity {other:?} must be one of low, medium, high, critical")));
        }
    };
    let version = match raw.version {
        None => None,
        Some(serde_norway::Value::String(s)) => Some(s),
        Some(serde_norway::Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err(invalid("version must be a string or a number".into())),
    };
    let query = Query::compile(&raw.sql).map_err(|source| RuleError::Sql {
        path: path.to_owned(),
        rule: raw.id.clone(),
        source,
    })?;
    let dedupe = match raw.dedupe {
        None => None,
        Some(d) => {
            if d.key.is_empty() {
                return Err(invalid("dedupe.key must list at least one output column".into()));
            }
            for k in &d.key {
                if !query.columns().iter().any(|c| c == k) {
                    return Err(invalid(format!(
                        "dedupe key column {k:?} is not an output column of the query (columns: {})",
                        query.columns().join(", ")
                    )));
                }
            }
            Some(Dedupe { key: d.key, window: d.window })
        }
    };
    Ok(LoadedRule {
        rule: Rule {
            id: raw.id,
            name: raw.name,
            description: raw.description,
            severity,
            category: raw.category,
            tags: raw.tags,
            author: raw.author,
            version,
            enabled: raw.enabled,
            sql: raw.sql,
            dedupe,
            source: path.to_owned(),
        },
        query,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_one_and_many() {
        let one =
            "id: a\nname: A\nseverity: high\nsql: SELECT pid FROM process_events\ndedupe: {key: [pid], window: 5m}\n";
        let (r, e) = load_rules_str(one, Path::new("rules/a.yaml"));
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].rule.severity, Severity::High);
        assert!(r[0].query.is_streaming());
        assert_eq!(r[0].rule.dedupe.as_ref().unwrap().window, Some(Duration::from_secs(300)));

        let many = "- {id: a, name: A, severity: low, sql: 'SELECT 1'}\n- {id: b, name: B, severity: bad, sql: 'SELECT 1'}\n- {id: c, name: C, severity: low, sql: 'SELECT 1', extra: 1}\n- {id: d, name: D, severity: low, sql: 'SELECT nmae FROM processes', version: 2}\n- {id: a, name: A2, severity: low, sql: 'SELECT 1'}\n";
        let (r, e) = load_rules_str(many, Path::new("rules/x.yaml"));
        assert_eq!(r.len(), 1);
        let msgs: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert_eq!(msgs.len(), 4, "{msgs:?}");
        assert!(msgs[0].starts_with("rule file rules/x.yaml, rule \"b\": severity"), "{}", msgs[0]);
        assert!(msgs[1].contains("rule \"c\"") && msgs[1].contains("unknown field"), "{}", msgs[1]);
        assert_eq!(
            msgs[2],
            "rule file rules/x.yaml, rule \"d\": unknown column \"nmae\" at 1:8 (did you mean \"name\"?)"
        );
        assert!(msgs[3].contains("duplicate"), "{}", msgs[3]);
    }

    #[test]
    fn directory_loading() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), "id: x\nname: X\nseverity: low\nsql: SELECT 1\n").unwrap();
        std::fs::write(dir.path().join("b.yml"), "id: x\nname: X\nseverity: low\nsql: SELECT 1\n").unwrap();
        std::fs::write(dir.path().join("c.yaml"), ": : not yaml [").unwrap();
        std::fs::write(dir.path().join("d.txt"), "ignored").unwrap();
        let set = load_rules_dir(dir.path());
        assert_eq!(set.rules.len(), 1);
        assert_eq!(set.errors.len(), 2, "{:?}", set.errors);
        assert!(matches!(set.errors[0], RuleError::DuplicateId { .. }));
        assert!(set.errors[1].to_string().contains("c.yaml"));
    }
}
