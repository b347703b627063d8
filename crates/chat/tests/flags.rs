//! Sampling flags out of range are refused when the command line is read,
//! before any model is loaded.

use std::process::Command;

#[test]
fn sampling_flags_out_of_range_are_refused() {
    for (flag, value, says) in [
        ("--temperature", "-1", "must be 0 or above"),
        ("--temperature", "nan", "not a finite number"),
        ("--top-p", "0", "must be in (0, 1]"),
        ("--top-p", "1.5", "must be in (0, 1]"),
        ("--repetition-penalty", "0", "must be above 0"),
        ("--max-new-tokens", "0", "must be at least 1"),
    ] {
        let arg = format!("{flag}={value}"); // `=`: a value may start with a minus sign
        let output = Command::new(env!("CARGO_BIN_EXE_chat")).args(["--model", "nowhere", &arg]).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
    }
    // In range, the flags pass and the missing model is what is reported.
    let output =
        Command::new(env!("CARGO_BIN_EXE_chat")).args(["--model", "nowhere", "--top-p", "0.9"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--model nowhere: not a run directory"), "{stderr}");
}
