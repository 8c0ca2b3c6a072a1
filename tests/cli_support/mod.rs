//! Helpers for the tests that run the `stepstone` binary (tests/cli.rs, tests/security.rs).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `stepstone ARGS` in `dir`, with no models directory from the environment.
pub fn stepstone(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stepstone"))
        .args(args)
        .current_dir(dir)
        .env_remove("STEPSTONE_MODELS")
        .output()
        .unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A path in the repository, as text.
pub fn repo(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel).display().to_string()
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `--set` overrides that make the demo graph run in a second or two.
pub const SMALL_DEMO: [&str; 10] = [
    "--set",
    "candidates.count=2",
    "--set",
    "candidates.steps=2",
    "--set",
    "animator.frames=3",
    "--set",
    "animator.steps=2",
    "--set",
    "regenerator.steps=2",
];

/// `stepstone run PRESET` on the demo models, made small by [`SMALL_DEMO`], with `extra` arguments, in `dir`.
pub fn run_small(dir: &Path, preset: &Path, extra: &[&str]) -> Output {
    let models = repo("assets/demo-models");
    let mut args = vec!["run", preset.to_str().unwrap(), "--models", &models, "--quiet"];
    args.extend(SMALL_DEMO);
    args.extend(extra);
    stepstone(&args, dir)
}
