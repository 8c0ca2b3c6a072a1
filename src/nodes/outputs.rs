//! Output nodes: video preview and export.

use std::path::PathBuf;

use crate::runtime::{EvalContext, NodeError, NodeOutputs};
use crate::video::{Video, fill_template, write_png_sequence};

pub(super) fn video_preview(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let video = ctx.input::<Video>("video")?.clone();
    let fps = ctx.param_f64("fps")?;
    ctx.preview("video", Video { fps, ..video });
    Ok(NodeOutputs::new())
}

/// Writes a PNG frame sequence (video formats arrive with the export work).
pub(super) fn export(ctx: &mut EvalContext<'_>) -> Result<NodeOutputs, NodeError> {
    let video = ctx.input::<Video>("video")?;
    let template = ctx.param_str("path")?;
    let overwrite = ctx.param_bool("overwrite")?;
    let date = date_stamp();
    let dir = PathBuf::from(fill_template(template, &video.prompt, video.seed, &date, 0));
    let total = video.frames.len() as u64;
    write_png_sequence(video, &dir, overwrite).map_err(|e| NodeError::Failed(e.to_string()))?;
    ctx.progress(total, total)?;
    ctx.note(format!("wrote {total} frames to {}", dir.display()));
    Ok(NodeOutputs::new())
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
