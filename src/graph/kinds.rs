//! Node kinds: their ports and parameters. The built-in catalogue covers the I4VGen pipeline.
//!
//! A kind's `version` is part of every cache key made for its nodes: bump it when the kind's evaluation
//! changes so that results cached by an older build are not reused.

use super::params::{ParamSpec, ParamType, PathRole};
use super::ports::{PortSpec, PortType};

/// Declaration of a node kind.
#[derive(Clone, Copy, Debug)]
pub struct KindSpec {
    /// Stable identifier used in presets (`"kind": "t2i_candidates"`).
    pub id: &'static str,
    /// Title shown on the node.
    pub title: &'static str,
    /// Menu group in the editor.
    pub category: &'static str,
    pub version: u32,
    /// One line, shown as a tooltip.
    pub description: &'static str,
    pub inputs: &'static [PortSpec],
    pub outputs: &'static [PortSpec],
    pub params: &'static [ParamSpec],
    /// Output nodes are what a run evaluates when no target is named (previews, exports).
    pub is_output: bool,
    /// Where a click on one of the node's result images picks that image by hand (the candidate selector).
    pub pick: Option<PickParams>,
}

/// The parameters a hand pick writes: `choice` set to `by_hand` with the image's number in `index`, or back to
/// `automatic`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PickParams {
    pub choice: &'static str,
    pub by_hand: &'static str,
    pub automatic: &'static str,
    pub index: &'static str,
}

impl KindSpec {
    pub fn input(&self, name: &str) -> Option<&PortSpec> {
        self.inputs.iter().find(|p| p.name == name)
    }
    pub fn output(&self, name: &str) -> Option<&PortSpec> {
        self.outputs.iter().find(|p| p.name == name)
    }
    pub fn param(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }
    /// The parameter naming the file this kind writes, if it writes one (`--out` sets it).
    pub fn output_path(&self) -> Option<&'static str> {
        self.params.iter().find(|p| matches!(p.ty, ParamType::Path { role: PathRole::Output, .. })).map(|p| p.name)
    }
}

/// The set of node kinds a graph may use.
#[derive(Clone, Debug, Default)]
pub struct KindRegistry {
    kinds: Vec<KindSpec>,
}

impl KindRegistry {
    /// An empty registry (tests register their own kinds).
    pub fn empty() -> Self {
        KindRegistry { kinds: Vec::new() }
    }

    /// The built-in kinds of the I4VGen pipeline.
    pub fn builtin() -> Self {
        KindRegistry { kinds: BUILTIN.to_vec() }
    }

    /// Adds a kind, replacing one with the same id.
    pub fn register(&mut self, spec: KindSpec) {
        self.kinds.retain(|k| k.id != spec.id);
        self.kinds.push(spec);
    }

    pub fn get(&self, id: &str) -> Option<&KindSpec> {
        self.kinds.iter().find(|k| k.id == id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &KindSpec> {
        self.kinds.iter()
    }
}

// ---- shared parameter declarations -------------------------------------------------------------

const SEED: ParamSpec = ParamSpec::new(
    "seed",
    ParamType::Seed { default: 42 },
    "Random seed: the same seed and settings give the same result",
);
const STEPS: ParamSpec =
    ParamSpec::new("steps", ParamType::Int { default: 25, min: 1, max: 1000 }, "Number of DDIM sampling steps");
const CFG: ParamSpec = ParamSpec::new(
    "cfg",
    ParamType::Float { default: 7.5, min: 0.0, max: 30.0 },
    "Classifier-free guidance scale (1 disables the unconditional pass)",
);
const CFG_BATCH: ParamSpec = ParamSpec::new(
    "cfg_batch",
    ParamType::Choice { default: "together", options: &["together", "sequential"] },
    "together: both guidance branches in one UNet call (fastest); sequential: one after the other (half the memory)",
);
const BETA_SCHEDULE: ParamSpec = ParamSpec::new(
    "beta_schedule",
    ParamType::Choice { default: "linear", options: &["linear", "scaled_linear"] },
    "Noise schedule of the DDIM sampler (AnimateDiff uses linear, SD 1.5 scaled_linear)",
);
const BETA_START: ParamSpec = ParamSpec::new(
    "beta_start",
    ParamType::Float { default: 0.00085, min: 0.0, max: 0.1 },
    "First beta of the noise schedule",
);
const BETA_END: ParamSpec = ParamSpec::new(
    "beta_end",
    ParamType::Float { default: 0.012, min: 0.0, max: 0.5 },
    "Last beta of the noise schedule",
);
/// Why image sizes are multiples of 8.
const VAE_BLOCKS: &str = "the VAE downsamples by 8";
const WIDTH: ParamSpec =
    ParamSpec::new("width", ParamType::Int { default: 512, min: 64, max: 2048 }, "Width in pixels (a multiple of 8)")
        .multiple_of(8, VAE_BLOCKS);
const HEIGHT: ParamSpec =
    ParamSpec::new("height", ParamType::Int { default: 512, min: 64, max: 2048 }, "Height in pixels (a multiple of 8)")
        .multiple_of(8, VAE_BLOCKS);
const FRAMES: ParamSpec = ParamSpec::new(
    "frames",
    ParamType::Int { default: 16, min: 1, max: 64 },
    "Number of video frames (at most the motion module's positional limit: 24 for v1, 32 for v2/v3)",
);
const FPS: ParamSpec =
    ParamSpec::new("fps", ParamType::Float { default: 8.0, min: 0.1, max: 120.0 }, "Playback frame rate");

// ---- shared port declarations ------------------------------------------------------------------

const IN_CHECKPOINT: PortSpec = PortSpec::required("model", PortType::Checkpoint, "Stable Diffusion 1.5 model");
const IN_MOTION: PortSpec = PortSpec::required("motion", PortType::MotionModule, "AnimateDiff motion modules");
const IN_PROMPT: PortSpec = PortSpec::required("prompt", PortType::Prompt, "Positive and negative prompt");
const OUT_VIDEO: PortSpec = PortSpec::output("video", PortType::Video, "The clip: frames and latents");

// ---- the built-in kinds ------------------------------------------------------------------------

pub const PROMPT: KindSpec = KindSpec {
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
};

pub const LOAD_CHECKPOINT: KindSpec = KindSpec {
    id: "load_checkpoint",
    title: "Load SD 1.5 Checkpoint",
    category: "Models",
    version: 2,
    description: "Loads a Stable Diffusion 1.5 model (single file or diffusers folder)",
    inputs: &[],
    outputs: &[PortSpec::output("model", PortType::Checkpoint, "UNet, VAE, text encoder, tokenizer")],
    params: &[ParamSpec::new(
        "path",
        ParamType::Path { default: "", role: PathRole::Model },
        "Checkpoint file or diffusers folder, relative to the models directory",
    )],
    is_output: false,
    pick: None,
};

pub const LOAD_MOTION_MODULE: KindSpec = KindSpec {
    id: "load_motion_module",
    title: "Load Motion Module",
    category: "Models",
    version: 2,
    description: "Loads AnimateDiff motion modules (v1, v2 or v3)",
    inputs: &[],
    outputs: &[PortSpec::output("motion", PortType::MotionModule, "Motion modules")],
    params: &[
        ParamSpec::new(
            "path",
            ParamType::Path { default: "", role: PathRole::Model },
            "Motion module file or MotionAdapter folder, relative to the models directory",
        ),
        ParamSpec::new(
            "version",
            ParamType::Choice { default: "auto", options: &["auto", "v1", "v2", "v3"] },
            "Motion module version (auto: detect from the weights)",
        ),
    ],
    is_output: false,
    pick: None,
};

pub const LOAD_REWARD_MODEL: KindSpec = KindSpec {
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
};

pub const LOAD_IMAGE: KindSpec = KindSpec {
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
};

pub const T2I_CANDIDATES: KindSpec = KindSpec {
    id: "t2i_candidates",
    title: "T2I Candidates",
    category: "I4VGen",
    version: 2,
    description: "Generates N candidate anchor images from the prompt with SD 1.5 (motion modules bypassed)",
    inputs: &[IN_CHECKPOINT, IN_PROMPT],
    outputs: &[PortSpec::output("candidates", PortType::Candidates, "Candidate images and latents")],
    params: &[
        ParamSpec::new(
            "count",
            ParamType::Int { default: 16, min: 1, max: 64 },
            "Number of candidates (the reference uses one per video frame)",
        ),
        WIDTH,
        HEIGHT,
        STEPS,
        CFG,
        CFG_BATCH,
        SEED,
        BETA_SCHEDULE,
        BETA_START,
        BETA_END,
    ],
    is_output: false,
    pick: None,
};

pub const CANDIDATE_SELECTOR: KindSpec = KindSpec {
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
            ParamType::Int { default: 0, min: 0, max: 63 },
            "Candidate to take in manual mode (0 is the first)",
        )
        .only_when("mode", "manual"),
    ],
    is_output: false,
    pick: Some(PickParams { choice: "mode", by_hand: "manual", automatic: "reward", index: "index" }),
};

pub const NI_VSDS: KindSpec = KindSpec {
    id: "ni_vsds",
    title: "NI-VSDS Animator",
    category: "I4VGen",
    version: 2,
    description: "Animates a static video of the anchor with noise-invariant video score distillation",
    inputs: &[IN_CHECKPOINT, IN_MOTION, IN_PROMPT, PortSpec::required("anchor", PortType::Image, "The anchor image")],
    outputs: &[OUT_VIDEO],
    params: &[
        FRAMES,
        STEPS,
        CFG,
        CFG_BATCH,
        ParamSpec::new(
            "p_ni_vsds",
            ParamType::Float { default: 0.6, min: 0.0, max: 1.0 },
            "Fraction of the schedule used: floor(steps * p) + 1 iterations over the first timesteps",
        ),
        ParamSpec::new(
            "step_sizes",
            ParamType::FloatList { default: &[10.0, 10.0, 10.0, 1.0], min: 0.0, max: 1000.0 },
            "Step size per iteration; the last entry repeats for the remaining iterations",
        ),
        SEED,
        BETA_SCHEDULE,
        BETA_START,
        BETA_END,
    ],
    is_output: false,
    pick: None,
};

pub const REGENERATOR: KindSpec = KindSpec {
    id: "regenerator",
    title: "Regenerator",
    category: "I4VGen",
    version: 2,
    description: "Noises the animated video and denoises it again with the video model for detail",
    inputs: &[IN_CHECKPOINT, IN_MOTION, IN_PROMPT, PortSpec::required("video", PortType::Video, "Video to regenerate")],
    outputs: &[OUT_VIDEO],
    params: &[
        ParamSpec::new(
            "strength",
            ParamType::Float { default: 1.0, min: 0.0, max: 1.0 },
            "Regeneration strength p_re: 1 re-runs every step, lower keeps more of the input",
        ),
        STEPS,
        CFG,
        CFG_BATCH,
        SEED,
        BETA_SCHEDULE,
        BETA_START,
        BETA_END,
    ],
    is_output: false,
    pick: None,
};

pub const TEXT_TO_VIDEO: KindSpec = KindSpec {
    id: "text_to_video",
    title: "Text to Video",
    category: "Sampling",
    version: 2,
    description: "Plain AnimateDiff text-to-video sampling from noise (the baseline I4VGen improves on)",
    inputs: &[IN_CHECKPOINT, IN_MOTION, IN_PROMPT],
    outputs: &[OUT_VIDEO],
    params: &[FRAMES, WIDTH, HEIGHT, STEPS, CFG, CFG_BATCH, SEED, BETA_SCHEDULE, BETA_START, BETA_END],
    is_output: false,
    pick: None,
};

pub const VIDEO_PREVIEW: KindSpec = KindSpec {
    id: "video_preview",
    title: "Video Preview",
    category: "Outputs",
    version: 1,
    description: "Plays the clip in the editor",
    inputs: &[PortSpec::required("video", PortType::Video, "Clip to show")],
    outputs: &[],
    params: &[FPS],
    is_output: true,
    pick: None,
};

pub const EXPORT: KindSpec = KindSpec {
    id: "export",
    title: "Export",
    category: "Outputs",
    version: 2,
    description: "Writes the clip to disk (MP4, WebM, GIF, animated PNG or PNG frames), with the graph inside",
    inputs: &[PortSpec::required("video", PortType::Video, "Clip to write")],
    outputs: &[],
    params: &[
        ParamSpec::new(
            "path",
            ParamType::Path { default: "{prompt}-{seed}.mp4", role: PathRole::Output },
            "Output file, inside the output folder (default ./out); the extension picks the format (.mp4, .webm, .gif, .png/.apng; none: a folder of PNG \
             frames); {prompt}, {seed}, {date} and {n} are filled in",
        ),
        FPS,
        ParamSpec::new(
            "crf",
            ParamType::Int { default: 18, min: 0, max: 63 },
            "MP4/WebM quality: lower is better, 0 is lossless (H.264 uses 0-51, VP9 0-63)",
        ),
        ParamSpec::new(
            "preset",
            ParamType::Choice {
                default: "medium",
                options: &[
                    "ultrafast",
                    "superfast",
                    "veryfast",
                    "faster",
                    "fast",
                    "medium",
                    "slow",
                    "slower",
                    "veryslow",
                ],
            },
            "MP4 (x264) speed preset: slower makes smaller files at the same quality",
        ),
        ParamSpec::new("pingpong", ParamType::Bool { default: false }, "Play forward, then backward"),
        ParamSpec::new(
            "repeat",
            ParamType::Int { default: 1, min: 1, max: 100 },
            "How many times the frames are written into the file (a longer clip; not the GIF loop flag)",
        ),
        ParamSpec::new(
            "loop",
            ParamType::Choice { default: "forever", options: &["forever", "count", "once"] },
            "GIF/animated PNG: how viewers loop the file",
        ),
        ParamSpec::new(
            "loop_count",
            ParamType::Int { default: 1, min: 1, max: 65535 },
            "GIF/animated PNG: extra plays after the first",
        )
        .only_when("loop", "count"),
        ParamSpec::new("overwrite", ParamType::Bool { default: false }, "Replace an existing output"),
    ],
    is_output: true,
    pick: None,
};

/// Every built-in kind, in menu order.
pub const BUILTIN: &[KindSpec] = &[
    PROMPT,
    LOAD_CHECKPOINT,
    LOAD_MOTION_MODULE,
    LOAD_REWARD_MODEL,
    LOAD_IMAGE,
    T2I_CANDIDATES,
    CANDIDATE_SELECTOR,
    NI_VSDS,
    REGENERATOR,
    TEXT_TO_VIDEO,
    VIDEO_PREVIEW,
    EXPORT,
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn builtin_kinds_are_well_formed() {
        let mut ids = HashSet::new();
        for kind in BUILTIN {
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
            assert!(kind.is_output || !kind.outputs.is_empty(), "{} produces nothing", kind.id);
        }
    }
}
