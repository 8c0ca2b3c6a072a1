//! Candidate Selector: ImageReward scores for every candidate, and the anchor: the best one, or the one the
//! artist picks (I4VGen stage 2).

use std::sync::Arc;

use super::stage::failed;
use super::values::{Candidates, Ranking, RewardValue, SelectedBy, StillImage};
use crate::pipelines::{PipelineError, i4vgen};
use crate::runtime::{EvalContext, NodeError, NodeOutputs};

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

pub(super) fn evaluate(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let candidates = ctx.input::<Candidates>("candidates")?.clone();
    let reward = ctx.optional_input::<RewardValue>("reward")?.cloned();
    let mode = ctx.param_str("mode")?.to_string();
    let count = candidates.images.len();
    if count == 0 {
        return Err(NodeError::Failed(PipelineError::NoCandidates.to_string()));
    }
    let scores = match &reward {
        Some(r) => Some(scores(ctx, r, &candidates)?),
        None => None,
    };
    let (selected, by) = match mode.as_str() {
        "reward" => {
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
        "manual" => {
            let index = ctx.param_u64("index")? as usize;
            if index >= count {
                let message = PipelineError::IndexOutOfRange { index, count }.to_string();
                return Err(NodeError::Param { name: "index".into(), message });
            }
            (index, SelectedBy::Hand)
        }
        other => {
            return Err(NodeError::Param {
                name: "mode".into(),
                message: format!("'{other}' is not a mode (reward, manual)"),
            });
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
