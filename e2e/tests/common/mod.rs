//! Setup shared by the end-to-end test files (each file is its own crate and
//! uses a part of this, hence the `dead_code` allowance).

#![allow(dead_code)]

use alces_e2e::{Cluster, Options, Proc};

/// One mebibyte.
pub const MIB: usize = 1024 * 1024;

/// A command's standard output as text.
pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command's standard error as text.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The cluster the client library's tests run against: two chunkservers,
/// goal 2 (so a chunk has a copy on each), 1 MiB chunks (files span several),
/// a 10 s session timeout and no metalogger.
pub fn library_options() -> Options {
    Options {
        chunkservers: 2,
        chunk_size: Some("1MiB".into()),
        goal: Some(2),
        env: vec![("ALCES_SESSION_TIMEOUT".into(), "10".into())],
        metaloggers: 0,
        ..Options::default()
    }
}

/// Starts [`library_options`]'s cluster from an async test (off the
/// runtime's worker threads).
pub async fn start_library_cluster() -> Cluster {
    tokio::task::spawn_blocking(|| Cluster::start(library_options()).expect("start cluster"))
        .await
        .expect("cluster start task")
}

/// SIGKILLs the master and starts it again on the same address and data,
/// without waiting for it (clients reconnect by themselves). Callable from an
/// async test on a multi-threaded runtime.
pub fn restart_master(c: &Cluster) {
    tokio::task::block_in_place(|| {
        c.kill9(Proc::Master);
        c.restart_nowait(Proc::Master);
    });
}

/// SIGKILLs the master for good. Callable from an async test on a
/// multi-threaded runtime.
pub fn kill_master(c: &Cluster) {
    tokio::task::block_in_place(|| c.kill9(Proc::Master));
}

/// Issues a credential named `name` with the CLI (`extra`: its rule's
/// flags); returns its id and the file holding its token.
pub fn issue_credential(c: &Cluster, name: &str, extra: &[&str]) -> (u64, std::path::PathBuf) {
    let token = c.dir.join(format!("{name}.token"));
    let mut args = vec![
        "credential",
        "issue",
        "--name",
        name,
        "--token-file",
        token.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let v = c.cli_json(&args).expect("alces credential issue");
    (v["id"].as_u64().expect("id"), token)
}
