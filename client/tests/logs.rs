//! Log output of `alces-mount` when stderr is not a terminal.

use std::process::Command;

/// Logs written to a file or pipe carry no ANSI colour codes.
#[test]
fn logs_to_a_pipe_are_plain_text() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such-mount-point");
    let out = Command::new(env!("CARGO_BIN_EXE_alces-mount"))
        .arg(&missing)
        .args(["--master", "127.0.0.1:1"])
        .env("ALCES_SECRET", "log-test-secret-0123456789abcdef")
        .env_remove("ALCES_SECRET_FILE")
        .env_remove("RUST_LOG")
        .output()
        .expect("run alces-mount");
    assert!(
        !out.status.success(),
        "mounting on a missing directory must fail"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ERROR") && err.contains("no-such-mount-point"),
        "expected an error log line naming the mount point, got: {err}"
    );
    assert!(
        !err.contains('\x1b'),
        "log output to a pipe contains ANSI escape codes: {err:?}"
    );
}
