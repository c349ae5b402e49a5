//! The launchd job that runs the agent as a system daemon
//! (`/Library/LaunchDaemons/com.daemoneye.agent.plist`, owner root:wheel,
//! mode 0644). The agent starts procmond, which is the EndpointSecurity
//! client and must run as root.

use std::fmt::Write as _;
use std::path::Path;

/// The job label (and the plist's file stem).
pub const LABEL: &str = "com.daemoneye.agent";

/// Where the plist is installed.
pub const PLIST_PATH: &str = "/Library/LaunchDaemons/com.daemoneye.agent.plist";

/// What the job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentJob<'a> {
    /// The agent binary.
    pub program: &'a Path,
    /// Passed as `--config FILE` when set.
    pub config: Option<&'a Path>,
    /// stderr log file (the agent logs to stderr).
    pub log_path: &'a Path,
}

/// The launchd property list for `job`: started at boot (`RunAtLoad`),
/// restarted when it exits (`KeepAlive`), at most every 10 s
/// (`ThrottleInterval`), as root, with stdout (alerts) and stderr (logs) in
/// `log_path` and its `.out` sibling.
pub fn agent_plist(job: &AgentJob<'_>) -> String {
    let mut args = vec![job.program.display().to_string()];
    if let Some(c) = job.config {
        args.push("--config".into());
        args.push(c.display().to_string());
    }
    let err = job.log_path.display().to_string();
    let out = format!("{err}.out");
    let mut s = String::new();
    s.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    s.push_str(
        "<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n",
    );
    s.push_str("<plist version=\"1.0\">\n<dict>\n");
    key_string(&mut s, "Label", LABEL);
    s.push_str("  <key>ProgramArguments</key>\n  <array>\n");
    for a in &args {
        let _ = writeln!(s, "    <string>{}</string>", escape(a));
    }
    s.push_str("  </array>\n");
    key_string(&mut s, "UserName", "root");
    s.push_str("  <key>RunAtLoad</key>\n  <true/>\n");
    s.push_str("  <key>KeepAlive</key>\n  <true/>\n");
    s.push_str("  <key>ThrottleInterval</key>\n  <integer>10</integer>\n");
    key_string(&mut s, "ProcessType", "Interactive");
    key_string(&mut s, "StandardErrorPath", &err);
    key_string(&mut s, "StandardOutPath", &out);
    s.push_str("</dict>\n</plist>\n");
    s
}

fn key_string(s: &mut String, key: &str, value: &str) {
    let _ = writeln!(s, "  <key>{}</key>\n  <string>{}</string>", escape(key), escape(value));
}

/// XML character-data escaping.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The element structure of a plist document: checks that every tag is
    /// balanced and returns the `<key>`s of the top dict with the element
    /// that follows each.
    fn structure(xml: &str) -> Vec<(String, String)> {
        let body = xml.split_once("<plist version=\"1.0\">").unwrap().1;
        let mut stack: Vec<String> = vec!["plist".into()];
        let mut pairs = Vec::new();
        let mut pending_key: Option<String> = None;
        let mut rest = body;
        while let Some(open) = rest.find('<') {
            let close = rest[open..].find('>').unwrap() + open;
            let tag = &rest[open + 1..close];
            let text_after = &rest[close + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "unbalanced </{name}>");
            } else if let Some(name) = tag.strip_suffix('/') {
                if stack.len() == 2 {
                    pairs.push((pending_key.take().unwrap(), name.to_owned()));
                }
            } else {
                if stack.len() == 2 {
                    if tag == "key" {
                        let end = text_after.find('<').unwrap();
                        pending_key = Some(text_after[..end].to_owned());
                    } else {
                        pairs.push((pending_key.take().expect("value without a key"), tag.to_owned()));
                    }
                }
                stack.push(tag.to_owned());
            }
            assert!(!text_after.starts_with('<') || !tag.is_empty());
            rest = text_after;
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        assert!(!body.contains("& "), "unescaped ampersand");
        pairs
    }

    #[test]
    fn plist_is_a_well_formed_launchd_job() {
        let job = AgentJob {
            program: Path::new("/usr/local/bin/daemoneye-agent"),
            config: Some(Path::new("/etc/daemoneye/R&D <test>.toml")),
            log_path: Path::new("/var/log/daemoneye/agent.log"),
        };
        let xml = agent_plist(&job);
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist"));
        let pairs = structure(&xml);
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "Label",
                "ProgramArguments",
                "UserName",
                "RunAtLoad",
                "KeepAlive",
                "ThrottleInterval",
                "ProcessType",
                "StandardErrorPath",
                "StandardOutPath"
            ]
        );
        assert_eq!(pairs[1].1, "array");
        assert_eq!(pairs[3].1, "true");
        assert!(xml.contains("<string>com.daemoneye.agent</string>"));
        assert!(xml.contains("<string>/etc/daemoneye/R&amp;D &lt;test&gt;.toml</string>"));
        assert!(xml.contains("<string>/var/log/daemoneye/agent.log.out</string>"));
    }

    #[test]
    fn config_is_optional() {
        let job = AgentJob { program: Path::new("/a"), config: None, log_path: Path::new("/l") };
        let xml = agent_plist(&job);
        assert!(!xml.contains("--config"));
        assert_eq!(structure(&xml).len(), 9);
    }
}
