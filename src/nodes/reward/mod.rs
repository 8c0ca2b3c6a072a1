//! The ImageReward family: its loader, and the Candidate Selector (I4VGen stage 2): ImageReward scores for
//! every candidate, and the anchor: the best one, or the one the artist picks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::loading::{load_cached, model_key};
use super::model_path;
use super::values::{Candidates, Ranking, RewardValue, SelectedBy, StillImage};
use super::{NodeKind, failed};
use crate::graph::kinds::PickParams;
use crate::graph::{KindSpec, ParamSpec, ParamType, PathRole, PortSpec, PortType};
use crate::models::image_reward::{load_image_reward, load_image_reward_dir};
use crate::models::load::identify::{classify, read_shapes};
use crate::pipelines::{PipelineError, i4vgen};
use crate::runtime::{EvalContext, NodeError, NodeOutputs};

pub const LOAD_REWARD_MODEL: NodeKind = NodeKind {
    spec: KindSpec {
        id: "load_reward_model",
        title: "Load Reward Model",
        category: "Models",
        version: 2,
        description: "Loads an ImageReward model used to rank candidate images",
        inputs: &[],
        outputs: &[PortSpec::output("reward", PortType::RewardModel, "ImageReward")],
        params: &[ParamSpec::new(
            "path",
            ParamType::Path { default: "", role: PathRole::Model },
            "ImageReward folder (ImageReward.pt or .safetensors with med_config.json and vocab.txt), or the weights file in it, relative to the models directory",
        )],
        is_output: false,
        pick: None,
        more: None,
    },
    evaluate: load_reward_model,
    check: None,
};

fn load_reward_model(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let path = model_path(ctx, "path")?;
    let device = ctx.device.clone();
    let value: RewardValue = load_cached(ctx, model_key("image reward", &path, ""), &path, || {
        let (model, report) = if path.is_dir() {
            load_image_reward_dir(&path, &device)
        } else {
            // Say what a wrong file is before looking for the configuration files beside it.
            let shapes = read_shapes(&path).map_err(|e| e.to_string())?;
            if !shapes.iter().any(|(key, _)| key.starts_with("blip.")) {
                let keys: Vec<String> = shapes.into_iter().map(|(key, _)| key).collect();
                return Err(format!(
                    "this file looks like {}, not an ImageReward model (it has no blip.* weights)",
                    classify(&keys).describe()
                ));
            }
            // A weights file next to its med_config.json and vocab.txt (the ImageReward folder layout).
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
            load_image_reward(&path, &dir, &device)
        }
        .map_err(|e| e.to_string())?;
        Ok((model, vec![report]))
    })?;
    Ok(NodeOutputs::new().with("reward", value))
}

pub const CANDIDATE_SELECTOR: NodeKind = NodeKind {
    spec: KindSpec {
        id: "candidate_selector",
        title: "Candidate Selector",
        category: "I4VGen",
        version: 2,
        description: "Scores the candidates with ImageReward and picks the best, or the one you choose",
        inputs: &[
            PortSpec::required("candidates", PortType::Candidates, "Candidates to choose from"),
            PortSpec::optional(
                "reward",
                PortType::RewardModel,
                "Reward model (required when mode is \"reward\"; scores are shown when connected)",
            )
            .required_when("mode", "reward"),
        ],
        outputs: &[
            PortSpec::output("anchor", PortType::Image, "The selected candidate"),
            PortSpec::output("ranking", PortType::Ranking, "Every candidate with its score, and which one is selected"),
        ],
        params: &[
            ParamSpec::new(
                "mode",
                ParamType::Choice { default: "reward", options: &["reward", "manual"] },
                "reward: take the highest ImageReward score; manual: take the candidate at index",
            ),
            ParamSpec::new(
                "index",
                ParamType::Int { default: 0, min: 0, max: 1023 },
                "Candidate to take in manual mode (0 is the first)",
            )
            .only_when("mode", "manual"),
        ],
        is_output: false,
        pick: Some(PickParams { choice: "mode", by_hand: "manual", automatic: "reward", index: "index" }),
        more: None,
    },
    evaluate: select,
    check: None,
};

/// The selector's parameters.
struct SelectorParams {
    by: SelectedBy,
    /// The candidate to take by hand (read in manual mode only).
    index: usize,
}

impl SelectorParams {
    fn read(ctx: &EvalContext<'_>) -> Result<Self, NodeError> {
        match ctx.param_str("mode")? {
            "reward" => Ok(SelectorParams { by: SelectedBy::Reward, index: 0 }),
            "manual" => Ok(SelectorParams { by: SelectedBy::Hand, index: ctx.param_u64("index")? as usize }),
            other => Err(NodeError::Param {
                name: "mode".into(),
                message: format!("'{other}' is not a mode (reward, manual)"),
            }),
        }
    }
}

/// Scores are kept with the loaded models, keyed by the reward model and the candidates' content, so that
/// picking another candidate by hand does not score them all again.
fn scores(ctx: &EvalContext<'_>, reward: &RewardValue, candidates: &Candidates) -> Result<Arc<Vec<f32>>, NodeError> {
    let mut h = blake3::Hasher::new();
    h.update(candidates.prompt.as_bytes());
    for (dim, v) in candidates.latents.shape.iter().zip(0u8..) {
        h.update(&[v]);
        h.update(&(*dim as u64).to_le_bytes());
    }
    for v in candidates.latents.data.iter() {
        h.update(&v.to_le_bytes());
    }
    let key = format!("scores:{}:{}", reward.key, h.finalize().to_hex());
    ctx.models.get_or_load(&key, || {
        let images: Vec<image::RgbImage> = candidates.images.iter().map(|i| i.as_ref().clone()).collect();
        reward.model.score(&candidates.prompt, &images).map_err(|e| failed(e.into()))
    })
}

fn select(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let candidates = ctx.input::<Candidates>("candidates")?.clone();
    let reward = ctx.optional_input::<RewardValue>("reward")?.cloned();
    let params = SelectorParams::read(ctx)?;
    let count = candidates.images.len();
    if count == 0 {
        return Err(NodeError::Failed(PipelineError::NoCandidates.to_string()));
    }
    let scores = match &reward {
        Some(r) => Some(scores(ctx, r, &candidates)?),
        None => None,
    };
    let (selected, by) = match params.by {
        SelectedBy::Reward => {
            let Some(scores) = &scores else {
                return Err(NodeError::Param {
                    name: "mode".into(),
                    message: "'reward' needs a reward model: connect a Load Reward Model node to the 'reward' \
                              input, or set mode to 'manual' and pick a candidate"
                        .into(),
                });
            };
            (i4vgen::select(scores, None).map_err(failed)?, SelectedBy::Reward)
        }
        SelectedBy::Hand => {
            let index = params.index;
            if index >= count {
                let message = PipelineError::IndexOutOfRange { index, count }.to_string();
                return Err(NodeError::Param { name: "index".into(), message });
            }
            (index, SelectedBy::Hand)
        }
    };
    let ranking = Ranking { images: candidates.images.clone(), scores: scores.as_deref().cloned(), selected, by };
    let best = ranking.best();
    ctx.note(match (&ranking.scores, by) {
        (Some(s), SelectedBy::Reward) => {
            format!("candidate {selected} has the highest ImageReward score ({:.3}) of {count}", s[selected])
        }
        (Some(s), SelectedBy::Hand) => match best {
            Some(b) if b != selected => format!(
                "candidate {selected} picked by hand (score {:.3}; ImageReward prefers candidate {b}, {:.3})",
                s[selected], s[b]
            ),
            _ => format!("candidate {selected} picked by hand (score {:.3}, also the best)", s[selected]),
        },
        (None, _) => format!("candidate {selected} of {count} picked by hand (no reward model: no scores)"),
    });
    ctx.preview("ranking", ranking.clone());
    let anchor = StillImage {
        image: candidates.images[selected].clone(),
        source: format!("candidate {selected}"),
        latent: candidates.latents.clip(selected),
    };
    Ok(NodeOutputs::new().with("anchor", anchor).with("ranking", ranking))
}
