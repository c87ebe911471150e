//! Logging: info by default, `RUST_LOG` honoured, `--log-level` wins over it; logs and
//! the summary go to stderr, records alone to stdout; no progress line when stderr is
//! not a terminal.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_weir");

const TOPOLOGY: &str = r#"
[job]
parallelism = 1

[[source]]
id = "nums"
type = "generator"
count = 3

[[sink]]
id = "out"
type = "stdout"
input = "nums"
"#;

fn run(rust_log: Option<&str>, extra: &[&str]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.toml"), TOPOLOGY).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir.path())
        .args(extra)
        .args(["run", "t.toml"]);
    match rust_log {
        Some(l) => cmd.env("RUST_LOG", l),
        None => cmd.env_remove("RUST_LOG"),
    };
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn info_by_default_rust_log_honoured_flag_wins() {
    let (stdout, stderr) = run(None, &[]);
    assert_eq!(stdout, "{\"i\":0}\n{\"i\":1}\n{\"i\":2}\n");
    assert!(stderr.contains(" INFO "), "{stderr}");
    assert!(stderr.contains("job `t` finished in"), "{stderr}");
    assert!(
        !stderr.contains('\r') && !stderr.contains("\x1b[K"),
        "no progress line: {stderr:?}"
    );

    let (_, stderr) = run(Some("warn"), &[]);
    assert!(!stderr.contains(" INFO "), "{stderr}");
    assert!(
        stderr.contains("job `t` finished in"),
        "the summary is not a log line: {stderr}"
    );

    let (_, stderr) = run(Some("warn"), &["--log-level", "info"]);
    assert!(stderr.contains(" INFO "), "{stderr}");

    let (_, stderr) = run(None, &["--log-level", "debug"]);
    assert!(stderr.contains("DEBUG"), "{stderr}");
    let (_, stderr) = run(None, &[]);
    assert!(!stderr.contains("DEBUG"), "{stderr}");
}
