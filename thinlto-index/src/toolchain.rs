//! LLVM toolchain discovery, shared by every tool and by xtask.
//!
//! Resolution follows kbuild, most specific first, for each of `CC`, `LD`
//! and `AR` separately:
//!
//! 1. an explicit `--cc`/`--ld`/`--ar` flag;
//! 2. the `CC`/`LD`/`AR` environment variable;
//! 3. `LLVM=…` (flag `--llvm` or environment): `1` means the unversioned
//!    names on `PATH` (`clang`, `ld.lld`, `llvm-ar`), `-19` a suffix
//!    (`clang-19`, …), `/usr/lib/llvm-19/bin/` a prefix (it must end in `/`);
//! 4. otherwise the newest complete `clang-N`/`ld.lld-N`/`llvm-ar-N` set on
//!    `PATH`, or `/usr/lib/llvm-N/bin/{clang,ld.lld,llvm-ar}`.
//!
//! Resolving only looks at the file system (cheap: tools call it on every
//! run); [`Toolchain::probe`] runs `--version` and checks that each tool is
//! what it claims to be.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// The packages that provide the toolchain on Debian and Ubuntu.
pub const APT_PACKAGES: &[&str] = &["clang-19", "lld-19", "llvm-19"];

/// The one-line hint printed whenever a tool cannot be found.
pub fn install_hint() -> String {
    format!(
        "install LLVM with `apt-get update && apt-get install -y {}` (Debian/Ubuntu), \
         or point LLVM=/path/to/llvm/bin/ (or CC, LD, AR) at an existing toolchain",
        APT_PACKAGES.join(" ")
    )
}

/// Which of the three kbuild tool variables a [`Tool`] fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Role {
    Cc,
    Ld,
    Ar,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Cc, Role::Ld, Role::Ar];

    /// The kbuild variable name: `CC`, `LD` or `AR`.
    pub fn var(self) -> &'static str {
        match self {
            Role::Cc => "CC",
            Role::Ld => "LD",
            Role::Ar => "AR",
        }
    }

    /// The LLVM program that fills this role, without prefix or suffix.
    pub fn llvm_name(self) -> &'static str {
        match self {
            Role::Cc => "clang",
            Role::Ld => "ld.lld",
            Role::Ar => "llvm-ar",
        }
    }

    /// What `--version` must print for the tool to be accepted.
    fn version_marker(self) -> &'static str {
        match self {
            Role::Cc => "clang version",
            Role::Ld => "LLD",
            Role::Ar => "LLVM",
        }
    }
}

/// Where a tool's name came from; shown by `--print-toolchain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    Flag,
    Env,
    Llvm(String),
    Search,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag => write!(f, "command-line flag"),
            Origin::Env => write!(f, "environment"),
            Origin::Llvm(v) => write!(f, "LLVM={v}"),
            Origin::Search => write!(f, "search"),
        }
    }
}

/// One resolved tool.
#[derive(Debug, Clone, Serialize)]
pub struct Tool {
    pub role: Role,
    /// The name as it will appear in command lines (kbuild's `$(CC)` text),
    /// e.g. `clang-19` or `/usr/lib/llvm-19/bin/clang`.
    pub spelled: String,
    /// The executable found for `spelled`.
    pub path: PathBuf,
    pub origin: Origin,
    /// First line of `--version`, filled by [`Toolchain::probe`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Tool {
    /// A `Command` for this tool, spelled as resolved.
    pub fn command(&self) -> Command {
        Command::new(&self.path)
    }
}

/// `CC`, `LD` and `AR`, resolved.
#[derive(Debug, Clone, Serialize)]
pub struct Toolchain {
    pub cc: Tool,
    pub ld: Tool,
    pub ar: Tool,
}

/// What the user asked for. Empty fields fall through to the environment.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ToolchainArgs {
    /// C compiler (kbuild's CC); default from $CC, then LLVM=, then a search
    #[arg(long, value_name = "PROGRAM")]
    pub cc: Option<String>,
    /// Linker (kbuild's LD); default from $LD, then LLVM=, then a search
    #[arg(long, value_name = "PROGRAM")]
    pub ld: Option<String>,
    /// Archiver (kbuild's AR); default from $AR, then LLVM=, then a search
    #[arg(long, value_name = "PROGRAM")]
    pub ar: Option<String>,
    /// kbuild's LLVM=: `1` (names on PATH), `-19` (suffix) or `/path/to/bin/` (prefix)
    #[arg(long, value_name = "1|-N|DIR/")]
    pub llvm: Option<String>,
    /// Print the resolved toolchain (paths, origins, versions) as JSON and exit
    #[arg(long)]
    pub print_toolchain: bool,
}

/// The environment the resolution reads; separate so tests can supply one.
#[derive(Debug, Clone, Default)]
pub struct ToolEnv {
    pub cc: Option<String>,
    pub ld: Option<String>,
    pub ar: Option<String>,
    pub llvm: Option<String>,
    pub path: Option<OsString>,
}

impl ToolEnv {
    pub fn from_process() -> ToolEnv {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        ToolEnv {
            cc: get("CC"),
            ld: get("LD"),
            ar: get("AR"),
            llvm: get("LLVM"),
            path: std::env::var_os("PATH"),
        }
    }

    fn var(&self, role: Role) -> Option<&str> {
        match role {
            Role::Cc => self.cc.as_deref(),
            Role::Ld => self.ld.as_deref(),
            Role::Ar => self.ar.as_deref(),
        }
    }
}

/// How a parsed `LLVM=` value names the tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlvmSpec {
    /// `LLVM=1`
    Plain,
    /// `LLVM=-19`
    Suffix(String),
    /// `LLVM=/usr/lib/llvm-19/bin/`
    Prefix(String),
}

impl LlvmSpec {
    pub fn parse(value: &str) -> Result<LlvmSpec> {
        if value == "1" {
            Ok(LlvmSpec::Plain)
        } else if value.ends_with('/') {
            Ok(LlvmSpec::Prefix(value.to_string()))
        } else if value.len() > 1 && value.starts_with('-') && !value.contains('/') {
            Ok(LlvmSpec::Suffix(value.to_string()))
        } else {
            bail!(
                "unknown LLVM={value:?}: expected LLVM=1 (tools on PATH), LLVM=-19 (suffix) \
                 or LLVM=/path/to/llvm/bin/ (prefix, with the trailing slash)"
            )
        }
    }

    pub fn name(&self, role: Role) -> String {
        match self {
            LlvmSpec::Plain => role.llvm_name().to_string(),
            LlvmSpec::Suffix(s) => format!("{}{s}", role.llvm_name()),
            LlvmSpec::Prefix(p) => format!("{p}{}", role.llvm_name()),
        }
    }
}

impl Toolchain {
    /// Resolves from flags and the process environment.
    pub fn resolve(args: &ToolchainArgs) -> Result<Toolchain> {
        Self::resolve_in(args, &ToolEnv::from_process())
    }

    /// Resolves from flags and the given environment.
    pub fn resolve_in(args: &ToolchainArgs, env: &ToolEnv) -> Result<Toolchain> {
        let llvm_value = args.llvm.as_deref().or(env.llvm.as_deref());
        let llvm = llvm_value.map(LlvmSpec::parse).transpose()?;
        let mut searched: Option<Result<SearchHit>> = None;
        let mut pick = |role: Role| -> Result<Tool> {
            let flag = match role {
                Role::Cc => args.cc.as_deref(),
                Role::Ld => args.ld.as_deref(),
                Role::Ar => args.ar.as_deref(),
            };
            let (spelled, origin) = if let Some(v) = flag {
                (v.to_string(), Origin::Flag)
            } else if let Some(v) = env.var(role) {
                (v.to_string(), Origin::Env)
            } else if let Some(spec) = &llvm {
                (
                    spec.name(role),
                    Origin::Llvm(llvm_value.unwrap().to_string()),
                )
            } else {
                let hit = searched.get_or_insert_with(|| search_newest(env.path.as_ref()));
                match hit {
                    Ok(hit) => (hit.name(role), Origin::Search),
                    Err(e) => bail!("{e:#}"),
                }
            };
            let path = find_program(&spelled, env.path.as_ref()).with_context(|| {
                format!(
                    "{} {spelled:?} (from {origin}) was not found{}; {}",
                    role.var(),
                    if spelled.contains('/') {
                        String::new()
                    } else {
                        " on PATH".to_string()
                    },
                    install_hint()
                )
            })?;
            Ok(Tool {
                role,
                spelled,
                path,
                origin,
                version: None,
            })
        };
        let cc = pick(Role::Cc)?;
        let ld = pick(Role::Ld)?;
        let ar = pick(Role::Ar)?;
        Ok(Toolchain { cc, ld, ar })
    }

    /// Runs `--version` on each tool, records the first line, and checks
    /// that `CC` is clang, `LD` is LLD and `AR` is llvm-ar.
    pub fn probe(&mut self) -> Result<()> {
        for tool in [&mut self.cc, &mut self.ld, &mut self.ar] {
            let out = Command::new(&tool.path)
                .arg("--version")
                .output()
                .with_context(|| format!("running `{} --version`", tool.spelled))?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            let first = text.lines().next().unwrap_or("").trim().to_string();
            if !out.status.success() || !text.contains(tool.role.version_marker()) {
                bail!(
                    "{}={} is not {}: `{} --version` says {:?}; {}",
                    tool.role.var(),
                    tool.spelled,
                    tool.role.llvm_name(),
                    tool.spelled,
                    first,
                    install_hint()
                );
            }
            tool.version = Some(first);
        }
        Ok(())
    }

    pub fn tools(&self) -> [&Tool; 3] {
        [&self.cc, &self.ld, &self.ar]
    }

    /// `CC=… LD=… AR=…` as make command-line variables.
    pub fn make_vars(&self) -> Vec<String> {
        self.tools()
            .iter()
            .map(|t| format!("{}={}", t.role.var(), t.spelled))
            .collect()
    }
}

impl fmt::Display for Toolchain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in self.tools() {
            writeln!(
                f,
                "{:<3} {} ({}; from {}){}",
                t.role.var(),
                t.spelled,
                t.path.display(),
                t.origin,
                t.version
                    .as_deref()
                    .map(|v| format!(": {v}"))
                    .unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

/// The three tool names of one version found by the search.
#[derive(Debug, Clone)]
struct SearchHit {
    /// `Some("-19")` for suffixed names on PATH, `None` for an LLVM bin dir.
    suffix: Option<String>,
    dir: Option<PathBuf>,
}

impl SearchHit {
    fn name(&self, role: Role) -> String {
        match (&self.dir, &self.suffix) {
            (Some(dir), _) => dir.join(role.llvm_name()).to_string_lossy().into_owned(),
            (None, Some(s)) => format!("{}{s}", role.llvm_name()),
            (None, None) => role.llvm_name().to_string(),
        }
    }
}

/// The newest version N with all of `clang-N`, `ld.lld-N`, `llvm-ar-N` on
/// PATH, or all of `/usr/lib/llvm-N/bin/{clang,ld.lld,llvm-ar}`.
fn search_newest(path: Option<&OsString>) -> Result<SearchHit> {
    let mut best: Option<(u32, SearchHit)> = None;
    let mut consider = |version: u32, hit: SearchHit| {
        if best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, hit));
        }
    };
    let dirs: Vec<PathBuf> = path
        .map(std::env::split_paths)
        .into_iter()
        .flatten()
        .collect();
    for dir in &dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(v) = name.to_str().and_then(|n| n.strip_prefix("clang-")) else {
                continue;
            };
            let Ok(version) = v.parse::<u32>() else {
                continue;
            };
            let suffix = format!("-{version}");
            let complete = Role::ALL
                .iter()
                .all(|r| find_program(&format!("{}{suffix}", r.llvm_name()), path).is_ok());
            if complete {
                consider(
                    version,
                    SearchHit {
                        suffix: Some(suffix),
                        dir: None,
                    },
                );
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(version) = name
                .to_str()
                .and_then(|n| n.strip_prefix("llvm-"))
                .and_then(|v| v.parse::<u32>().ok())
            else {
                continue;
            };
            let bin = entry.path().join("bin");
            if Role::ALL
                .iter()
                .all(|r| is_executable(&bin.join(r.llvm_name())))
            {
                consider(
                    version,
                    SearchHit {
                        suffix: None,
                        dir: Some(bin),
                    },
                );
            }
        }
    }
    match best {
        Some((_, hit)) => Ok(hit),
        None => bail!(
            "no LLVM toolchain found: CC, LD, AR and LLVM are unset, and no complete \
             clang-N/ld.lld-N/llvm-ar-N set is on PATH or in /usr/lib/llvm-*/bin; {}",
            install_hint()
        ),
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// `which`: a name with a `/` is taken as a path, anything else is looked up on PATH.
pub fn find_program(name: &str, path: Option<&OsString>) -> Result<PathBuf> {
    if name.is_empty() {
        bail!("empty program name");
    }
    if name.contains('/') {
        let p = PathBuf::from(name);
        if is_executable(&p) {
            return Ok(p);
        }
        bail!("{name} is not an executable file");
    }
    for dir in path.map(std::env::split_paths).into_iter().flatten() {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    bail!("{name} is not on PATH")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bin(dir: &Path, names: &[&str]) {
        use std::os::unix::fs::PermissionsExt;
        for n in names {
            let p = dir.join(n);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn llvm_values() {
        assert_eq!(LlvmSpec::parse("1").unwrap(), LlvmSpec::Plain);
        assert_eq!(LlvmSpec::parse("-19").unwrap().name(Role::Ld), "ld.lld-19");
        assert_eq!(
            LlvmSpec::parse("/opt/llvm/bin/").unwrap().name(Role::Ar),
            "/opt/llvm/bin/llvm-ar"
        );
        for bad in ["yes", "0", "/opt/llvm/bin", "-", "19"] {
            let e = LlvmSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains("unknown LLVM="), "{bad}: {e}");
        }
    }

    #[test]
    fn precedence_flag_env_llvm() {
        let d = tempfile::tempdir().unwrap();
        fake_bin(
            d.path(),
            &[
                "clang-7",
                "ld.lld-7",
                "llvm-ar-7",
                "mycc",
                "myld",
                "clang",
                "ld.lld",
                "llvm-ar",
            ],
        );
        let env = ToolEnv {
            cc: Some("mycc".into()),
            ld: None,
            ar: None,
            llvm: Some("-7".into()),
            path: Some(d.path().as_os_str().to_owned()),
        };
        let args = ToolchainArgs {
            ld: Some("myld".into()),
            ..Default::default()
        };
        let tc = Toolchain::resolve_in(&args, &env).unwrap();
        assert_eq!(tc.cc.spelled, "mycc");
        assert_eq!(tc.cc.origin, Origin::Env);
        assert_eq!(tc.ld.spelled, "myld");
        assert_eq!(tc.ld.origin, Origin::Flag);
        assert_eq!(tc.ar.spelled, "llvm-ar-7");
        assert_eq!(tc.ar.origin, Origin::Llvm("-7".into()));
    }

    #[test]
    fn search_prefers_newest_complete_set() {
        let d = tempfile::tempdir().unwrap();
        // 21 is incomplete (no llvm-ar-21), so 18 wins over 9.
        fake_bin(
            d.path(),
            &[
                "clang-9",
                "ld.lld-9",
                "llvm-ar-9",
                "clang-18",
                "ld.lld-18",
                "llvm-ar-18",
                "clang-21",
                "ld.lld-21",
            ],
        );
        let env = ToolEnv {
            path: Some(d.path().as_os_str().to_owned()),
            ..Default::default()
        };
        let hit = search_newest(env.path.as_ref()).unwrap();
        // /usr/lib/llvm-N may exist on the machine: then it wins only with
        // an N above 18 (tests/tests/toolchain.rs covers a PATH set that
        // beats every installed one).
        match &hit.dir {
            None => assert_eq!(hit.name(Role::Cc), "clang-18"),
            Some(dir) => {
                let n: u32 = dir
                    .strip_prefix("/usr/lib")
                    .ok()
                    .and_then(|d| d.to_str())
                    .and_then(|d| d.strip_prefix("llvm-"))
                    .and_then(|d| d.strip_suffix("/bin"))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{dir:?} is not /usr/lib/llvm-N/bin"));
                assert!(n > 18, "{dir:?} won over clang-18");
            }
        }
    }

    #[test]
    fn missing_tool_names_search_and_hint() {
        let d = tempfile::tempdir().unwrap();
        let env = ToolEnv {
            llvm: Some("-99".into()),
            path: Some(d.path().as_os_str().to_owned()),
            ..Default::default()
        };
        let e = format!(
            "{:#}",
            Toolchain::resolve_in(&ToolchainArgs::default(), &env).unwrap_err()
        );
        assert!(e.contains("clang-99"), "{e}");
        assert!(
            e.contains("apt-get install -y clang-19 lld-19 llvm-19"),
            "{e}"
        );
    }

    #[test]
    fn probe_rejects_a_cc_that_is_not_clang() {
        let d = tempfile::tempdir().unwrap();
        let gcc = d.path().join("gcc");
        std::fs::write(&gcc, "#!/bin/sh\necho 'gcc (Debian 12.2.0-14) 12.2.0'\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&gcc, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut tc = Toolchain {
            cc: Tool {
                role: Role::Cc,
                spelled: "gcc".into(),
                path: gcc.clone(),
                origin: Origin::Env,
                version: None,
            },
            ld: Tool {
                role: Role::Ld,
                spelled: "gcc".into(),
                path: gcc.clone(),
                origin: Origin::Env,
                version: None,
            },
            ar: Tool {
                role: Role::Ar,
                spelled: "gcc".into(),
                path: gcc,
                origin: Origin::Env,
                version: None,
            },
        };
        let e = tc.probe().unwrap_err().to_string();
        assert!(e.starts_with("CC=gcc is not clang"), "{e}");
    }
}
