//! The built-in node kinds. Each kind is one unit ([`NodeKind`]): its declaration (ports, parameters, rules
//! such as an input required in one mode or the editor's hand pick), a typed parameter struct read once,
//! its evaluator and its check before a run, in one file. Generic code (validation, the editor, the command
//! line) asks the declaration instead of naming kinds.
//!
//! - [`inputs`]: prompt, load image;
//! - [`animatediff`]: the SD 1.5 + AnimateDiff family: checkpoint and motion-module loaders, plain text to
//!   video, and what its generation nodes share (prompt encoding, the video UNet, memory checks, decoding);
//! - [`i4vgen`]: the method's stages: T2I candidates, NI-VSDS animator, regenerator;
//! - [`reward`]: the ImageReward loader and the candidate selector;
//! - [`modelscope`]: the ModelScope T2V family's loader;
//! - [`video_model`]: nodes on any family's video model (T2V Sampler); AnimateDiff Video Model (in
//!   [`animatediff`]) makes one of a checkpoint and motion modules;
//! - [`ti2v_zero`]: TI2V-Zero Animator, a still image animated by a frozen text-to-video model;
//! - [`i2vgen_xl`]: the I2VGen-XL family: its loader and I2VGen-XL Image to Video;
//! - [`outputs`]: video preview and export;
//! - [`params`]: parameter declarations and groups shared by several kinds (the sampler's settings).
//!
//! The values on each port type are in [`values`] (defined in [`crate::values`]).

pub mod animatediff;
pub mod i2vgen_xl;
pub mod i4vgen;
pub mod inputs;
mod loading;
pub mod modelscope;
pub mod outputs;
pub mod params;
pub mod reward;
pub mod ti2v_zero;
pub mod values;
pub mod video_model;

use std::path::PathBuf;

use crate::graph::{KindRegistry, KindSpec};
use crate::runtime::{Check, EvalContext, Evaluators, NodeError, NodeOutputs};

pub use values::{Candidates, Loaded, PromptValue, Ranking, SelectedBy, StillImage};

/// How a node of a kind is evaluated.
pub type Evaluate = fn(&mut EvalContext<'_>) -> Result<NodeOutputs, NodeError>;

/// One node kind: what it declares, how it runs, and what it checks before a run.
#[derive(Clone, Copy)]
pub struct NodeKind {
    pub spec: KindSpec,
    pub evaluate: Evaluate,
    /// What the kind checks when a graph is planned, before any node computes (Export: its output path).
    pub check: Option<Check>,
}

/// Every built-in kind, in menu order.
pub const BUILTIN: &[&NodeKind] = &[
    &inputs::PROMPT,
    &animatediff::LOAD_CHECKPOINT,
    &animatediff::LOAD_MOTION_MODULE,
    &reward::LOAD_REWARD_MODEL,
    &inputs::LOAD_IMAGE,
    &i4vgen::T2I_CANDIDATES,
    &reward::CANDIDATE_SELECTOR,
    &i4vgen::NI_VSDS,
    &i4vgen::REGENERATOR,
    &animatediff::TEXT_TO_VIDEO,
    &animatediff::ANIMATEDIFF_MODEL,
    &modelscope::LOAD_MODELSCOPE,
    &video_model::T2V_SAMPLER,
    &ti2v_zero::TI2V_ZERO,
    &i2vgen_xl::LOAD_I2VGEN_XL,
    &i2vgen_xl::I2VGEN_XL,
    &outputs::VIDEO_PREVIEW,
    &outputs::EXPORT,
];

/// The declarations of every built-in kind.
pub fn registry() -> KindRegistry {
    let mut registry = KindRegistry::empty();
    for kind in BUILTIN {
        registry.register(kind.spec);
    }
    registry
}

/// Evaluators (and checks) for every built-in kind.
pub fn builtin_evaluators() -> Evaluators {
    let mut e = Evaluators::new();
    for kind in BUILTIN {
        e.register(kind.spec.id, kind.evaluate);
        if let Some(check) = kind.check {
            e.register_check(kind.spec.id, check);
        }
    }
    e
}

/// A pipeline error as a node error: cancellation stays cancellation, the rest keeps its message.
fn failed(e: crate::pipelines::PipelineError) -> NodeError {
    match e {
        crate::pipelines::PipelineError::Cancelled { .. } => NodeError::Cancelled,
        other => NodeError::Failed(other.to_string()),
    }
}

/// Resolves a model path parameter inside the models directory (the access policy refuses paths that lead
/// out of it) and checks that it exists.
fn model_path(ctx: &EvalContext<'_>, param: &str) -> Result<PathBuf, NodeError> {
    let value = ctx.param_str(param)?;
    if value.is_empty() {
        return Err(NodeError::Param { name: param.to_string(), message: "no model file chosen".to_string() });
    }
    let path = ctx.file(param)?;
    if !path.exists() {
        return Err(NodeError::File {
            path: path.clone(),
            message: format!(
                "model file '{value}' not found in the models directory '{}'",
                ctx.access.models_dir.display()
            ),
        });
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn builtin_kinds_are_well_formed() {
        let mut ids = HashSet::new();
        for kind in BUILTIN.iter().map(|k| &k.spec) {
            assert!(ids.insert(kind.id), "duplicate kind id {}", kind.id);
            assert!(!kind.description.is_empty(), "{} has no description", kind.id);
            let mut names = HashSet::new();
            for p in kind.params {
                assert!(names.insert(p.name), "{}: duplicate param {}", kind.id, p.name);
                assert!(!p.description.is_empty(), "{}.{} has no description", kind.id, p.name);
                p.check(&p.default_value()).unwrap_or_else(|e| panic!("{}.{}: {e}", kind.id, p.name));
            }
            // An input and an output may share a name (a link's direction tells them apart).
            for ports in [kind.inputs, kind.outputs] {
                let mut names = HashSet::new();
                for p in ports {
                    assert!(names.insert(p.name), "{}: duplicate port {}", kind.id, p.name);
                    assert!(!p.description.is_empty(), "{}.{} has no description", kind.id, p.name);
                    assert!(!p.name.contains('.'), "{}.{}: port names cannot contain dots", kind.id, p.name);
                }
            }
            for port in kind.inputs {
                if let Some((param, value)) = port.required_when {
                    let choice = kind.param(param).map(|p| p.ty);
                    assert!(
                        matches!(choice, Some(crate::graph::ParamType::Choice { options, .. }) if options.contains(&value)),
                        "{}.{}: required when {param} is {value}, which is not a choice of the kind",
                        kind.id,
                        port.name
                    );
                }
            }
            if let Some(pick) = kind.pick {
                for name in [pick.choice, pick.index] {
                    assert!(kind.param(name).is_some(), "{}: the pick writes '{name}', not a parameter", kind.id);
                }
            }
            assert!(kind.is_output || !kind.outputs.is_empty(), "{} produces nothing", kind.id);
        }
    }
}
