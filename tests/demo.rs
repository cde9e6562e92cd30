//! `statusd demo` through the real binary, its output sent to pipes as from a script or CI.

use std::process::{Command, Stdio};

fn demo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_statusd"))
        .arg("demo")
        .arg("--once")
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("the demo runs")
}

#[test]
fn demo_output_sent_to_a_file_has_no_colour_codes_and_a_summary() {
    let out = demo(&["--events", "120"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("totals:"), "{stdout}");
    // The refused tenant's dead letters are logged at error level: plain text, no ANSI.
    assert!(stderr.contains("report dead-lettered"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "colour codes in a pipe: {stderr:?}"
    );
    assert!(
        !stdout.contains('\x1b'),
        "colour codes in a pipe: {stdout:?}"
    );
    // Progress goes out as whole lines, never glued to a log line.
    for line in stderr.lines() {
        assert!(
            !(line.contains("delivered") && line.contains("dead-lettered")),
            "progress and a log line share a line: {line:?}"
        );
    }
}

#[test]
fn demo_on_a_tree_without_customers_still_runs() {
    let out = demo(&["--tenants", "0", "--events", "5"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("totals:"), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
