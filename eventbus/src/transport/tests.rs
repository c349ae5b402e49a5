#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use super::*;

#[test]
fn pipe_names_are_checked() {
    let ok = Path::new(r"\\.\pipe\daemoneye-bus-0123456789abcdef");
    assert_eq!(validate_pipe_name(ok).unwrap(), r"\\.\pipe\daemoneye-bus-0123456789abcdef");
    for bad in [r"\\.\pipe\", r"\\.\pipe\a\b", r"C:\run\bus.sock", "/run/bus.sock", "\\\\.\\pipe\\a\0b"] {
        assert!(validate_pipe_name(Path::new(bad)).is_err(), "{bad:?} accepted");
    }
    let long = format!(r"\\.\pipe\{}", "x".repeat(248));
    let err = validate_pipe_name(Path::new(&long)).unwrap_err();
    assert!(err.contains("longer than 247"), "{err}");
    assert!(validate_pipe_name(Path::new(&long[..long.len() - 1])).is_ok());
}

#[test]
fn the_descriptor_grants_only_system_and_administrators() {
    let (owner, dacl) = PIPE_SDDL.split_once("D:").unwrap();
    assert!(owner.starts_with("O:BA"), "owner must be Administrators: {owner}");
    assert!(dacl.starts_with("P("), "the DACL must be protected (no inherited entries)");
    let aces: Vec<&str> =
        dacl.trim_start_matches('P').split_terminator(')').map(|a| a.trim_start_matches('(')).collect();
    assert_eq!(aces, vec!["A;;GA;;;SY", "A;;GA;;;BA"]);
}

#[test]
fn windows_peers_map_onto_the_acl_ids() {
    let user = "S-1-5-21-1004336348-1177238915-682003330-1001";
    let none_group = "S-1-5-21-1004336348-1177238915-682003330-513";
    // SYSTEM and elevated administrators are root, whatever their SID.
    assert_eq!(windows_peer_ids("S-1-5-18", Some("S-1-5-18"), false), (0, 0));
    assert_eq!(windows_peer_ids("s-1-5-18", None, false), (0, 0));
    assert_eq!(windows_peer_ids(user, Some(none_group), true), (0, 0));
    // Anyone else: the relative ids, never 0.
    assert_eq!(windows_peer_ids(user, Some(none_group), false), (1001, 513));
    assert_eq!(windows_peer_ids("S-1-5-19", None, false), (19, WINDOWS_UNKNOWN_ID)); // LocalService
    assert_eq!(windows_peer_ids("S-1-5-21-1-2-3-0", None, false).0, WINDOWS_UNKNOWN_ID);
    for garbage in ["", "S-1", "S-1-5", "X-1-5-21-1001", "S-2-5-21", "S-1-5-21-x", "S-1-5-21-99999999999"] {
        assert_eq!(windows_peer_ids(garbage, None, false), (WINDOWS_UNKNOWN_ID, WINDOWS_UNKNOWN_ID), "{garbage:?}");
    }
}

#[test]
fn a_mapped_windows_peer_meets_the_default_policy_as_root() {
    use crate::acl::{AccessPolicy, Operation};
    let policy = AccessPolicy::default();
    let (uid, gid) = windows_peer_ids("S-1-5-18", None, false);
    let system = PeerIdentity { uid, gid, pid: 4321, exe: None };
    let (uid, gid) = windows_peer_ids("S-1-5-21-1-2-3-1001", None, false);
    let user = PeerIdentity { uid, gid, pid: 4322, exe: None };
    let broker = WINDOWS_PRIVILEGED_ID;
    assert!(policy.check_topic(Operation::Publish, "events.process.lifecycle", &system, broker).is_ok());
    assert!(policy.check_topic(Operation::Publish, "control.collector.task", &system, broker).is_ok());
    assert!(policy.check_topic(Operation::Publish, "events.process.lifecycle", &user, broker).is_err());
    assert!(policy.check_topic(Operation::Subscribe, "control.health.bus", &user, broker).is_ok());
}

#[cfg(unix)]
mod unix {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::super::*;

    #[tokio::test]
    async fn a_unix_listener_serves_streams_with_the_peers_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("t.sock");
        let mut listener = Listener::bind(&path, &BindOptions::default()).await.unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert_eq!(listener.endpoint(), path);
        assert_eq!(listener.owner().uid, meta.uid());
        assert_eq!(listener.owner().pid, std::process::id());
        assert!(endpoint_exists(&path));

        let (client, server) = tokio::join!(connect(&path), listener.accept());
        let (mut client, server) = (client.unwrap(), server.unwrap());
        let peer = server.peer_identity().await.unwrap();
        assert_eq!(peer.pid, std::process::id(), "SO_PEERCRED pid of this test process");
        assert_eq!(peer.uid, listener.owner().uid, "SO_PEERCRED uid: this process's, which owns the socket");
        assert_eq!(peer.exe, std::env::current_exe().ok());

        // Bytes go both ways through the halves.
        let (mut rd, mut wr) = server.into_split();
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        rd.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        wr.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");

        // Dropping the listener removes its socket.
        drop(listener);
        assert!(!path.exists());
        assert!(!endpoint_exists(&path));
        let err = connect(&path).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    /// A writer far ahead of its reader fills the socket buffer, waits for
    /// room (the only time it asks for write readiness) and goes on; every
    /// byte arrives in order, and dropping the write half ends the stream.
    #[tokio::test]
    async fn a_writer_waits_for_a_slow_reader_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let mut listener = Listener::bind(&path, &BindOptions::default()).await.unwrap();
        let (client, server) = tokio::join!(connect(&path), listener.accept());
        let (_client_rd, mut wr) = client.unwrap().into_split();
        let (mut rd, _server_wr) = server.unwrap().into_split();
        const TOTAL: usize = 8 << 20;
        let byte = |i: usize| (i % 251) as u8;
        let writer = tokio::spawn(async move {
            let data: Vec<u8> = (0..TOTAL).map(byte).collect();
            let mut sent = 0;
            while sent < TOTAL {
                let rest = &data[sent..];
                let mid = rest.len().min(1000);
                let n =
                    wr.write_vectored(&[io::IoSlice::new(&rest[..mid]), io::IoSlice::new(&rest[mid..])]).await.unwrap();
                assert!(n > 0);
                sent += n;
            }
            wr.flush().await.unwrap();
            sent
        });
        let mut got = 0usize;
        let mut buf = vec![0u8; 4096];
        loop {
            // A slow reader: the writer must wait on a full buffer.
            tokio::time::sleep(std::time::Duration::from_micros(50)).await;
            let n = rd.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            for (k, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, byte(got + k), "byte {}", got + k);
            }
            got += n;
        }
        assert_eq!(writer.await.unwrap(), TOTAL);
        assert_eq!(got, TOTAL, "every byte written arrived in order, then the end of the stream");
    }

    #[tokio::test]
    async fn a_second_listener_on_a_live_socket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let _first = Listener::bind(&path, &BindOptions { mode: 0o600, gid: None }).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let err = Listener::bind(&path, &BindOptions::default()).await.unwrap_err();
        assert!(matches!(err, BusError::AlreadyRunning { .. }), "{err}");
    }

    #[tokio::test]
    async fn incoming_yields_accepted_streams() {
        use futures::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let listener = Listener::bind(&path, &BindOptions::default()).await.unwrap();
        let mut incoming = Box::pin(listener.into_incoming());
        let _client = connect(&path).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert_eq!(accepted.peer_identity().await.unwrap().pid, std::process::id());
        drop(incoming);
        assert!(!path.exists(), "dropping the incoming stream drops the listener");
    }
}
