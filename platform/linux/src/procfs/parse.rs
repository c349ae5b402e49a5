//! Pure parsers for the `/proc` files the reader uses.
//!
//! Nothing here touches the file system, so every parser is unit- and
//! property-tested on literal inputs: `stat` (with hostile `comm` values),
//! `status`, `cgroup`, `cmdline` and `/etc/passwd`.

use std::collections::HashMap;

/// `PF_KTHREAD` from `include/linux/sched.h`: the task is a kernel thread.
pub(crate) const PF_KTHREAD: u64 = 0x0020_0000;

/// The fields of `/proc/<pid>/stat` the reader needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stat {
    /// Field 2 without its parentheses: the task's `comm`.
    pub(crate) comm: String,
    /// Field 3: one-letter state (`R`, `S`, `Z`, ...).
    pub(crate) state: char,
    /// Field 4.
    pub(crate) ppid: u32,
    /// Field 9.
    pub(crate) flags: u64,
    /// Fields 14 and 15: user and system CPU time in clock ticks.
    pub(crate) cpu_ticks: u64,
    /// Field 22: start time since boot in clock ticks.
    pub(crate) start_ticks: u64,
    /// Field 24: resident set size in pages.
    pub(crate) rss_pages: u64,
}

impl Stat {
    /// True for kernel threads (`PF_KTHREAD`).
    pub(crate) fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
}

/// Parses `/proc/<pid>/stat`.
///
/// `comm` may contain spaces, parentheses and anything else but NUL and is
/// cut to 15 bytes by the kernel, so the only reliable delimiter is the
/// *last* `)` of the line: everything after it is space-separated numbers.
pub(crate) fn parse_stat(text: &str) -> Result<Stat, String> {
    let open = text.find('(').ok_or("no '(' before comm")?;
    let close = text.rfind(')').ok_or("no ')' after comm")?;
    if close < open {
        return Err("')' before '('".into());
    }
    let comm = text[open + 1..close].to_owned();
    // Fields after comm, numbered from 3 (state).
    let mut rest = text[close + 1..].split_ascii_whitespace();
    let state = rest.next().and_then(|s| s.chars().next()).ok_or("missing state (field 3)")?;
    let nth = |fields: &[&str], n: usize, what: &str| -> Result<u64, String> {
        // `fields[0]` is field 4.
        fields
            .get(n - 4)
            .ok_or_else(|| format!("missing {what} (field {n})"))?
            .parse::<u64>()
            .map_err(|e| format!("bad {what} (field {n}): {e}"))
    };
    let fields: Vec<&str> = rest.take(21).collect();
    let ppid = u32::try_from(nth(&fields, 4, "ppid")?).map_err(|e| format!("bad ppid: {e}"))?;
    let flags = nth(&fields, 9, "flags")?;
    let cpu_ticks = nth(&fields, 14, "utime")?.saturating_add(nth(&fields, 15, "stime")?);
    let start_ticks = nth(&fields, 22, "starttime")?;
    // rss is signed in the kernel's format; a negative value is no memory.
    let rss_pages = fields.get(24 - 4).and_then(|f| f.parse::<i64>().ok()).map_or(0, |r| u64::try_from(r).unwrap_or(0));
    Ok(Stat { comm, state, ppid, flags, cpu_ticks, start_ticks, rss_pages })
}

/// The fields of `/proc/<pid>/status` the reader needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Status {
    /// `Tgid:`: the thread group (process) id.
    pub(crate) tgid: Option<u32>,
    /// `Uid:` real and effective.
    pub(crate) uid: Option<u32>,
    pub(crate) euid: Option<u32>,
    /// `Gid:` real and effective.
    pub(crate) gid: Option<u32>,
    pub(crate) egid: Option<u32>,
}

/// Parses `/proc/<pid>/status`; missing or malformed lines leave their
/// fields `None` (unknown stays unknown).
pub(crate) fn parse_status(text: &str) -> Status {
    let mut st = Status::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let mut nums = value.split_ascii_whitespace().map(|v| v.parse::<u32>().ok());
        match key {
            "Tgid" => st.tgid = nums.next().flatten(),
            "Uid" => {
                st.uid = nums.next().flatten();
                st.euid = nums.next().flatten();
            }
            "Gid" => {
                st.gid = nums.next().flatten();
                st.egid = nums.next().flatten();
            }
            _ => {}
        }
    }
    st
}

/// Splits `/proc/<pid>/cmdline` into arguments. An empty file (kernel
/// threads, zombies) is `None`: the argv is unknown, not empty.
pub(crate) fn parse_cmdline(bytes: &[u8]) -> Option<Vec<String>> {
    if bytes.is_empty() {
        return None;
    }
    let body = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    Some(body.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
}

/// The cgroup path of a process from `/proc/<pid>/cgroup`.
///
/// The unified (v2) hierarchy line `0::<path>` when present; on a pure v1
/// system the `name=systemd` hierarchy, which names the unit the same way.
/// `None` when neither is there.
pub(crate) fn parse_cgroup(text: &str) -> Option<String> {
    let mut systemd = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if controllers.is_empty() {
            return Some(path.to_owned());
        }
        if controllers == "name=systemd" {
            systemd = Some(path.to_owned());
        }
    }
    systemd
}

/// Finds a container id (64 hex digits) in the cgroup file.
///
/// Covers the layouts of docker (`/docker/<id>`, `docker-<id>.scope`),
/// containerd and Kubernetes (`cri-containerd-<id>.scope`,
/// `/kubepods/.../<id>`), CRI-O (`crio-<id>.scope`) and podman
/// (`libpod-<id>.scope`). Monitor processes (`*-conmon-<id>`) are not inside
/// the container and are skipped. The innermost match wins.
pub(crate) fn container_id(cgroup_file: &str) -> Option<String> {
    let mut found = None;
    for line in cgroup_file.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        for component in path.split('/') {
            if component.contains("conmon") {
                continue;
            }
            if let Some(id) = hex64_in(component) {
                found = Some(id.to_ascii_lowercase());
            }
        }
        // The v2 line is authoritative when it names a container.
        if line.starts_with("0::") && found.is_some() {
            return found;
        }
    }
    found
}

/// The first run of exactly 64 hex digits in `s` bounded by non-hex
/// characters (or the ends).
fn hex64_in(s: &str) -> Option<&str> {
    let bytes = s.as_bytes();
    let mut start = 0;
    while start < bytes.len() {
        if !bytes[start].is_ascii_hexdigit() {
            start += 1;
            continue;
        }
        let mut end = start;
        while end < bytes.len() && bytes[end].is_ascii_hexdigit() {
            end += 1;
        }
        if end - start == 64 {
            return s.get(start..end);
        }
        start = end;
    }
    None
}

/// Parses `/etc/passwd` into uid -> user name. The first entry of a uid
/// wins, as with `getpwuid`.
pub(crate) fn parse_passwd(text: &str) -> HashMap<u32, String> {
    let mut users = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut parts = line.split(':');
        let (Some(name), Some(_pw), Some(uid)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if let Ok(uid) = uid.parse::<u32>() {
            users.entry(uid).or_insert_with(|| name.to_owned());
        }
    }
    users
}

/// Splits the `readlink` result of `/proc/<pid>/exe` into the path and
/// whether the file still exists (the kernel appends ` (deleted)` to the
/// target of an unlinked image).
pub(crate) fn split_deleted(target: &str) -> (String, bool) {
    match target.strip_suffix(" (deleted)") {
        Some(path) => (path.to_owned(), false),
        None => (target.to_owned(), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ID: &str = "4f1c2a3b4c5d6e7f80919293949596979899aabbccddeeff0011223344556677";

    fn stat_line(pid: u32, comm: &str, ppid: u32, start: u64) -> String {
        format!(
            "{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 120 0 0 0 1 2 0 0 20 0 1 0 {start} \
             12345 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0"
        )
    }

    #[test]
    fn stat_with_hostile_comm() {
        let s = parse_stat(&stat_line(42, "a) b (c) S 9 9", 7, 123_456)).unwrap();
        assert_eq!(s.comm, "a) b (c) S 9 9");
        assert_eq!((s.state, s.ppid, s.start_ticks), ('S', 7, 123_456));
        assert!(!s.is_kernel_thread());
    }

    #[test]
    fn stat_of_kernel_thread_and_errors() {
        let line = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 3 0 0 \
                    18446744073709551615 0 0 0 0 0 0 0 2147483647 0 0 0 0 17 0 0 0 0 0 0";
        let s = parse_stat(line).unwrap();
        assert!(s.is_kernel_thread());
        assert_eq!((s.ppid, s.start_ticks), (0, 3));
        assert!(parse_stat("").is_err());
        assert!(parse_stat("1 (x) S 0 1").is_err());
        assert!(parse_stat("1 )x( S").is_err());
    }

    proptest! {
        #[test]
        fn stat_parses_any_comm(comm in "[^\u{0}\n]{0,15}", pid in 1u32.., ppid in 0u32.., start in 0u64..) {
            let s = parse_stat(&stat_line(pid, &comm, ppid, start)).unwrap();
            prop_assert_eq!(s.comm, comm);
            prop_assert_eq!(s.ppid, ppid);
            prop_assert_eq!(s.start_ticks, start);
        }

        #[test]
        fn parsers_never_panic(text in "\\PC{0,200}") {
            let _ = parse_stat(&text);
            let _ = parse_status(&text);
            let _ = parse_cgroup(&text);
            let _ = container_id(&text);
            let _ = parse_passwd(&text);
            let _ = parse_cmdline(text.as_bytes());
        }
    }

    #[test]
    fn status_ids() {
        let st = parse_status("Name:\tx\nTgid:\t42\nUid:\t1000\t1001\t1000\t1000\nGid:\t100\t101\t100\t100\n");
        assert_eq!(st.tgid, Some(42));
        assert_eq!((st.uid, st.euid, st.gid, st.egid), (Some(1000), Some(1001), Some(100), Some(101)));
        assert_eq!(parse_status("Uid:\tx\n").uid, None);
    }

    #[test]
    fn cmdline_split() {
        assert_eq!(parse_cmdline(b""), None);
        assert_eq!(parse_cmdline(b"a\0b c\0\0"), Some(vec!["a".into(), "b c".into(), "".into()]));
        assert_eq!(parse_cmdline(b"nginx: worker"), Some(vec!["nginx: worker".into()]));
    }

    #[test]
    fn cgroup_paths_and_container_ids() {
        let v2 = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(parse_cgroup(&v2).as_deref(), Some(&*format!("/system.slice/docker-{ID}.scope")));
        assert_eq!(container_id(&v2).as_deref(), Some(ID));
        let v1 = format!("12:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n");
        assert_eq!(parse_cgroup(&v1).as_deref(), Some(&*format!("/docker/{ID}")));
        assert_eq!(container_id(&v1).as_deref(), Some(ID));
        for path in [
            format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope"),
            format!("/kubepods/besteffort/pod1234/{ID}"),
            format!("/machine.slice/crio-{ID}.scope"),
            format!("/user.slice/user-1000.slice/user@1000.service/libpod-{ID}.scope/container"),
        ] {
            assert_eq!(container_id(&format!("0::{path}\n")).as_deref(), Some(ID), "{path}");
        }
        assert_eq!(container_id(&format!("0::/machine.slice/libpod-conmon-{ID}.scope\n")), None);
        assert_eq!(container_id("0::/user.slice/user-1000.slice/session-2.scope\n"), None);
        // 32 hex digits are not a container id; 65 are not either.
        assert_eq!(container_id("4:memory:/process_api/d16b6e9e0fe5dd536e901652341f010c\n"), None);
        assert_eq!(container_id(&format!("0::/docker/{ID}a\n")), None);
        assert_eq!(parse_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn passwd_and_deleted() {
        let users =
            parse_passwd("# c\nroot:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/h:/bin/sh\ndup:x:0:0::/:/\nbad\n");
        assert_eq!(users.get(&0).map(String::as_str), Some("root"));
        assert_eq!(users.get(&1000).map(String::as_str), Some("alice"));
        assert_eq!(split_deleted("/usr/bin/x (deleted)"), ("/usr/bin/x".into(), false));
        assert_eq!(split_deleted("/usr/bin/x"), ("/usr/bin/x".into(), true));
    }
}
