//! Output nodes: video preview and export.

use std::ops::ControlFlow;

use super::NodeKind;
use super::params::FPS;
use crate::graph::to_preset_string;
use crate::graph::{KindSpec, ParamSpec, ParamType, PathRole, PortSpec, PortType, Verdict};
use crate::runtime::{CheckContext, EvalContext, NodeError, NodeOutputs};
use crate::video::encode::{self, EncodeOptions, Format, GifLoop};
use crate::video::{Video, output_path};

pub const VIDEO_PREVIEW: NodeKind = NodeKind {
    spec: KindSpec {
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
        more: None,
    },
    evaluate: video_preview,
    check: None,
};

fn video_preview(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let video = ctx.input::<Video>("video")?.clone();
    let fps = ctx.param_f64("fps")?;
    ctx.preview("video", Video { fps, ..video });
    Ok(NodeOutputs::new())
}

pub const EXPORT: NodeKind = NodeKind {
    spec: KindSpec {
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
        more: None,
    },
    evaluate: export,
    check: Some(export_check),
};

/// Writes the clip in the format the path's extension names, with the graph preset embedded.
fn export(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let video = ctx.input::<Video>("video")?.clone();
    // Inside the output folder unless the user chose the path (see graph::access).
    let template = ctx.file("path")?.to_string_lossy().into_owned();
    let gif_loop = match ctx.param_str("loop")? {
        "once" => GifLoop::Once,
        "count" => GifLoop::Times(ctx.param_u64("loop_count")?.min(u64::from(u16::MAX)) as u16),
        _ => GifLoop::Forever,
    };
    let options = EncodeOptions {
        fps: ctx.param_f64("fps")?,
        crf: ctx.param_u64("crf")? as u32,
        preset: ctx.param_str("preset")?.to_string(),
        pingpong: ctx.param_bool("pingpong")?,
        repeat: ctx.param_u64("repeat")? as u32,
        gif_loop,
        overwrite: ctx.param_bool("overwrite")?,
        graph: Some(to_preset_string(ctx.graph)),
        encoder: None,
    };
    let date = date_stamp();
    let path = output_path(&template, &video.prompt, video.seed, &date);
    let mut cancelled = false;
    let result = {
        let mut progress = |done: usize, total: usize| match ctx.progress(done as u64, total as u64) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => {
                cancelled = true;
                ControlFlow::Break(())
            }
        };
        encode::export(&video, &path, &options, &mut progress)
    };
    let format = match result {
        Ok(format) => format,
        Err(_) if cancelled => return Err(NodeError::Cancelled),
        Err(e) => return Err(NodeError::Failed(e.to_string())),
    };
    let (w, h) = video.frames.first().map(|f| f.dimensions()).unwrap_or((0, 0));
    if format == Format::Mp4 && (w % 2 == 1 || h % 2 == 1) {
        ctx.note(format!("{w}x{h} padded to even sides for H.264 (yuv420p)"));
    }
    ctx.note(format!("wrote {} ({}, {} frames)", path.display(), format.name(), video.frames.len()));
    Ok(NodeOutputs::new())
}

/// The Export node's check before a run: the path is one the graph may write (see `graph::access`), in a
/// format stepstone writes, in a folder that is (or can be made) writable, and what is there already may be
/// replaced. Placeholders that only the run knows (`{prompt}`, `{seed}`, `{n}`) are filled with stand-ins:
/// then only the format and the folder are checked.
fn export_check(ctx: &CheckContext<'_>) -> Result<(), String> {
    let Some(value) = ctx.params.str("path") else { return Ok(()) };
    let file = ctx.access.resolve(ctx.node, "path", PathRole::Output, value);
    let template = match file.verdict {
        Verdict::Allowed => file.path.to_string_lossy().into_owned(),
        Verdict::NeedsPermission(why) | Verdict::Refused(why) => {
            return Err(format!("parameter 'path': '{value}': {why}"));
        }
    };
    let overwrite = ctx.params.bool("overwrite").unwrap_or(false);
    let placeholders = ["{prompt}", "{seed}", "{n}"].iter().any(|p| template.contains(p));
    let path = output_path(&template, "stand-in", 0, &date_stamp());
    let result = if placeholders {
        // The name is not known yet: check the format and the folder only.
        crate::video::output::preflight(&path, true).map(|_| ()).or_else(|e| match e {
            crate::video::ExportError::NotReplaceable { .. } => Ok(()),
            other => Err(other),
        })
    } else {
        crate::video::output::preflight(&path, overwrite).map(|_| ())
    };
    result.map_err(|e| format!("parameter 'path': {e}"))
}

/// Today's date as YYYY-MM-DD (UTC), computed without a calendar dependency.
fn date_stamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = (secs / 86_400) as i64;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn date_stamp_is_a_date() {
        let d = super::date_stamp();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"), "{d}");
    }
}
