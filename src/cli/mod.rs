//! The command-line front end: `stepstone run`, `stepstone validate`, `stepstone nodes`.

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
    },
    /// List the node kinds with their ports and parameters.
    Nodes,
    /// Open the graph editor window (what `stepstone` without a command does).
    Edit(EditArgs),
}

#[derive(clap::Args, Debug, Default)]
pub struct EditArgs {
    /// A graph preset, or a clip stepstone exported (its embedded graph opens).
    pub file: Option<PathBuf>,
    /// Models directory; preset model paths are relative to it [default: $STEPSTONE_MODELS, else the
    /// per-user data path].
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Where the models run (see `stepstone run --help`).
    #[arg(long, value_enum, default_value_t = DeviceChoice::Cpu)]
    pub device: DeviceChoice,
    /// Run the graph's outputs as soon as it is open.
    #[arg(long)]
    pub run: bool,
    /// Save a screenshot of the window (PNG) once it has drawn (and finished the run asked for with --run),
    /// then close: a smoke test under a virtual display (xvfb-run).
    #[arg(long, value_name = "PNG")]
    pub screenshot: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Graph preset (JSON).
    pub preset: PathBuf,
    /// Models directory; preset model paths are relative to it [default: $STEPSTONE_MODELS, else the
    /// per-user data path].
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Output path of the graph's Export node.
    #[arg(long)]
    pub out: Option<PathBuf>,
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
}

/// The compute device the models run on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Wgpu,
}

impl DeviceChoice {
    pub fn device(self) -> burn::tensor::Device {
        match self {
            DeviceChoice::Cpu => burn::tensor::Device::flex(),
            DeviceChoice::Wgpu => burn::tensor::Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
        }
    }
}

/// A graph from a preset file, or from a clip stepstone exported (see [`crate::open::open_graph`]).
pub fn load_graph(path: &std::path::Path) -> anyhow::Result<Graph> {
    Ok(crate::open::open_graph(path)?)
}

fn edit(args: EditArgs) -> anyhow::Result<()> {
    let (models_dir, _) = models_dir(args.models);
    crate::ui::launch(crate::ui::LaunchOptions {
        models_dir,
        device: args.device,
        open: args.file,
        run: args.run,
        screenshot: args.screenshot,
    })
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
        Some(Commands::Validate { presets, models }) => validate_presets(&presets, models),
        Some(Commands::Nodes) => {
            print_nodes(&KindRegistry::builtin());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
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

fn validate_presets(presets: &[PathBuf], models: Option<PathBuf>) -> anyhow::Result<()> {
    let (dir, source) = models_dir(models);
    let models_dir = match source {
        ModelsDirSource::Default => {
            eprintln!("note: model files not checked (give --models DIR or set $STEPSTONE_MODELS to check them)");
            None
        }
        _ => Some(dir),
    };
    let registry = KindRegistry::builtin();
    let options = crate::graph::ValidateOptions { models_dir, input_dir: None };
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

/// Applies one `NODE.PARAM=VALUE` override, checking the node, the parameter and the value.
pub fn apply_override(graph: &mut Graph, registry: &KindRegistry, text: &str) -> anyhow::Result<()> {
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
    graph.set_param(registry, &target.node, &target.port, value).map_err(|e| anyhow::anyhow!("--set {text}: {e}"))
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
