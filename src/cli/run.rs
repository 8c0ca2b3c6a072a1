//! `stepstone run`: a preset, headless, with progress bars.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{RunArgs, apply_override, describe_models_dir};
use crate::graph::{AccessPolicy, validate};
use crate::paths::models_dir;
use crate::runtime::{Event, NodeStatus, RunOutcome, Worker};
use crate::signals::{self, Action, Interrupted};

pub(super) fn run(args: RunArgs) -> anyhow::Result<()> {
    let registry = crate::nodes::registry();
    let mut graph = super::load_graph(&args.preset)?;
    let (dir, source) = models_dir(args.models.clone());
    let mut access = AccessPolicy::new(dir.clone(), args.out_dir.clone());
    access.allow_inputs = args.allow_paths;
    for text in &args.set {
        if let Some(chosen) = apply_override(&mut graph, &registry, text)? {
            access.chosen.insert(chosen);
        }
    }
    if let Some(out) = &args.out {
        // An unknown format is refused before any work is done.
        crate::video::encode::Format::from_path(out)?;
        // The nodes that write a file: those whose kind has an output path parameter (Export).
        let exports: Vec<(String, &'static str)> = graph
            .nodes
            .iter()
            .filter_map(|(id, n)| Some((id.clone(), registry.get(&n.kind)?.output_path()?)))
            .collect();
        match exports.as_slice() {
            [(one, param)] => {
                let text = out.to_string_lossy().into_owned();
                graph
                    .set_param(&registry, one, param, serde_json::Value::from(text.clone()))
                    .map_err(anyhow::Error::msg)?;
                // The user named this path on the command line: it may point anywhere.
                access.choose(one, param, &text);
            }
            [] => bail!("--out: {} has no Export node to write to", args.preset.display()),
            many => bail!(
                "--out: {} has {} Export nodes ({}); use --set NODE.path=... instead",
                args.preset.display(),
                many.len(),
                many.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    let engine = crate::builtin_engine(dir.clone()).with_access(access);
    let report = validate(&graph, &registry, &engine.validate_options());
    for m in report.messages.iter().filter(|m| m.severity == crate::graph::Severity::Warning) {
        eprintln!("{}: {m}", args.preset.display());
    }
    // Refuse to start when a node the run needs cannot run; name each node with an error of its own (the
    // nodes that only depend on one are counted, not repeated).
    let plan = engine.plan(&graph, &args.targets).with_context(|| format!("{}", args.preset.display()))?;
    let blocked: Vec<_> =
        plan.nodes.iter().filter(|p| p.pulled && matches!(p.status, NodeStatus::Blocked { .. })).collect();
    if !blocked.is_empty() {
        let own: Vec<_> = blocked.iter().filter(|p| p.own_error).collect();
        for p in &own {
            for m in report.errors().filter(|m| m.node.as_deref() == Some(p.id.as_str())) {
                eprintln!("{}: {m}", args.preset.display());
            }
            if !report.node_has_error(&p.id)
                && let NodeStatus::Blocked { reason } = &p.status
            {
                eprintln!("{}: error: node '{}': {reason}", args.preset.display(), p.id);
            }
        }
        for m in report.errors().filter(|m| m.node.is_none()) {
            eprintln!("{}: {m}", args.preset.display());
        }
        let names: Vec<String> = own.iter().map(|p| format!("'{}'", p.id)).collect();
        let waiting = blocked.len() - own.len();
        let also = if waiting > 0 {
            format!("; {waiting} node(s) that depend on it cannot run either")
        } else {
            String::new()
        };
        let files = engine.access();
        let needs_permission = crate::graph::file_uses(&graph, &registry, files)
            .into_iter()
            .any(|f| matches!(f.verdict, crate::graph::Verdict::NeedsPermission(_)));
        let hint = if needs_permission {
            "; to let this graph read the files it names, pass --allow-paths".to_string()
        } else {
            String::new()
        };
        let who = match names.len() {
            0 => "the graph has an error".to_string(),
            1 => format!("node {} has an error", names[0]),
            _ => format!("nodes {} have errors", names.join(", ")),
        };
        bail!(
            "{}: cannot run: {who}{also} (models directory: {}){hint}",
            args.preset.display(),
            describe_models_dir(&dir, source)
        );
    }

    // Ctrl-C / SIGTERM cancel the run through the engine (exports remove their temporaries); a second one
    // exits at once.
    signals::install().context("cannot install the Ctrl-C handler")?;
    let mut watch = signals::Watch::default();
    let device = super::open_device(args.device, args.dtype)?;
    let memory_limit = args.memory_limit.map(|mb| mb.saturating_mul(1_000_000));
    let mut worker = Worker::spawn(
        move || {
            let mut engine = engine.with_device(device);
            engine.set_memory_limit(memory_limit);
            engine
        },
        None,
    )
    .context("cannot start the worker thread")?;
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
        match watch.poll() {
            Action::None => {}
            Action::Cancel => {
                say(&bar, "interrupted: cancelling the run (press Ctrl-C again to quit at once)".to_string());
                worker.cancel();
            }
            Action::Exit => signals::exit_now(),
        }
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
            Event::NodeFinished { node, cached, elapsed, .. } if !args.quiet => {
                let how = if cached { "cached".to_string() } else { format!("{:.2} s", elapsed.as_secs_f64()) };
                say(&bar, format!("done {node} ({how})"));
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
    if watch.interrupted() {
        crate::video::output::remove_temporaries();
        return Err(Interrupted.into());
    }
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
