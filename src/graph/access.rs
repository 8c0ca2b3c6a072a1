//! What a graph may read and write, decided in one place (docs/SECURITY.md).
//!
//! A graph that comes from a preset or from a clip is someone else's data. Its path parameters are resolved
//! here, and each use of a file gets a [`Verdict`]:
//!
//! - **Model paths** resolve inside the models folder. An absolute path, or one that climbs out of the folder
//!   with `..`, is refused.
//! - **Input files** (Load Image) are read only with the user's permission: `--allow-paths` on the command
//!   line, or confirming the list of files in the editor before the first run.
//! - **Output paths** resolve inside the output folder (`./out` by default). An absolute path, or one that
//!   climbs out, is refused, and so is the output folder itself.
//!
//! A value the user gave themselves — on the command line (`--out`, `--set`) or in a file dialog — is
//! theirs: it is recorded in [`AccessPolicy::chosen`] and allowed wherever it points, resolved like any path
//! the user types (relative to the working directory).
//!
//! Everything here is lexical (no file system access), so a verdict is the same in `validate`, in the
//! planner and when the node runs.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use super::params::{ParamType, PathRole};
use super::{Graph, KindRegistry, NodeId, ResolvedParams};

/// The default output folder, relative to the working directory.
pub const DEFAULT_OUTPUT_DIR: &str = "out";

/// A parameter value the user chose themselves (command line, file dialog): it may point anywhere.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Chosen {
    pub node: NodeId,
    pub param: String,
    pub value: String,
}

/// The rules for the files one graph may touch, and who decided what.
#[derive(Clone, Debug, PartialEq)]
pub struct AccessPolicy {
    /// Model paths resolve inside this folder.
    pub models_dir: PathBuf,
    /// Output paths resolve inside this folder.
    pub output_dir: PathBuf,
    /// Where relative input files and user-chosen relative paths resolve (the working directory).
    pub work_dir: PathBuf,
    /// Whether the graph's input files may be read (`--allow-paths`, or confirmed in the editor).
    pub allow_inputs: bool,
    /// Values the user chose themselves.
    pub chosen: BTreeSet<Chosen>,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        AccessPolicy {
            models_dir: PathBuf::new(),
            output_dir: PathBuf::from(DEFAULT_OUTPUT_DIR),
            work_dir: PathBuf::from("."),
            allow_inputs: false,
            chosen: BTreeSet::new(),
        }
    }
}

/// Whether one use of a file may go ahead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Allowed once the user agrees (`--allow-paths`, or the editor's confirmation).
    NeedsPermission(String),
    /// Never allowed from a graph's own value.
    Refused(String),
}

/// One file a graph will read or write, with where it resolves and whether that is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileUse {
    pub node: NodeId,
    pub param: String,
    pub role: PathRole,
    /// The value in the graph (an output path may hold `{...}` placeholders).
    pub value: String,
    /// Where it resolves.
    pub path: PathBuf,
    /// Whether the user chose the value themselves.
    pub chosen: bool,
    pub verdict: Verdict,
}

impl FileUse {
    pub fn writes(&self) -> bool {
        self.role == PathRole::Output
    }

    /// One line for the user: the access, its verdict and, for an output whose name is known, whether
    /// something is there already.
    pub fn describe(&self) -> String {
        let mut text = self.to_string();
        if self.writes() && self.verdict == Verdict::Allowed && !self.value.contains('{') {
            match std::fs::symlink_metadata(&self.path) {
                Ok(meta) if meta.is_file() => text.push_str(" (a file is there: replaced when overwrite is on)"),
                Ok(_) => text.push_str(" (something that is not a regular file is there)"),
                Err(_) => {}
            }
        }
        text
    }
}

impl fmt::Display for FileUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.role {
            PathRole::Model => "reads model",
            PathRole::InputFile => "reads file",
            PathRole::Output => "writes",
        };
        write!(f, "{what} {} (node '{}', parameter '{}')", self.path.display(), self.node, self.param)?;
        if self.chosen {
            write!(f, ", chosen by you")?;
        }
        match &self.verdict {
            Verdict::Allowed => Ok(()),
            Verdict::NeedsPermission(why) => write!(f, ": needs your permission: {why}"),
            Verdict::Refused(why) => write!(f, ": refused: {why}"),
        }
    }
}

/// A relative path with `.` and `..` resolved lexically; `None` when the path is absolute (or has a drive
/// prefix) or climbs above its starting point.
pub fn confined(value: &str) -> Option<PathBuf> {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for component in Path::new(value).components() {
        match component {
            Component::Normal(part) => parts.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
}

impl AccessPolicy {
    /// A policy with these folders and nothing allowed beyond them.
    pub fn new(models_dir: impl Into<PathBuf>, output_dir: impl Into<PathBuf>) -> Self {
        AccessPolicy { models_dir: models_dir.into(), output_dir: output_dir.into(), ..AccessPolicy::default() }
    }

    /// Records a value the user chose for a node's parameter (command line, file dialog).
    pub fn choose(&mut self, node: &str, param: &str, value: &str) {
        self.chosen.insert(Chosen { node: node.to_string(), param: param.to_string(), value: value.to_string() });
    }

    /// Whether the user chose exactly this value for this parameter.
    pub fn is_chosen(&self, node: &str, param: &str, value: &str) -> bool {
        // A scan: the set holds a handful of values (command line, dialog picks).
        self.chosen.iter().any(|c| c.node == node && c.param == param && c.value == value)
    }

    /// Resolves one path value of a node's parameter and judges it.
    pub fn resolve(&self, node: &str, param: &str, role: PathRole, value: &str) -> FileUse {
        let chosen = self.is_chosen(node, param, value);
        let (path, verdict) = if chosen {
            // The user's own value: allowed wherever it points. A relative model path still means a file in
            // the models folder (as everywhere else); other relative paths are relative to the working folder.
            let path = match role {
                PathRole::Model if Path::new(value).is_relative() => self.models_dir.join(value),
                _ => self.user_path(value),
            };
            (path, Verdict::Allowed)
        } else {
            match role {
                PathRole::Model => match confined(value) {
                    Some(rel) => (self.models_dir.join(rel), Verdict::Allowed),
                    None => (
                        PathBuf::from(value),
                        Verdict::Refused(format!(
                            "model paths must lie inside the models folder '{}' (no absolute paths, no '..' \
                             leading out of it)",
                            self.models_dir.display()
                        )),
                    ),
                },
                PathRole::InputFile => {
                    let verdict = if self.allow_inputs {
                        Verdict::Allowed
                    } else {
                        Verdict::NeedsPermission(
                            "the graph came from a file and names a file to read; allow it with --allow-paths (or \
                             confirm it in the editor), or choose the file yourself"
                                .to_string(),
                        )
                    };
                    (self.user_path(value), verdict)
                }
                PathRole::Output => match confined(value) {
                    Some(rel) if rel.as_os_str().is_empty() => (
                        self.output_dir.clone(),
                        Verdict::Refused(format!(
                            "'{value}' names the output folder '{}' itself; give a file or folder name inside it",
                            self.output_dir.display()
                        )),
                    ),
                    Some(rel) => (self.output_dir.join(rel), Verdict::Allowed),
                    None => (
                        PathBuf::from(value),
                        Verdict::Refused(format!(
                            "a graph may write only inside the output folder '{}' (no absolute paths, no '..' \
                             leading out of it); to write elsewhere, pass --out or choose the file in the editor's \
                             dialog",
                            self.output_dir.display()
                        )),
                    ),
                },
            }
        };
        FileUse {
            node: node.to_string(),
            param: param.to_string(),
            role,
            value: value.to_string(),
            path,
            chosen,
            verdict,
        }
    }

    /// A path the user typed: absolute as it is, relative to the working directory.
    fn user_path(&self, value: &str) -> PathBuf {
        let p = Path::new(value);
        if p.is_absolute() || self.work_dir.as_os_str().is_empty() || self.work_dir == Path::new(".") {
            p.to_path_buf()
        } else {
            self.work_dir.join(p)
        }
    }
}

/// Every file the graph's nodes will read or write (path parameters with a value), in node order.
pub fn file_uses(graph: &Graph, registry: &KindRegistry, policy: &AccessPolicy) -> Vec<FileUse> {
    let mut uses = Vec::new();
    for (id, node) in &graph.nodes {
        let Some(kind) = registry.get(&node.kind) else { continue };
        let resolved = ResolvedParams::resolve(kind, node);
        for spec in kind.params {
            let ParamType::Path { role, .. } = spec.ty else { continue };
            let Some(value) = resolved.str(spec.name).filter(|v| !v.is_empty()) else { continue };
            uses.push(policy.resolve(id, spec.name, role, value));
        }
    }
    uses
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confined_resolves_dots_and_refuses_escapes() {
        assert_eq!(confined("a/./b/../c.mp4"), Some(PathBuf::from("a/c.mp4")));
        assert_eq!(confined("clip.mp4"), Some(PathBuf::from("clip.mp4")));
        assert_eq!(confined("."), Some(PathBuf::new()));
        assert_eq!(confined("a/.."), Some(PathBuf::new()));
        assert_eq!(confined(".."), None);
        assert_eq!(confined("a/../../b"), None);
        assert_eq!(confined("/etc/passwd"), None);
        assert_eq!(confined("../out/x.mp4"), None);
    }

    #[test]
    fn outputs_stay_in_the_output_folder_unless_the_user_chose() {
        let mut policy = AccessPolicy::new("models", "renders");
        let ok = policy.resolve("export", "path", PathRole::Output, "sub/{seed}.mp4");
        assert_eq!((ok.path.clone(), ok.verdict.clone()), (PathBuf::from("renders/sub/{seed}.mp4"), Verdict::Allowed));
        for bad in ["/tmp/x.mp4", "../x.mp4", "a/../../x.mp4", ".", "..", ""] {
            let u = policy.resolve("export", "path", PathRole::Output, bad);
            assert!(matches!(u.verdict, Verdict::Refused(_)), "{bad}: {u}");
        }
        policy.choose("export", "path", "/tmp/x.mp4");
        let chosen = policy.resolve("export", "path", PathRole::Output, "/tmp/x.mp4");
        assert_eq!((chosen.path, chosen.verdict, chosen.chosen), (PathBuf::from("/tmp/x.mp4"), Verdict::Allowed, true));
        // A relative output path the user typed is relative to the working folder, like any command-line path.
        policy.choose("export", "path", "clip.mp4");
        assert_eq!(policy.resolve("export", "path", PathRole::Output, "clip.mp4").path, PathBuf::from("clip.mp4"));
        // The choice is for that node and parameter only.
        let other = policy.resolve("export_2", "path", PathRole::Output, "/tmp/x.mp4");
        assert!(matches!(other.verdict, Verdict::Refused(_)));
    }

    #[test]
    fn models_resolve_inside_and_inputs_need_permission() {
        let mut policy = AccessPolicy::new("models", "out");
        let m = policy.resolve("ckpt", "path", PathRole::Model, "sd/../sd15");
        assert_eq!((m.path, m.verdict), (PathBuf::from("models/sd15"), Verdict::Allowed));
        for bad in ["/home/u/secret.safetensors", "../elsewhere.ckpt"] {
            assert!(matches!(policy.resolve("ckpt", "path", PathRole::Model, bad).verdict, Verdict::Refused(_)));
        }
        let i = policy.resolve("img", "path", PathRole::InputFile, "/home/u/me.png");
        assert!(matches!(i.verdict, Verdict::NeedsPermission(_)), "{i}");
        policy.allow_inputs = true;
        assert_eq!(policy.resolve("img", "path", PathRole::InputFile, "/home/u/me.png").verdict, Verdict::Allowed);
        // A model path the user typed: relative ones are still in the models folder, absolute ones anywhere.
        policy.choose("ckpt", "path", "other/sd15");
        policy.choose("ckpt", "path", "/disk/sd15.safetensors");
        assert_eq!(
            policy.resolve("ckpt", "path", PathRole::Model, "other/sd15").path,
            PathBuf::from("models/other/sd15")
        );
        let abs = policy.resolve("ckpt", "path", PathRole::Model, "/disk/sd15.safetensors");
        assert_eq!((abs.path, abs.verdict), (PathBuf::from("/disk/sd15.safetensors"), Verdict::Allowed));
    }
}
