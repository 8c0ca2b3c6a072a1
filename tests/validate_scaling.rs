//! Validation and planning are linear in nodes + links (issue 11: a 16k-node chain took 72 s to validate, as
//! the cycle and input checks scanned every link for every node).
//!
//! The complexity check runs in the suite; the 100k-node benchmark is ignored by default:
//! `cargo test --test validate_scaling -- --ignored --nocapture`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use stepstone::graph::{Graph, KindRegistry, KindSpec, Node, PortRef, PortSpec, PortType, ValidateOptions, validate};
use stepstone::runtime::{Engine, Evaluators, NodeOutputs};

const PASS: KindSpec = KindSpec {
    id: "pass",
    title: "Pass",
    category: "Test",
    version: 1,
    description: "passes an integer on",
    inputs: &[PortSpec::optional("x", PortType::Int, "in")],
    outputs: &[PortSpec::output("y", PortType::Int, "out")],
    params: &[],
    is_output: true,
    pick: None,
    more: None,
};

fn registry() -> KindRegistry {
    let mut r = KindRegistry::empty();
    r.register(PASS);
    r
}

/// `n` nodes in a chain, each feeding the next (ids sort in chain order).
fn chain(n: usize) -> Graph {
    let mut g = Graph::new();
    for i in 0..n {
        g.insert_node(format!("n{i:07}"), Node::new("pass"));
    }
    for i in 1..n {
        g.links.insert(stepstone::graph::Link {
            from: PortRef::new(format!("n{:07}", i - 1), "y"),
            to: PortRef::new(format!("n{i:07}"), "x"),
        });
    }
    g
}

/// The fastest of three runs of `f`.
fn best_of_three(mut f: impl FnMut()) -> Duration {
    (0..3)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn validate_time(g: &Graph, reg: &KindRegistry) -> Duration {
    best_of_three(|| {
        let report = validate(g, reg, &ValidateOptions::default());
        assert!(!report.has_errors(), "{report}");
    })
}

fn plan_time(g: &Graph, reg: &KindRegistry) -> Duration {
    let mut ev = Evaluators::new();
    ev.register("pass", |_: &mut stepstone::runtime::EvalContext<'_>| Ok(NodeOutputs::new()));
    let engine = Engine::new(reg.clone(), ev, std::path::PathBuf::from("models"));
    let last = g.nodes.keys().next_back().cloned().unwrap_or_default();
    best_of_three(|| {
        let plan = engine.plan(g, std::slice::from_ref(&last)).unwrap();
        assert_eq!(plan.stale().len(), g.nodes.len());
    })
}

#[test]
fn validation_and_planning_grow_linearly() {
    let reg = registry();
    let (small, large) = (chain(5_000), chain(20_000));
    // Four times the nodes: a linear pass takes about four times as long, a quadratic one sixteen times.
    // The bound leaves room for a busy machine and for the logarithms of the ordered maps.
    let ratio = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64().max(1e-6);
    let (vs, vl) = (validate_time(&small, &reg), validate_time(&large, &reg));
    assert!(ratio(vs, vl) < 9.0, "validate: 5k nodes {vs:?}, 20k nodes {vl:?} (x{:.1})", ratio(vs, vl));
    let (ps, pl) = (plan_time(&small, &reg), plan_time(&large, &reg));
    assert!(ratio(ps, pl) < 9.0, "plan: 5k nodes {ps:?}, 20k nodes {pl:?} (x{:.1})", ratio(ps, pl));

    // A cycle is still found, on exactly the nodes that lie on it.
    let mut g = chain(1_000);
    g.links.insert(stepstone::graph::Link { from: PortRef::new("n0000999", "y"), to: PortRef::new("n0000500", "x") });
    let report = validate(&g, &reg, &ValidateOptions::default());
    let cycle_nodes = report.errors().filter(|m| m.text.contains("part of a cycle")).count();
    assert_eq!(cycle_nodes, 500, "n500..=n999 lie on the cycle, n0..n499 do not");
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn bench_validate_a_100k_node_chain() {
    let reg = registry();
    let g16 = chain(16_000);
    let (v16, p16) = (validate_time(&g16, &reg), plan_time(&g16, &reg));
    println!("16k-node chain: validate {:.3} s, plan {:.3} s (best of 3)", v16.as_secs_f64(), p16.as_secs_f64());
    let g = chain(100_000);
    let v = validate_time(&g, &reg);
    let p = plan_time(&g, &reg);
    println!("100k-node chain: validate {:.3} s, plan {:.3} s (best of 3)", v.as_secs_f64(), p.as_secs_f64());
    assert!(v < Duration::from_secs(1), "validate took {v:?}");
}
