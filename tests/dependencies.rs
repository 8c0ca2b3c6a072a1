//! One wgpu and one egui in the dependency graph, so the UI and the models can share a device.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn a_single_wgpu_and_a_single_egui() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = Command::new(cargo)
        .args(["tree", "--locked", "--duplicates", "--edges", "normal", "--depth", "0", "--prefix", "none"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let dups: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("wgpu ")
                || l.starts_with("egui ")
                || l.starts_with("wgpu-core ")
                || l.starts_with("burn-core ")
        })
        .collect();
    assert!(dups.is_empty(), "duplicated crates that must be single: {dups:?}");
    // The check itself must see the tree: both crates are in it.
    let all = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()))
        .args(["tree", "--locked", "--edges", "normal", "--prefix", "none", "-i", "wgpu"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    let inverse = String::from_utf8_lossy(&all.stdout);
    assert!(inverse.contains("eframe") && inverse.contains("burn"), "wgpu must serve both eframe and burn:\n{inverse}");
}
