//! Source nodes: the prompt and a still image from a file.

use std::sync::Arc;

use super::NodeKind;
use super::values::{PromptValue, StillImage};
use crate::graph::{KindSpec, ParamSpec, ParamType, PathRole, PortSpec, PortType};
use crate::runtime::{EvalContext, NodeError, NodeOutputs};

pub const PROMPT: NodeKind = NodeKind {
    spec: KindSpec {
        id: "prompt",
        title: "Prompt",
        category: "Inputs",
        version: 1,
        description: "Positive and negative prompt text",
        inputs: &[],
        outputs: &[PortSpec::output("prompt", PortType::Prompt, "The prompt pair")],
        params: &[
            ParamSpec::new("positive", ParamType::Text { default: "", multiline: true }, "What the clip should show"),
            ParamSpec::new(
                "negative",
                ParamType::Text { default: "", multiline: true },
                "What the clip should avoid (empty, as in the reference)",
            ),
        ],
        is_output: false,
        pick: None,
        more: None,
    },
    evaluate: prompt,
    check: None,
};

fn prompt(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let value = PromptValue {
        positive: ctx.param_str("positive")?.to_string(),
        negative: ctx.param_str("negative")?.to_string(),
    };
    Ok(NodeOutputs::new().with("prompt", value))
}

pub const LOAD_IMAGE: NodeKind = NodeKind {
    spec: KindSpec {
        id: "load_image",
        title: "Load Image",
        category: "Inputs",
        version: 1,
        description: "Reads a still image to use as the anchor",
        inputs: &[],
        outputs: &[PortSpec::output("image", PortType::Image, "The image")],
        params: &[ParamSpec::new(
            "path",
            ParamType::Path { default: "", role: PathRole::InputFile },
            "Image file (PNG, JPEG, WebP)",
        )],
        is_output: false,
        pick: None,
        more: None,
    },
    evaluate: load_image,
    check: None,
};

/// The largest side of an image Load Image decodes.
const MAX_IMAGE_SIDE: u32 = 16_384;
/// The most memory decoding one image may take.
const MAX_IMAGE_BYTES: u64 = 1 << 30;

fn load_image(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let value = ctx.param_str("path")?;
    if value.is_empty() {
        return Err(NodeError::Param { name: "path".into(), message: "no image file chosen".into() });
    }
    let path = ctx.file("path")?;
    let mut reader = image::ImageReader::open(&path)
        .map_err(|e| NodeError::File { path: path.clone(), message: format!("cannot open: {e}") })?
        .with_guessed_format()
        .map_err(|e| NodeError::File { path: path.clone(), message: format!("cannot read: {e}") })?;
    // A crafted header may claim any size: decode only what an anchor image can reasonably be.
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_BYTES);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| NodeError::File { path: path.clone(), message: format!("not a readable image: {e}") })?
        .to_rgb8();
    let still = StillImage { image: Arc::new(image), source: path.display().to_string(), latent: None };
    ctx.preview("image", still.clone());
    Ok(NodeOutputs::new().with("image", still))
}
