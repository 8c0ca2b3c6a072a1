//! `stepstone run`: a preset, headless, with progress bars.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{RunArgs, apply_override, describe_models_dir};
use crate::graph::{KindRegistry, validate};
use crate::paths::models_dir;
use crate::runtime::{Event, NodeStatus, RunOutcome, Worker};

pub(super) fn run(args: RunArgs) -> anyhow::Result<()> {
    let registry = KindRegistry::builtin();
    let mut graph = super::load_graph(&args.preset)?;
    for text in &args.set {
        apply_override(&mut graph, &registry, text)?;
    }
    if let Some(out) = &args.out {
        // An unknown format is refused before any work is done.
        crate::video::encode::Format::from_path(out)?;
        let exports: Vec<String> =
            graph.nodes.iter().filter(|(_, n)| n.kind == "export").map(|(id, _)| id.clone()).collect();
        match exports.as_slice() {
            [one] => {
                let value = serde_json::Value::from(out.to_string_lossy().into_owned());
                graph.set_param(&registry, one, "path", value).map_err(anyhow::Error::msg)?;
            }
            [] => bail!("--out: {} has no Export node to write to", args.preset.display()),
            many => bail!(
                "--out: {} has {} Export nodes ({}); use --set NODE.path=... instead",
                args.preset.display(),
                many.len(),
                many.join(", ")
            ),
        }
    }

    let (dir, source) = models_dir(args.models.clone());
    let engine = crate::builtin_engine(dir.clone());
    let report = validate(&graph, &registry, &engine.validate_options());
    for m in report.messages.iter().filter(|m| m.severity == crate::graph::Severity::Warning) {
        eprintln!("{}: {m}", args.preset.display());
    }
    // Refuse to start when a node the run needs cannot run; report every such error.
    let plan = engine.plan(&graph, &args.targets).with_context(|| format!("{}", args.preset.display()))?;
    let blocked: Vec<_> = plan
        .nodes
        .iter()
        .filter(|p| p.pulled && matches!(p.status, NodeStatus::Blocked { .. }))
        .map(|p| p.id.clone())
        .collect();
    if !blocked.is_empty() {
        for m in report.errors().filter(|m| m.node.as_ref().is_none_or(|n| blocked.contains(n))) {
            eprintln!("{}: {m}", args.preset.display());
        }
        bail!(
            "{}: cannot run: {} node(s) have errors (models directory: {})",
            args.preset.display(),
            blocked.len(),
            describe_models_dir(&dir, source)
        );
    }

    let device = args.device;
    let mut worker =
        Worker::spawn(move || engine.with_device(device.device()), None).context("cannot start the worker thread")?;
    worker.set_graph(graph).map_err(anyhow::Error::msg)?;
    let run_id = worker.run(args.targets.clone()).map_err(anyhow::Error::msg)?;

    let bar = ProgressBar::with_draw_target(
        Some(0),
        if args.quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() },
    );
    bar.set_style(
        ProgressStyle::with_template("{prefix:>14} [{bar:32}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut failures: BTreeMap<String, String> = BTreeMap::new();
    let outcome = loop {
        let event = match worker.wait_event(Duration::from_millis(100)) {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(e) => bail!("{e}"),
        };
        if event.run_id().is_some_and(|id| id != run_id) {
            continue;
        }
        match event {
            Event::NodeStarted { node, .. } => {
                bar.set_prefix(node);
                bar.set_length(0);
                bar.set_position(0);
                bar.set_message("");
            }
            Event::Progress { step, total, .. } => {
                bar.set_length(total);
                bar.set_position(step);
            }
            Event::NodeNote { node, text, .. } => say(&bar, format!("{node}: {text}")),
            Event::NodeFinished { node, cached, elapsed, .. } => {
                if !args.quiet {
                    let how = if cached { "cached".to_string() } else { format!("{:.2} s", elapsed.as_secs_f64()) };
                    say(&bar, format!("done {node} ({how})"));
                }
            }
            Event::NodeFailed { node, message, .. } => {
                say(&bar, format!("error: node '{node}' failed: {message}"));
                failures.insert(node, message);
            }
            Event::NodeSkipped { node, reason, .. } => {
                say(&bar, format!("skipped: node '{node}': {reason}"));
            }
            Event::RunFinished { outcome, .. } => break outcome,
            _ => {}
        }
    };
    bar.finish_and_clear();
    worker.shutdown();
    match outcome {
        RunOutcome::Completed => Ok(()),
        RunOutcome::Cancelled => bail!("the run was cancelled"),
        RunOutcome::Rejected { message } => bail!("{}: {message}", args.preset.display()),
        RunOutcome::Failed { failed } => {
            let list: Vec<String> = failed
                .iter()
                .map(|n| match failures.get(n) {
                    Some(m) => format!("'{n}' ({m})"),
                    None => format!("'{n}'"),
                })
                .collect();
            bail!("{}: {} node(s) failed: {}", args.preset.display(), failed.len(), list.join("; "))
        }
    }
}

/// Prints a line above the progress bar (also when the bar is hidden, as under --quiet or without a
/// terminal, where `ProgressBar::println` would print nothing).
fn say(bar: &ProgressBar, text: String) {
    bar.suspend(|| eprintln!("{text}"));
}
