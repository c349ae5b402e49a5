//! `processes tree`: the parent/child tree of the agent's table.
//!
//! Edges are `parent_key` -> `process_key` (never bare pids, which are
//! reused). A process whose parent is not in the table is a root. Lines are
//! cut to the terminal's width; JSON nests `children`, CSV is flat with a
//! `depth` column.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::ExitCode;

use serde_json::{Value as Json, json};

use crate::client::{self, Client};
use crate::output::{Format, Grid, Ui};

/// Where the tree starts.
#[derive(Debug)]
pub(super) struct Start {
    /// The process with this pid (live first, else the newest).
    pub(super) pid: Option<u32>,
    /// The process with this key.
    pub(super) key: Option<String>,
    /// Exited processes too.
    pub(super) all: bool,
}

/// One process of the tree.
#[derive(Debug, Clone)]
struct Node {
    pid: i64,
    ppid: Option<i64>,
    key: String,
    parent: Option<String>,
    name: String,
    user: String,
    alive: bool,
    start: i64,
    command_line: String,
}

/// Runs `processes tree`.
pub(super) async fn run(client: &mut Client, start: &Start, ui: &Ui, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    // Exited processes are read even without --all when a root is named:
    // the root itself may have exited while its children run.
    let sql = "SELECT pid, ppid, process_key, parent_key, name, user_name, uid, is_alive, start_time, command_line \
               FROM processes";
    let rows = client::query(client, "reading the process table failed", sql.into(), Vec::new(), 0).await?;
    if rows.truncated {
        super::table::note("the table was cut at the agent's row limit (rules.max_rows); the tree is partial");
    }
    let nodes: Vec<Node> = rows.objects().iter().map(node).collect();
    let forest = Forest::new(nodes, start.all);
    let roots = forest.roots(start)?;
    match ui.format {
        Format::Json => {
            let doc: Vec<Json> = roots.iter().map(|r| forest.json(r, &mut HashSet::new())).collect();
            serde_json::to_writer_pretty(&mut *out, &doc)?;
            writeln!(out)?;
        }
        Format::Csv => {
            let mut grid = Grid {
                columns: ["depth", "pid", "ppid", "name", "user", "alive", "process_key", "parent_key"]
                    .iter()
                    .map(|c| (*c).to_owned())
                    .collect(),
                rows: Vec::new(),
            };
            for r in &roots {
                forest.walk(r, 0, &mut HashSet::new(), &mut |n, depth| {
                    grid.rows.push(vec![
                        Json::from(depth),
                        Json::from(n.pid),
                        n.ppid.map_or(Json::Null, Json::from),
                        Json::from(n.name.as_str()),
                        Json::from(n.user.as_str()),
                        Json::from(n.alive),
                        Json::from(n.key.as_str()),
                        n.parent.as_deref().map_or(Json::Null, Json::from),
                    ]);
                });
            }
            grid.write(Format::Csv, out)?;
        }
        Format::Table => {
            let width = ui.width();
            let mut lines = Vec::new();
            for r in &roots {
                forest.draw(r, "", None, ui, &mut HashSet::new(), &mut lines);
            }
            for l in lines {
                match width {
                    Some(w) => writeln!(out, "{}", console::truncate_str(&l, w, "…"))?,
                    None => writeln!(out, "{l}")?,
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn node(r: &serde_json::Map<String, Json>) -> Node {
    let text = |k: &str| r.get(k).and_then(Json::as_str).unwrap_or_default().to_owned();
    let user = match r.get("user_name").and_then(Json::as_str) {
        Some(u) => u.to_owned(),
        None => r.get("uid").and_then(Json::as_i64).map(|u| u.to_string()).unwrap_or_default(),
    };
    Node {
        pid: r.get("pid").and_then(Json::as_i64).unwrap_or(0),
        ppid: r.get("ppid").and_then(Json::as_i64),
        key: text("process_key"),
        parent: r.get("parent_key").and_then(Json::as_str).map(str::to_owned),
        name: text("name"),
        user,
        alive: r.get("is_alive").and_then(Json::as_i64) == Some(1),
        start: r.get("start_time").and_then(Json::as_i64).unwrap_or(0),
        command_line: text("command_line"),
    }
}

struct Forest {
    nodes: HashMap<String, Node>,
    children: HashMap<String, Vec<String>>,
    all: bool,
}

impl Forest {
    fn new(list: Vec<Node>, all: bool) -> Self {
        let nodes: HashMap<String, Node> = list.into_iter().map(|n| (n.key.clone(), n)).collect();
        let mut children: HashMap<String, Vec<String>> = HashMap::new();
        for n in nodes.values() {
            if let Some(p) = n.parent.as_ref().filter(|p| nodes.contains_key(*p)) {
                children.entry(p.clone()).or_default().push(n.key.clone());
            }
        }
        for kids in children.values_mut() {
            kids.sort_by_key(|k| nodes.get(k).map(|n| (n.start, n.pid)));
        }
        Self { nodes, children, all }
    }

    fn shown(&self, n: &Node) -> bool {
        self.all || n.alive
    }

    /// The keys the tree starts from.
    fn roots(&self, start: &Start) -> anyhow::Result<Vec<String>> {
        if let Some(key) = &start.key {
            if !self.nodes.contains_key(key) {
                anyhow::bail!(
                    "no process with key {key} in the agent's table; `daemoneye-cli processes list --all` shows the keys"
                );
            }
            return Ok(vec![key.clone()]);
        }
        if let Some(pid) = start.pid {
            let best = self
                .nodes
                .values()
                .filter(|n| n.pid == i64::from(pid))
                .max_by_key(|n| (n.alive, n.start))
                .map(|n| n.key.clone());
            return best.map(|k| vec![k]).ok_or_else(|| {
                anyhow::anyhow!(
                    "no process with pid {pid} in the agent's table (exited processes stay for \
                     agent.process_retention); `daemoneye-cli processes list --all` shows the table"
                )
            });
        }
        let mut roots: Vec<&Node> = self
            .nodes
            .values()
            .filter(|n| n.parent.as_ref().is_none_or(|p| !self.nodes.contains_key(p)) && self.shown(n))
            .collect();
        roots.sort_by_key(|n| (n.start, n.pid));
        Ok(roots.into_iter().map(|n| n.key.clone()).collect())
    }

    fn kids(&self, key: &str) -> Vec<&Node> {
        self.children
            .get(key)
            .map(|ks| ks.iter().filter_map(|k| self.nodes.get(k)).filter(|n| self.shown(n)).collect())
            .unwrap_or_default()
    }

    /// Depth-first, each node once (a corrupt table with a cycle stops).
    fn walk(&self, key: &str, depth: usize, seen: &mut HashSet<String>, f: &mut dyn FnMut(&Node, usize)) {
        let Some(n) = self.nodes.get(key) else { return };
        if !seen.insert(key.to_owned()) {
            return;
        }
        f(n, depth);
        for k in self.kids(key) {
            self.walk(&k.key, depth + 1, seen, f);
        }
    }

    fn json(&self, key: &str, seen: &mut HashSet<String>) -> Json {
        let Some(n) = self.nodes.get(key).filter(|_| seen.insert(key.to_owned())) else { return Json::Null };
        let children: Vec<Json> =
            self.kids(key).iter().map(|k| self.json(&k.key, seen)).filter(|j| !j.is_null()).collect();
        json!({
            "pid": n.pid, "ppid": n.ppid, "name": n.name, "user": n.user, "is_alive": n.alive,
            "process_key": n.key, "parent_key": n.parent, "command_line": n.command_line,
            "children": children,
        })
    }

    /// Appends the lines of `key`'s subtree: `prefix` is what the ancestors
    /// draw; `last` whether this node is its parent's last child (`None`
    /// for a root).
    fn draw(
        &self,
        key: &str,
        prefix: &str,
        last: Option<bool>,
        ui: &Ui,
        seen: &mut HashSet<String>,
        lines: &mut Vec<String>,
    ) {
        let Some(n) = self.nodes.get(key) else { return };
        if !seen.insert(key.to_owned()) {
            return;
        }
        let branch = match last {
            None => "",
            Some(true) => "└── ",
            Some(false) => "├── ",
        };
        let state = if n.alive { String::new() } else { format!(" {}", ui.style().dim().apply_to("(exited)")) };
        let cmd = if n.command_line.is_empty() || n.command_line == n.name {
            String::new()
        } else {
            format!(" {}", ui.style().dim().apply_to(&n.command_line))
        };
        lines.push(format!(
            "{prefix}{branch}{} {} [{}]{state}{cmd}",
            ui.style().cyan().apply_to(n.pid),
            ui.style().bold().apply_to(&n.name),
            n.user,
        ));
        let child_prefix = match last {
            None => prefix.to_owned(),
            Some(true) => format!("{prefix}    "),
            Some(false) => format!("{prefix}│   "),
        };
        let kids = self.kids(key);
        for (i, k) in kids.iter().enumerate() {
            self.draw(&k.key, &child_prefix, Some(i + 1 == kids.len()), ui, seen, lines);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(pid: i64, key: &str, parent: Option<&str>, alive: bool) -> Node {
        Node {
            pid,
            ppid: None,
            key: key.into(),
            parent: parent.map(str::to_owned),
            name: format!("p{pid}"),
            user: "root".into(),
            alive,
            start: pid,
            command_line: String::new(),
        }
    }

    #[test]
    fn draws_box_characters_and_hides_exited_unless_all() {
        let list = vec![
            n(1, "a", None, true),
            n(2, "b", Some("a"), true),
            n(3, "c", Some("b"), true),
            n(4, "d", Some("a"), true),
            n(5, "e", Some("a"), false),
            n(6, "f", Some("gone"), true),
        ];
        let ui = Ui { format: Format::Table, color: false };
        let f = Forest::new(list.clone(), false);
        let roots = f.roots(&Start { pid: None, key: None, all: false }).unwrap();
        assert_eq!(roots, vec!["a", "f"]);
        let mut lines = Vec::new();
        f.draw("a", "", None, &ui, &mut HashSet::new(), &mut lines);
        assert_eq!(lines, vec!["1 p1 [root]", "├── 2 p2 [root]", "│   └── 3 p3 [root]", "└── 4 p4 [root]"]);
        let f = Forest::new(list, true);
        let mut lines = Vec::new();
        f.draw("a", "", None, &ui, &mut HashSet::new(), &mut lines);
        assert_eq!(lines.last().unwrap(), "└── 5 p5 [root] (exited)");
        assert_eq!(f.roots(&Start { pid: Some(3), key: None, all: true }).unwrap(), vec!["c"]);
        assert!(f.roots(&Start { pid: Some(99), key: None, all: true }).is_err());
        let j = f.json("a", &mut HashSet::new());
        assert_eq!(j["children"][0]["children"][0]["pid"], 3);
    }
}
