//! The ModelScope T2V family: its loader. Its video model runs in the family-independent nodes (TI2V-Zero
//! Animator, T2V Sampler).

use super::loading::{load_cached, model_key};
use super::values::VideoModelValue;
use super::{NodeKind, model_path};
use crate::graph::{KindSpec, ParamSpec, ParamType, PathRole, PortSpec, PortType};
use crate::models::modelscope::load_modelscope;
use crate::pipelines::denoiser::VideoModel;
use crate::runtime::{EvalContext, NodeError, NodeOutputs};

pub const LOAD_MODELSCOPE: NodeKind = NodeKind {
    spec: KindSpec {
        id: "load_modelscope",
        title: "Load ModelScope T2V",
        category: "Models",
        version: 1,
        description: "Loads ModelScope T2V (a text-to-video-ms-1.7b diffusers folder) as a video model",
        inputs: &[],
        outputs: &[PortSpec::output("video_model", PortType::VideoModel, "ModelScope T2V")],
        params: &[ParamSpec::new(
            "path",
            ParamType::Path { default: "", role: PathRole::Model },
            "The diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/), relative to the models directory",
        )],
        is_output: false,
        pick: None,
        more: None,
    },
    evaluate: load,
    check: None,
};

fn load(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let path = model_path(ctx, "path")?;
    let device = ctx.device.clone();
    let loaded = load_cached(ctx, model_key("modelscope", &path, ""), &path, || {
        load_modelscope(&path, &device).map_err(|e| e.to_string())
    })?;
    let model: std::sync::Arc<dyn VideoModel> = loaded.model;
    ctx.note("ModelScope T2V video model".to_string());
    Ok(NodeOutputs::new().with("video_model", VideoModelValue { model, key: loaded.key }))
}
