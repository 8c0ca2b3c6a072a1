//! The command-line front end: `stepstone run`, `stepstone validate`, `stepstone nodes`.

pub mod bench;
mod devices;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::graph::{Graph, KindRegistry, PortRef, validate};
use crate::paths::{ModelsDirSource, models_dir};

#[derive(Parser, Debug)]
#[command(name = "stepstone", version, about = "Image-anchored text-to-video studio (I4VGen)")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Commands>,
}

#[derive(Subcommand, Debug)]
pub enum Commands {
    /// Run a graph preset headless and write its outputs.
    Run(RunArgs),
    /// Check presets: unknown kinds and parameters, links, ranges, missing inputs and model files.
    Validate {
        /// Preset files (JSON).
        #[arg(required = true)]
        presets: Vec<PathBuf>,
        /// Also check that model files exist in this models directory (or in $STEPSTONE_MODELS when set);
        /// without either, model files are not checked.
        #[arg(long)]
        models: Option<PathBuf>,
        /// The output folder export paths resolve in (as for `run`).
        #[arg(long, value_name = "DIR", default_value = crate::graph::access::DEFAULT_OUTPUT_DIR)]
        out_dir: PathBuf,
        /// Allow the graphs to read the input files they name (as for `run`).
        #[arg(long)]
        allow_paths: bool,
    },
    /// List the node kinds with their ports and parameters.
    Nodes,
    /// Open the graph editor window (what `stepstone` without a command does).
    Edit(EditArgs),
    /// Time the full-size SD 1.5 networks with random weights and print JSON.
    Bench(bench::BenchArgs),
    /// Lists the devices each `--device` choice can use on this machine.
    Devices,
    /// The node-result cache on disk (results that survive restarts of the editor).
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
}

#[derive(clap::Args, Debug)]
pub struct EditArgs {
    /// A graph preset, or a clip stepstone exported (its embedded graph opens).
    pub file: Option<PathBuf>,
    /// Models directory; preset model paths are relative to it [default: $STEPSTONE_MODELS, else the
    /// per-user data path].
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// The output folder: a graph's export paths resolve inside it.
    #[arg(long, value_name = "DIR", default_value = crate::graph::access::DEFAULT_OUTPUT_DIR)]
    pub out_dir: PathBuf,
    /// Where the models run (see `stepstone run --help`).
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
    /// See `stepstone run --help`.
    #[arg(long, value_name = "MB")]
    pub memory_limit: Option<u64>,
    /// See `stepstone run --help`.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,
    /// Run the graph's outputs as soon as it is open.
    #[arg(long)]
    pub run: bool,
    /// With --run: let the graph read the input files it names.
    #[arg(long)]
    pub allow_paths: bool,
    /// Save a screenshot of the window (PNG) once it has drawn (and finished the run asked for with --run),
    /// then close: a smoke test under a virtual display (xvfb-run).
    #[arg(long, value_name = "PNG")]
    pub screenshot: Option<PathBuf>,
    /// Keep node results in memory only (by default they also persist in the result cache folder, see
    /// `stepstone cache info`).
    #[arg(long)]
    pub no_result_cache: bool,
    /// Write how long each frame of the window took to build (median, 99th percentile, max; during runs and
    /// idle) to this JSON file when the window closes (a benchmark: docs/PERFORMANCE.md).
    #[arg(long, value_name = "JSON")]
    pub frame_times: Option<PathBuf>,
    /// Select this node once the graph is open (the inspector shows it; the clip player follows it).
    #[arg(long, value_name = "NODE")]
    pub select: Option<String>,
    /// Open the clip player; with a node, show that node's result beside the selected one (A/B).
    #[arg(long, value_name = "NODE", num_args = 0..=1, default_missing_value = "")]
    pub player: Option<String>,
    /// The result cache's size bound, in MB.
    #[arg(long, value_name = "MB", default_value_t = crate::runtime::disk_cache::DEFAULT_LIMIT_BYTES / 1_000_000)]
    pub result_cache_mb: u64,
}

/// What `stepstone cache` does.
#[derive(Subcommand, Debug, Clone, Copy)]
pub enum CacheAction {
    /// Where the result cache is, how many entries and bytes it holds, and its bound.
    Info,
    /// Removes every result the cache holds (only stepstone's own files).
    Clear,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Graph preset (JSON).
    pub preset: PathBuf,
    /// Models directory; preset model paths are relative to it [default: $STEPSTONE_MODELS, else the
    /// per-user data path].
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Output path of the graph's Export node, chosen by you: it may point anywhere (relative to the current
    /// folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The output folder: the graph's own export paths resolve inside it and may not lead out of it.
    #[arg(long, value_name = "DIR", default_value = crate::graph::access::DEFAULT_OUTPUT_DIR)]
    pub out_dir: PathBuf,
    /// Let the graph read the input files (images) it names. Without it, a graph from a preset or clip that
    /// names a file to read is refused, with the list of files.
    #[arg(long)]
    pub allow_paths: bool,
    /// Override a parameter: NODE.PARAM=VALUE (repeatable).
    #[arg(long = "set", value_name = "NODE.PARAM=VALUE")]
    pub set: Vec<String>,
    /// Run only these nodes (and what they need) instead of every output node (repeatable).
    #[arg(long = "target", value_name = "NODE")]
    pub targets: Vec<String>,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
    /// Where the models run: the CPU (burn's flex back-end), or a GPU through wgpu (Vulkan, Metal, DX12;
    /// without a GPU, wgpu falls back to a slow software rasteriser).
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
    /// The memory the models may use in all, in MB (weights + activations): a generation node whose
    /// settings need more is refused before it starts, with what to lower. Default: on the CPU, the memory
    /// the system has available; on a GPU, no check.
    #[arg(long, value_name = "MB")]
    pub memory_limit: Option<u64>,
    /// Float precision of the models on a GPU back-end: f16 halves their memory (parity-tested on wgpu);
    /// bf16 is untested; the CPU computes in f32.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,
}

pub use crate::device::{DeviceChoice, DeviceUnavailable, Precision, open_device, with_precision};

/// A graph from a preset file, or from a clip stepstone exported (see [`crate::open::open_graph`]).
pub fn load_graph(path: &std::path::Path) -> anyhow::Result<Graph> {
    Ok(crate::open::open_graph(path)?)
}

impl Default for EditArgs {
    fn default() -> Self {
        EditArgs {
            file: None,
            models: None,
            out_dir: PathBuf::from(crate::graph::access::DEFAULT_OUTPUT_DIR),
            device: DeviceChoice::Cpu,
            memory_limit: None,
            dtype: Precision::F32,
            run: false,
            allow_paths: false,
            screenshot: None,
            no_result_cache: false,
            frame_times: None,
            select: None,
            player: None,
            result_cache_mb: crate::runtime::disk_cache::DEFAULT_LIMIT_BYTES / 1_000_000,
        }
    }
}

fn edit(args: EditArgs) -> anyhow::Result<()> {
    let (models_dir, _) = models_dir(args.models);
    crate::ui::launch(crate::ui::LaunchOptions {
        models_dir,
        output_dir: args.out_dir,
        allow_paths: args.allow_paths,
        memory_limit: args.memory_limit.map(|mb| mb.saturating_mul(1_000_000)),
        dtype: args.dtype,
        device: args.device,
        open: args.file,
        run: args.run,
        screenshot: args.screenshot,
        result_cache: if args.no_result_cache {
            None
        } else {
            crate::runtime::disk_cache::DiskCache::default_dir()
                .map(|dir| (dir, args.result_cache_mb.saturating_mul(1_000_000)))
        },
        state_dir: crate::ui::recovery::StateDir::default_dir(),
        frame_times: args.frame_times,
        select: args.select,
        player: args.player.map(|b| Some(b).filter(|b| !b.is_empty())),
    })
}

/// `stepstone cache info|clear`.
fn cache(action: CacheAction) -> anyhow::Result<()> {
    use crate::runtime::disk_cache::{DEFAULT_LIMIT_BYTES, DiskCache};
    let dir = DiskCache::default_dir().ok_or_else(|| anyhow::anyhow!("this system names no cache folder"))?;
    let disk = DiskCache::open(&dir, DEFAULT_LIMIT_BYTES)
        .map_err(|e| anyhow::anyhow!("result cache {}: {e}", dir.display()))?;
    match action {
        CacheAction::Info => {
            let info = disk.info();
            println!(
                "result cache: {}\n{} entries, {:.1} MB (bound {:.0} MB in the editor: --result-cache-mb)",
                info.dir.display(),
                info.entries,
                info.bytes as f64 / 1e6,
                DEFAULT_LIMIT_BYTES as f64 / 1e6
            );
        }
        CacheAction::Clear => {
            let removed = disk.clear();
            println!("result cache {}: removed {removed} entries", dir.display());
        }
    }
    Ok(())
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("STEPSTONE_LOG"))
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    let result = match cli.command {
        None => edit(EditArgs::default()),
        Some(Commands::Edit(args)) => edit(args),
        Some(Commands::Run(args)) => run::run(args),
        Some(Commands::Validate { presets, models, out_dir, allow_paths }) => {
            validate_presets(&presets, models, out_dir, allow_paths)
        }
        Some(Commands::Bench(args)) => bench::bench(args),
        Some(Commands::Devices) => devices::devices(),
        Some(Commands::Cache { action }) => cache(action),
        Some(Commands::Nodes) => {
            print_nodes(&crate::nodes::registry());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<crate::signals::Interrupted>() => {
            eprintln!("{e}");
            ExitCode::from(crate::signals::EXIT_INTERRUPTED)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn describe_models_dir(dir: &std::path::Path, source: ModelsDirSource) -> String {
    let how = match source {
        ModelsDirSource::CommandLine => "from --models",
        ModelsDirSource::Environment => "from $STEPSTONE_MODELS",
        ModelsDirSource::Default => "the default; set --models or $STEPSTONE_MODELS to change it",
    };
    format!("{} ({how})", dir.display())
}

fn validate_presets(
    presets: &[PathBuf],
    models: Option<PathBuf>,
    out_dir: PathBuf,
    allow_paths: bool,
) -> anyhow::Result<()> {
    let (dir, source) = models_dir(models);
    let check_models = match source {
        ModelsDirSource::Default => {
            eprintln!("note: model files not checked (give --models DIR or set $STEPSTONE_MODELS to check them)");
            false
        }
        _ => true,
    };
    let registry = crate::nodes::registry();
    let mut access = crate::graph::AccessPolicy::new(dir, out_dir);
    access.allow_inputs = allow_paths;
    let options = crate::graph::ValidateOptions { access, check_models, check_inputs: true };
    let mut failed = 0;
    for path in presets {
        match load_graph(path) {
            Err(e) => {
                eprintln!("{e:#}");
                failed += 1;
            }
            Ok(graph) => {
                let report = validate(&graph, &registry, &options);
                for m in &report.messages {
                    eprintln!("{}: {m}", path.display());
                }
                // Every file the graph will read and write, and whether it may.
                for file in crate::graph::file_uses(&graph, &registry, &options.access) {
                    println!("{}: {}", path.display(), file.describe());
                }
                if report.has_errors() {
                    failed += 1;
                } else {
                    println!("{}: ok ({} nodes, {} links)", path.display(), graph.nodes.len(), graph.links.len());
                }
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} preset(s) have errors", presets.len());
    }
    Ok(())
}

/// Applies one `NODE.PARAM=VALUE` override, checking the node, the parameter and the value. For a path
/// parameter, returns the value as one the user chose (see [`crate::graph::access`]).
pub fn apply_override(
    graph: &mut Graph,
    registry: &KindRegistry,
    text: &str,
) -> anyhow::Result<Option<crate::graph::access::Chosen>> {
    let (target, value) =
        text.split_once('=').ok_or_else(|| anyhow::anyhow!("--set {text}: expected NODE.PARAM=VALUE"))?;
    let target =
        PortRef::parse(target.trim()).ok_or_else(|| anyhow::anyhow!("--set {text}: expected NODE.PARAM=VALUE"))?;
    let node = graph.nodes.get(&target.node).ok_or_else(|| {
        let ids: Vec<&str> = graph.nodes.keys().map(String::as_str).collect();
        anyhow::anyhow!("--set {text}: no node '{}' in the graph (nodes: {})", target.node, ids.join(", "))
    })?;
    let kind = registry
        .get(&node.kind)
        .ok_or_else(|| anyhow::anyhow!("--set {text}: node '{}' has unknown kind '{}'", target.node, node.kind))?;
    let spec = kind.param(&target.port).ok_or_else(|| {
        let names: Vec<&str> = kind.params.iter().map(|p| p.name).collect();
        anyhow::anyhow!(
            "--set {text}: kind '{}' has no parameter '{}' (parameters: {})",
            kind.id,
            target.port,
            names.join(", ")
        )
    })?;
    let value = spec.parse(value).map_err(|e| anyhow::anyhow!("--set {text}: {e}"))?;
    let chosen = match (&spec.ty, value.as_str()) {
        (crate::graph::ParamType::Path { .. }, Some(v)) => Some(crate::graph::access::Chosen {
            node: target.node.clone(),
            param: target.port.clone(),
            value: v.to_string(),
        }),
        _ => None,
    };
    graph.set_param(registry, &target.node, &target.port, value).map_err(|e| anyhow::anyhow!("--set {text}: {e}"))?;
    Ok(chosen)
}

fn print_nodes(registry: &KindRegistry) {
    for kind in registry.iter() {
        println!("{} ({}) — {}", kind.id, kind.title, kind.description);
        for p in kind.inputs {
            let req = if p.required { "required" } else { "optional" };
            println!("  in  {:<12} {:<14} {req}: {}", p.name, p.ty.name(), p.description);
        }
        for p in kind.outputs {
            println!("  out {:<12} {:<14} {}", p.name, p.ty.name(), p.description);
        }
        for p in kind.params {
            let when = p.only_when.map(|(param, value)| format!(" (used when {param} = {value})")).unwrap_or_default();
            println!(
                "  param {:<14} = {:<12} {}; {}{when}",
                p.name,
                p.default_value(),
                p.type_description(),
                p.description
            );
        }
        println!();
    }
}
