//! stepstone: a node-graph studio for image-anchored text-to-video generation (I4VGen).
//!
//! Layers, each depending only on those below it:
//! - [`graph`]: node kinds, ports, parameters, validation, preset files (no GUI, no tensors);
//! - [`values`]: what travels along links (one variant per port type) and the types it carries;
//! - [`runtime`]: the lazy, cached, cancellable evaluation engine and its background worker;
//! - [`nodes`]: evaluators of the built-in node kinds;
//! - [`models`], [`schedulers`]: the networks in burn and the DDIM scheduler (a library of their own);
//! - [`pipelines`]: the I4VGen stages and plain text-to-video over them, with one noise source;
//! - [`video`]: clips and writing them out;
//! - [`open`]: reading a graph from a preset or from a clip that carries one;
//! - [`ui`]: the graph editor window (egui, egui-snarl);
//! - [`device`]: the compute device and float precision both front ends open;
//! - [`cli`]: the command-line front end; [`signals`]: Ctrl-C and SIGTERM for both front ends.

pub mod cli;
pub mod device;
pub mod graph;
pub mod models;
pub mod nodes;
pub mod open;
pub mod paths;
pub mod pipelines;
pub mod runtime;
pub mod schedulers;
pub mod signals;
pub mod ui;
pub mod values;
pub mod video;

use std::path::PathBuf;

/// An engine with every built-in node kind, resolving model paths in `models_dir`.
pub fn builtin_engine(models_dir: PathBuf) -> runtime::Engine {
    runtime::Engine::new(nodes::registry(), nodes::builtin_evaluators(), models_dir)
}
