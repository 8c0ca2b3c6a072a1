//! The graph editor window (eframe + egui-snarl).
//!
//! - [`document`]: the editor's lossless copy of a graph on an egui-snarl canvas;
//! - [`viewer`]: how nodes look: typed pins, parameter editors, results, status;
//! - [`params`]: one editor per parameter type;
//! - [`thumbs`]: candidate grids (click to pick the anchor), images and playing clips inside nodes;
//! - [`session`]: per-node run state and the message log, built from worker events (no egui);
//! - [`app`]: the window: menus, shortcuts, open/drop/save, undo, runs.
//!
//! The models run on the background worker ([`crate::runtime::worker`]); the window never waits on them.

pub mod app;
pub mod document;
pub mod palette;
pub mod params;
pub mod player;
pub mod recovery;
pub mod session;
pub mod shared_device;
pub mod thumbs;
pub mod viewer;

use std::path::PathBuf;

pub use app::Studio;

use crate::device::DeviceChoice;
use crate::runtime::worker::Worker;

/// How the editor window starts.
#[derive(Clone, Debug)]
pub struct LaunchOptions {
    pub models_dir: PathBuf,
    /// The output folder export paths resolve in.
    pub output_dir: PathBuf,
    /// With `run`: let the graph read the input files it names (`--allow-paths`).
    pub allow_paths: bool,
    pub device: DeviceChoice,
    /// The models' float precision (`--dtype`).
    pub dtype: crate::device::Precision,
    /// The memory limit of generation nodes in bytes (`--memory-limit`; see [`crate::pipelines::memory`]).
    pub memory_limit: Option<u64>,
    /// A preset or clip to open.
    pub open: Option<PathBuf>,
    /// Run the graph's outputs once it is open.
    pub run: bool,
    /// Save a screenshot of the window here once it has drawn a few frames (and the run asked for has
    /// finished), then close: for smoke tests under a virtual display.
    pub screenshot: Option<PathBuf>,
    /// The folder node results persist in across restarts, and its size bound in bytes (`None`: memory only).
    pub result_cache: Option<(PathBuf, u64)>,
    /// The folder of the editor's own state: the autosaved graph and the recent files (`None`: neither).
    pub state_dir: Option<PathBuf>,
    /// Write how long each frame's UI took (while a run went on, and idle) to this JSON file on close.
    pub frame_times: Option<PathBuf>,
    /// Select this node once the graph is open (the inspector and the player show it).
    pub select: Option<String>,
    /// Open the clip player panel; with a second node, compare it (B) with the selected one.
    pub player: Option<Option<String>>,
}

/// How long the window's frames took to build (the editor's own work per frame, in milliseconds), split
/// by whether a run was going on.
#[derive(Default)]
struct FrameTimes {
    running: Vec<f64>,
    idle: Vec<f64>,
}

impl FrameTimes {
    fn summary(samples: &[f64]) -> serde_json::Value {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
        serde_json::json!({
            "frames": sorted.len(),
            "p50_ms": at(0.5),
            "p99_ms": at(0.99),
            "max_ms": sorted.last().copied().unwrap_or(0.0),
        })
    }

    fn write(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let report = serde_json::json!({
            "during_run": Self::summary(&self.running),
            "idle": Self::summary(&self.idle),
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .map_err(|e| anyhow::anyhow!("cannot write the frame times {}: {e}", path.display()))
    }
}

/// How many frames are drawn before the screenshot is asked for (fonts and layout settle in the first).
const SCREENSHOT_AFTER_FRAMES: u64 = 5;

struct StudioApp {
    studio: Studio,
    signals: crate::signals::Watch,
    run: bool,
    allow_paths: bool,
    screenshot: Option<PathBuf>,
    shot_requested: bool,
    frames: u64,
    result: std::sync::Arc<std::sync::Mutex<Option<anyhow::Result<()>>>>,
    frame_times: Option<(PathBuf, FrameTimes)>,
}

impl eframe::App for StudioApp {
    fn on_exit(&mut self) {
        self.studio.exit_cleanly();
        if let Some((path, times)) = &self.frame_times
            && let Err(e) = times.write(path)
        {
            tracing::error!("{e}");
        }
    }

    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.studio.poll_worker();
        // Ctrl-C in the terminal: cancel the run (its export removes its temporaries) and close the window
        // (which asks first when there are unsaved changes); a second one exits at once.
        match self.signals.poll() {
            crate::signals::Action::None => {}
            crate::signals::Action::Cancel => {
                self.studio.cancel();
                ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            }
            crate::signals::Action::Exit => crate::signals::exit_now(),
        }
        if self.signals.interrupted() {
            ctx.request_repaint_after(std::time::Duration::from_millis(100));
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let start = std::time::Instant::now();
        let running = self.studio.session().running.is_some();
        self.studio.ui(ui);
        if let Some((_, times)) = &mut self.frame_times {
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            if running { times.running.push(ms) } else { times.idle.push(ms) }
        }
        self.frames += 1;
        if self.run && self.frames == 1 {
            // The run was asked for on the command line: the graph's model and output paths are accepted
            // (they are confined to the models and output folders); its input files only with --allow-paths.
            if self.allow_paths {
                self.studio.confirm_files();
            } else {
                self.studio.accept_outputs_only();
            }
            self.studio.run(Vec::new());
        }
        let Some(path) = self.screenshot.clone() else { return };
        let session = self.studio.session();
        let run_done = !self.run || (session.running.is_none() && session.last_outcome.is_some());
        if self.frames >= SCREENSHOT_AFTER_FRAMES && run_done && !self.shot_requested {
            ui.ctx().send_viewport_cmd(egui::ViewportCommand::Screenshot(egui::UserData::default()));
            self.shot_requested = true;
        }
        ui.ctx().request_repaint();
        let shot = ui.input(|i| {
            i.raw.events.iter().find_map(|e| match e {
                egui::Event::Screenshot { image, .. } => Some(image.clone()),
                _ => None,
            })
        });
        if let Some(image) = shot {
            let saved = save_screenshot(&image, &path);
            if let Ok(mut slot) = self.result.lock() {
                *slot = Some(saved);
            }
            ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
        }
    }
}

fn save_screenshot(image: &egui::ColorImage, path: &std::path::Path) -> anyhow::Result<()> {
    let [w, h] = image.size;
    let rgba: Vec<u8> = image.pixels.iter().flat_map(|c| c.to_array()).collect();
    let buffer = image::RgbaImage::from_raw(w as u32, h as u32, rgba)
        .ok_or_else(|| anyhow::anyhow!("the screenshot has {} pixels for {w}x{h}", image.pixels.len()))?;
    buffer.save(path).map_err(|e| anyhow::anyhow!("cannot write the screenshot {}: {e}", path.display()))
}

/// Whether the models run on the window's wgpu device: with `--device wgpu` (burn's WGSL path, which can
/// take a device made elsewhere). `vulkan` (SPIR-V) and `cuda` create their devices their own way.
fn shares_window_device(choice: DeviceChoice) -> bool {
    choice == DeviceChoice::Wgpu
}

/// The window's device for the models, or a wgpu device of their own when burn cannot use it.
fn window_or_own_device(
    render: Option<&eframe::egui_wgpu::RenderState>,
    dtype: crate::device::Precision,
) -> anyhow::Result<burn::tensor::Device> {
    match shared_device::models_device(render) {
        Ok((device, adapter)) => {
            tracing::info!("the window and the models share one wgpu device: {adapter}");
            crate::device::with_precision(device, DeviceChoice::Wgpu, dtype)
        }
        Err(e) => {
            tracing::warn!("{e}; the models get a wgpu device of their own");
            crate::device::open_device(DeviceChoice::Wgpu, dtype)
        }
    }
}

/// Opens the editor window and returns when it is closed.
pub fn launch(options: LaunchOptions) -> anyhow::Result<()> {
    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("stepstone")
            .with_app_id("stepstone")
            .with_inner_size([1440.0, 900.0])
            .with_min_inner_size([640.0, 400.0])
            .with_drag_and_drop(true),
        // With `--device wgpu` the models run on the window's own device (see [`shared_device`]).
        wgpu_options: if shares_window_device(options.device) {
            shared_device::window_options()
        } else {
            eframe::egui_wgpu::WgpuConfiguration::default()
        },
        ..Default::default()
    };
    let screenshot_wanted = options.screenshot.is_some();
    if let Err(e) = crate::signals::install() {
        tracing::warn!("Ctrl-C will end the editor without cleaning up: {e}");
    }
    // Any other device is opened now, so that a setting it refuses fails before a window opens.
    let own_device = if shares_window_device(options.device) {
        None
    } else {
        Some(crate::device::open_device(options.device, options.dtype)?)
    };
    let result = std::sync::Arc::new(std::sync::Mutex::new(None));
    let app_result = result.clone();
    eframe::run_native(
        "stepstone",
        native,
        Box::new(move |cc| {
            let ctx = cc.egui_ctx.clone();
            let models_dir = options.models_dir.clone();
            let memory_limit = options.memory_limit;
            let result_cache = options.result_cache.clone();
            let device = match &own_device {
                Some(device) => device.clone(),
                None => window_or_own_device(cc.wgpu_render_state.as_ref(), options.dtype)?,
            };
            let worker = Worker::spawn(
                move || {
                    let mut engine = crate::builtin_engine(models_dir).with_device(device);
                    engine.set_memory_limit(memory_limit);
                    match result_cache
                        .map(|(dir, limit)| (crate::runtime::disk_cache::DiskCache::open(&dir, limit), dir))
                    {
                        Some((Ok(disk), dir)) => {
                            tracing::info!("node results persist in {}", dir.display());
                            engine = engine.with_disk_cache(disk);
                        }
                        Some((Err(e), dir)) => {
                            tracing::warn!("results are kept in memory only: cannot use {}: {e}", dir.display())
                        }
                        None => {}
                    }
                    engine
                },
                Some(Box::new(move || ctx.request_repaint())),
            )?;
            let mut studio = Studio::new(crate::nodes::registry(), options.models_dir)
                .with_output_dir(options.output_dir.clone())
                .with_worker(worker);
            if let Some(dir) = &options.state_dir {
                studio = studio.with_state_dir(recovery::StateDir::new(dir));
            }
            if let Some(path) = &options.open {
                studio.open(path);
            }
            if let Some(node) = &options.select {
                studio.select(node);
            }
            if let Some(b) = &options.player {
                studio.player_mut().open = true;
                studio.player_mut().b = b.clone();
            }
            Ok(Box::new(StudioApp {
                studio,
                signals: crate::signals::Watch::default(),
                run: options.run,
                allow_paths: options.allow_paths,
                screenshot: options.screenshot,
                shot_requested: false,
                frames: 0,
                result: app_result,
                frame_times: options.frame_times.clone().map(|p| (p, FrameTimes::default())),
            }))
        }),
    )
    .map_err(|e| anyhow::anyhow!("the editor window could not be opened: {e}"))?;
    let outcome = result.lock().map(|mut r| r.take()).unwrap_or(None);
    match outcome {
        Some(r) => r,
        None if screenshot_wanted => anyhow::bail!("the window closed before the screenshot was taken"),
        None => Ok(()),
    }
}
