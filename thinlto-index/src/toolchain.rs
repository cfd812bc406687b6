//! LLVM toolchain discovery, shared by every tool and by xtask.
//!
//! Resolution follows kbuild, most specific first, for each of `CC`, `LD`
//! and `AR` separately:
//!
//! 1. an explicit `--cc`/`--ld`/`--ar` flag (kbuild: `make CC=…` on the
//!    command line, which beats every assignment);
//! 2. `LLVM=…` (flag `--llvm` or environment): `1` means the unversioned
//!    names on `PATH` (`clang`, `ld.lld`, `llvm-ar`), `-19` a suffix
//!    (`clang-19`, …), `/usr/lib/llvm-19/bin/` a prefix (it must end in `/`).
//!    It beats the environment's `CC`/`LD`/`AR` because the top Makefile
//!    *assigns* `CC = $(LLVM_PREFIX)clang$(LLVM_SUFFIX)` when LLVM is set,
//!    and a makefile assignment overrides an environment variable;
//! 3. the `CC`/`LD`/`AR` environment variable;
//! 4. the tool the tree's `.cmd` records name, when the caller read them
//!    ([`ToolEnv::tree_cc`], [`ToolEnv::tree_ld`]): nothing above named a
//!    tool, so kbuild would run the recorded one again, and a newer LLVM
//!    on the machine must not silently compile differently. Records that
//!    name two different tools are an error naming both files;
//! 5. otherwise the newest complete `clang-N`/`ld.lld-N`/`llvm-ar-N` set on
//!    `PATH`, or `/usr/lib/llvm-N/bin/{clang,ld.lld,llvm-ar}`.
//!
//! A value may be a command with arguments (`CC="ccache clang-19"`), split
//! as `/bin/sh` splits it, as in kbuild's `$(CC) …` recipes: the text is
//! kept for command lines and records, the words for running, and the real
//! program (the word after any launcher such as `ccache`) for identity.
//!
//! Tools resolve only what they run ([`Toolchain::resolve_cc`], …): a
//! machine without `llvm-ar` can still run the backend compiles.
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

use crate::tree_tools::TreeRecord;

/// The LLVM versions the project is tested against (CI runs the suite with
/// each; `cargo xtask setup` installs them all): 19, the kernel's usual
/// toolchain, and 22, which distributed ThinLTO's DTLTO work needs.
pub const LLVM_VERSIONS: &[u32] = &[19, 22];

/// The Debian/Ubuntu packages of one LLVM version, each with the program
/// it provides for its role (`clang-N`, `ld.lld-N`, `llvm-ar-N`: what
/// kbuild's `LLVM=-N` runs).
pub fn llvm_packages(version: u32) -> [(String, String); 3] {
    [
        (format!("clang-{version}"), format!("clang-{version}")),
        (format!("lld-{version}"), format!("ld.lld-{version}")),
        (format!("llvm-{version}"), format!("llvm-ar-{version}")),
    ]
}

/// The packages of every version of [`LLVM_VERSIONS`].
pub fn apt_packages() -> Vec<String> {
    LLVM_VERSIONS
        .iter()
        .flat_map(|v| llvm_packages(*v).map(|(package, _)| package))
        .collect()
}

/// The one-line hint printed whenever a tool cannot be found.
pub fn install_hint() -> String {
    format!(
        "install LLVM with `apt-get update && apt-get install -y {}` (Debian/Ubuntu), \
         or point LLVM=/path/to/llvm/bin/ (or CC, LD, AR) at an existing toolchain",
        apt_packages().join(" ")
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
    /// The tree's `.cmd` records (the first record naming the tool).
    #[serde(rename = "tree-cmd-records")]
    Tree(PathBuf),
    Search,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag => write!(f, "command-line flag"),
            Origin::Env => write!(f, "environment"),
            Origin::Llvm(v) => write!(f, "LLVM={v}"),
            Origin::Tree(record) => {
                write!(f, "the tree's .cmd records ({}, …)", record.display())
            }
            Origin::Search => write!(f, "search"),
        }
    }
}

/// One resolved tool.
#[derive(Debug, Clone, Serialize)]
pub struct Tool {
    pub role: Role,
    /// The text as it will appear in command lines (kbuild's `$(CC)` text),
    /// e.g. `clang-19`, `/usr/lib/llvm-19/bin/clang` or `ccache clang-19`.
    pub spelled: String,
    /// `spelled` split as `/bin/sh` splits it: what runs.
    pub argv: Vec<String>,
    /// The executable found for `argv[0]`.
    pub exe: PathBuf,
    /// The real program (clang, ld.lld, llvm-ar) behind any launcher: what
    /// is probed, and what a flag such as `--ld-path=` must name. Equal to
    /// `exe` for a one-word tool.
    pub path: PathBuf,
    pub origin: Origin,
    /// First line of `--version`, filled by [`Toolchain::probe`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Tool {
    /// A `Command` running this tool as spelled (launcher and all).
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(&self.argv[1..]);
        c
    }

    /// Finds the executables for a spelled value.
    fn new(
        role: Role,
        spelled: String,
        origin: Origin,
        path_var: Option<&OsString>,
    ) -> Result<Tool> {
        let argv = thinlto_cmdparse::shell::split(&spelled)
            .map_err(|e| anyhow::anyhow!("{}={spelled:?} (from {origin}): {e}", role.var()))?;
        if argv.is_empty() {
            bail!(
                "{}={spelled:?} (from {origin}) names no program",
                role.var()
            );
        }
        let real = crate::launcher::real_program(&argv);
        let find = |name: &str| {
            find_program(name, path_var).map_err(|e| {
                anyhow::anyhow!(
                    "{} {spelled:?} (from {origin}): {e:#}; {}",
                    role.var(),
                    install_hint()
                )
            })
        };
        let exe = find(&argv[0])?;
        let path = if real == 0 {
            exe.clone()
        } else {
            find(&argv[real])?
        };
        Ok(Tool {
            role,
            spelled,
            argv,
            exe,
            path,
            origin,
            version: None,
        })
    }

    /// Runs `--version` on the real program, records the first line, and
    /// checks that it is what the role needs (clang, LLD, llvm-ar).
    pub fn probe(&mut self) -> Result<()> {
        let out = Command::new(&self.path)
            .arg("--version")
            .output()
            .with_context(|| format!("running `{} --version`", self.path.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let first = text.lines().next().unwrap_or("").trim().to_string();
        if !out.status.success() || !text.contains(self.role.version_marker()) {
            bail!(
                "{}={} is not {}: `{} --version` says {:?}; {}",
                self.role.var(),
                self.spelled,
                self.role.llvm_name(),
                self.path.display(),
                first,
                install_hint()
            );
        }
        self.version = Some(first);
        Ok(())
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
    // `global`: accepted before or after a subcommand, in every tool.
    /// C compiler (kbuild's CC), a command with arguments allowed ('ccache
    /// clang-19'); default from LLVM=, then $CC, then the tree's .cmd records, then a search
    #[arg(long, value_name = "COMMAND", global = true)]
    pub cc: Option<String>,
    /// Linker (kbuild's LD); default from LLVM=, then $LD, then the tree's records, then a search
    #[arg(long, value_name = "COMMAND", global = true)]
    pub ld: Option<String>,
    /// Archiver (kbuild's AR); default from LLVM=, then $AR, then a search
    #[arg(long, value_name = "COMMAND", global = true)]
    pub ar: Option<String>,
    /// kbuild's LLVM=: `1` (names on PATH), `-19` (suffix) or `/path/to/bin/` (prefix)
    #[arg(
        long,
        value_name = "1|-N|DIR/",
        global = true,
        allow_hyphen_values = true
    )]
    pub llvm: Option<String>,
    /// Print the resolved toolchain (paths, origins, versions) as JSON and exit
    #[arg(long, global = true)]
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
    /// The compiler the tree's records name (see [`crate::tree_tools`]);
    /// the caller reads the records it has.
    pub tree_cc: Option<TreeRecord>,
    /// The linker the tree's records name.
    pub tree_ld: Option<TreeRecord>,
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
            tree_cc: None,
            tree_ld: None,
        }
    }

    fn tree(&self, role: Role) -> Option<&TreeRecord> {
        match role {
            Role::Cc => self.tree_cc.as_ref(),
            Role::Ld => self.tree_ld.as_ref(),
            Role::Ar => None,
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

impl ToolchainArgs {
    fn flag(&self, role: Role) -> Option<&str> {
        match role {
            Role::Cc => self.cc.as_deref(),
            Role::Ld => self.ld.as_deref(),
            Role::Ar => self.ar.as_deref(),
        }
        .filter(|v| !v.trim().is_empty())
    }
}

/// Whether a flag, `LLVM=` or the environment names the tool for `role`
/// (steps 1-3): then the tree's records need not be read.
pub fn named(args: &ToolchainArgs, env: &ToolEnv, role: Role) -> bool {
    let llvm = args.llvm.as_deref().or(env.llvm.as_deref());
    args.flag(role).is_some() || llvm.is_some() || env.var(role).is_some()
}

/// Resolves the given roles from flags and `env`, in that order; the search
/// (step 5) looks for a version providing all of them, and only them.
pub fn resolve_roles(args: &ToolchainArgs, env: &ToolEnv, roles: &[Role]) -> Result<Vec<Tool>> {
    let llvm_value = args.llvm.as_deref().or(env.llvm.as_deref());
    let llvm = llvm_value.map(LlvmSpec::parse).transpose()?;
    let mut searched: Option<Result<SearchHit>> = None;
    // The search must not fail for a program nobody asked it for.
    let unnamed: Vec<Role> = roles
        .iter()
        .copied()
        .filter(|&r| !named(args, env, r) && env.tree(r).is_none())
        .collect();
    let mut tools = Vec::with_capacity(roles.len());
    for &role in roles {
        let (spelled, origin) = if let Some(v) = args.flag(role) {
            (v.to_string(), Origin::Flag)
        } else if let Some(spec) = &llvm {
            (
                spec.name(role),
                Origin::Llvm(llvm_value.unwrap().to_string()),
            )
        } else if let Some(v) = env.var(role) {
            (v.to_string(), Origin::Env)
        } else if let Some(tree) = env.tree(role) {
            match tree {
                TreeRecord::Agreed { spelled, record } => {
                    (spelled.clone(), Origin::Tree(record.clone()))
                }
                TreeRecord::Disagree { first, second } => bail!(
                    "{}: the tree's records name two different programs: {} runs `{}`, {} runs \
                     `{}` (the tree was built by both; kbuild would rebuild what the other \
                     built). Say which with --{} or {}=",
                    role.var(),
                    first.1.display(),
                    first.0,
                    second.1.display(),
                    second.0,
                    role.var().to_ascii_lowercase(),
                    role.var()
                ),
            }
        } else {
            let hit = searched.get_or_insert_with(|| search_newest(env.path.as_ref(), &unnamed));
            match hit {
                Ok(hit) => (hit.name(role), Origin::Search),
                Err(e) => bail!("{e:#}"),
            }
        };
        tools.push(Tool::new(role, spelled, origin, env.path.as_ref())?);
    }
    Ok(tools)
}

impl Toolchain {
    /// Resolves all three from flags and the process environment.
    pub fn resolve(args: &ToolchainArgs) -> Result<Toolchain> {
        Self::resolve_in(args, &ToolEnv::from_process())
    }

    /// Resolves all three from flags and the given environment.
    pub fn resolve_in(args: &ToolchainArgs, env: &ToolEnv) -> Result<Toolchain> {
        let mut t = resolve_roles(args, env, &Role::ALL)?.into_iter();
        let (cc, ld, ar) = (t.next().unwrap(), t.next().unwrap(), t.next().unwrap());
        Ok(Toolchain { cc, ld, ar })
    }

    /// Only `CC`, for a command that runs only the compiler.
    pub fn resolve_cc(args: &ToolchainArgs) -> Result<Tool> {
        Self::resolve_one(args, &ToolEnv::from_process(), Role::Cc)
    }

    /// Only `LD`, for a command that runs only the linker.
    pub fn resolve_ld(args: &ToolchainArgs) -> Result<Tool> {
        Self::resolve_one(args, &ToolEnv::from_process(), Role::Ld)
    }

    /// Only `AR`, for a command that runs only the archiver.
    pub fn resolve_ar(args: &ToolchainArgs) -> Result<Tool> {
        Self::resolve_one(args, &ToolEnv::from_process(), Role::Ar)
    }

    /// One role from flags and the given environment.
    pub fn resolve_one(args: &ToolchainArgs, env: &ToolEnv, role: Role) -> Result<Tool> {
        Ok(resolve_roles(args, env, &[role])?.remove(0))
    }

    /// Runs `--version` on each tool, records the first line, and checks
    /// that `CC` is clang, `LD` is LLD and `AR` is llvm-ar.
    pub fn probe(&mut self) -> Result<()> {
        for tool in [&mut self.cc, &mut self.ld, &mut self.ar] {
            tool.probe()?;
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

/// The newest version N with all of `clang-N`, `ld.lld-N`, `llvm-ar-N` (of
/// those in `roles`) on PATH, or all of `/usr/lib/llvm-N/bin/{clang,ld.lld,llvm-ar}`.
fn search_newest(path: Option<&OsString>, roles: &[Role]) -> Result<SearchHit> {
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
            let complete = roles
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
            if roles
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
            "no LLVM toolchain found: {} and LLVM are unset, and no complete {} set is on \
             PATH or in /usr/lib/llvm-*/bin; {}",
            roles.iter().map(|r| r.var()).collect::<Vec<_>>().join(", "),
            roles
                .iter()
                .map(|r| format!("{}-N", r.llvm_name()))
                .collect::<Vec<_>>()
                .join("/"),
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

    /// The bin directory of a real LLVM: the one `LLVM=-N` selects (as CI
    /// runs the tests once per tested version), else the newest installed
    /// tested version.
    fn real_llvm_dir() -> PathBuf {
        let dir = |v: &str| PathBuf::from(format!("/usr/lib/llvm-{v}/bin"));
        if let Some(v) = std::env::var("LLVM")
            .ok()
            .and_then(|l| l.strip_prefix('-').map(str::to_owned))
        {
            return dir(&v);
        }
        LLVM_VERSIONS
            .iter()
            .rev()
            .map(|v| dir(&v.to_string()))
            .find(|d| d.join("clang").exists())
            .unwrap_or_else(|| panic!("no LLVM installed: {}", install_hint()))
    }

    /// A PATH directory of symlinks to the real LLVM tools, named as given
    /// (`clang-19` → `/usr/lib/llvm-N/bin/clang`, …).
    fn real_bin(dir: &Path, links: &[(&str, &str)]) {
        for (name, target) in links {
            let real = real_llvm_dir().join(target);
            assert!(
                real.exists(),
                "{}: that LLVM is not installed ({})",
                real.display(),
                install_hint()
            );
            std::os::unix::fs::symlink(real, dir.join(name)).unwrap();
        }
    }

    fn env_in(dir: &Path) -> ToolEnv {
        ToolEnv {
            path: Some(dir.as_os_str().to_owned()),
            ..Default::default()
        }
    }

    #[test]
    fn precedence_flag_llvm_env() {
        let d = tempfile::tempdir().unwrap();
        fake_bin(d.path(), &["gcc", "myld", "mycc"]);
        real_bin(
            d.path(),
            &[
                ("clang", "clang"),
                ("ld.lld", "ld.lld"),
                ("llvm-ar", "llvm-ar"),
            ],
        );
        // kbuild: `CC=gcc make LLVM=1` builds with clang (the Makefile
        // assigns CC when LLVM is set, and an assignment beats the
        // environment).
        let env = ToolEnv {
            cc: Some("gcc".into()),
            ld: Some("myld".into()),
            llvm: Some("1".into()),
            ..env_in(d.path())
        };
        let tc = Toolchain::resolve_in(&ToolchainArgs::default(), &env).unwrap();
        assert_eq!(tc.cc.spelled, "clang");
        assert_eq!(tc.cc.origin, Origin::Llvm("1".into()));
        assert_eq!(tc.ld.spelled, "ld.lld");
        // `make CC=… LLVM=1`: the command line beats the assignment.
        let args = ToolchainArgs {
            cc: Some("mycc".into()),
            ..Default::default()
        };
        let tc = Toolchain::resolve_in(&args, &env).unwrap();
        assert_eq!(tc.cc.spelled, "mycc");
        assert_eq!(tc.cc.origin, Origin::Flag);
        assert_eq!(tc.ar.spelled, "llvm-ar");
        // Without LLVM=, the environment's CC is taken.
        let env = ToolEnv { llvm: None, ..env };
        let tc = Toolchain::resolve_in(&args, &env).unwrap();
        assert_eq!(tc.ld.spelled, "myld");
        assert_eq!(tc.ld.origin, Origin::Env);
        assert_eq!(
            Toolchain::resolve_one(&ToolchainArgs::default(), &env, Role::Cc)
                .unwrap()
                .spelled,
            "gcc"
        );
    }

    #[test]
    fn the_tree_records_come_after_the_environment_and_before_the_search() {
        let d = tempfile::tempdir().unwrap();
        fake_bin(
            d.path(),
            &["gcc", "clang-77", "clang-99", "ld.lld-99", "llvm-ar-99"],
        );
        let recorded = TreeRecord::Agreed {
            spelled: "clang-77".into(),
            record: "kernel/.fork.o.cmd".into(),
        };
        let env = ToolEnv {
            tree_cc: Some(recorded.clone()),
            ..env_in(d.path())
        };
        let none = ToolchainArgs::default();
        // The records beat the search (clang-99 is newer).
        let cc = Toolchain::resolve_one(&none, &env, Role::Cc).unwrap();
        assert_eq!(cc.spelled, "clang-77");
        assert_eq!(cc.origin, Origin::Tree("kernel/.fork.o.cmd".into()));
        assert_eq!(
            cc.origin.to_string(),
            "the tree's .cmd records (kernel/.fork.o.cmd, …)"
        );
        // They name only CC: LD still comes from the search.
        let tc = Toolchain::resolve_in(&none, &env).unwrap();
        assert_eq!(tc.ld.spelled, "ld.lld-99");
        // The environment, LLVM= and a flag each beat them.
        let with_env = ToolEnv {
            cc: Some("gcc".into()),
            ..env.clone()
        };
        assert_eq!(
            Toolchain::resolve_one(&none, &with_env, Role::Cc)
                .unwrap()
                .spelled,
            "gcc"
        );
        let with_llvm = ToolEnv {
            llvm: Some("-99".into()),
            ..env.clone()
        };
        assert_eq!(
            Toolchain::resolve_one(&none, &with_llvm, Role::Cc)
                .unwrap()
                .spelled,
            "clang-99"
        );
        let flag = ToolchainArgs {
            cc: Some("clang-99".into()),
            ..Default::default()
        };
        assert_eq!(
            Toolchain::resolve_one(&flag, &env, Role::Cc)
                .unwrap()
                .origin,
            Origin::Flag
        );
        // Records that disagree: an error naming both files, only when
        // they would be used.
        let split = ToolEnv {
            tree_cc: Some(TreeRecord::Disagree {
                first: ("clang-77".into(), "a/.x.o.cmd".into()),
                second: ("clang-99".into(), "b/.y.o.cmd".into()),
            }),
            ..env_in(d.path())
        };
        let e = Toolchain::resolve_one(&none, &split, Role::Cc)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a/.x.o.cmd runs `clang-77`, b/.y.o.cmd runs `clang-99`")
                && e.contains("--cc or CC="),
            "{e}"
        );
        assert_eq!(
            Toolchain::resolve_one(&flag, &split, Role::Cc)
                .unwrap()
                .spelled,
            "clang-99"
        );
    }

    #[test]
    fn a_cc_with_a_launcher_runs_the_launcher_and_probes_the_compiler() {
        let d = tempfile::tempdir().unwrap();
        real_bin(d.path(), &[("clang-19", "clang")]);
        // A stand-in for ccache (which may not be installed): runs its
        // arguments, as ccache does.
        let ccache = d.path().join("ccache");
        std::fs::write(&ccache, "#!/bin/sh\necho ran >> \"$0.log\"\nexec \"$@\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ccache, std::fs::Permissions::from_mode(0o755)).unwrap();
        for (cc, words, launcher) in [
            (
                "ccache clang-19",
                vec!["ccache", "clang-19"],
                Some(ccache.clone()),
            ),
            (
                "env  LC_ALL=C clang-19",
                vec!["env", "LC_ALL=C", "clang-19"],
                None,
            ),
        ] {
            let env = ToolEnv {
                cc: Some(cc.into()),
                path: Some(
                    std::env::join_paths([d.path(), Path::new("/usr/bin"), Path::new("/bin")])
                        .unwrap(),
                ),
                ..Default::default()
            };
            let mut tool =
                Toolchain::resolve_one(&ToolchainArgs::default(), &env, Role::Cc).unwrap();
            assert_eq!(tool.spelled, cc);
            assert_eq!(tool.argv, words);
            assert_eq!(tool.path, d.path().join("clang-19"));
            if let Some(l) = &launcher {
                assert_eq!(&tool.exe, l);
            }
            tool.probe().unwrap();
            // The real clang behind the link, whichever version it is.
            let major = real_llvm_dir()
                .parent()
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().trim_start_matches("llvm-").to_string())
                .unwrap();
            let version = tool.version.as_deref().unwrap();
            assert!(
                version.contains(&format!("clang version {major}.")),
                "{version}"
            );
            let out = tool
                .command()
                .arg("--version")
                .env("PATH", env.path.as_ref().unwrap())
                .output()
                .unwrap();
            assert!(String::from_utf8_lossy(&out.stdout).contains("clang version"));
        }
        // The launcher really ran (once, for `command()`; the probe ran clang).
        assert_eq!(
            std::fs::read_to_string(d.path().join("ccache.log")).unwrap(),
            "ran\n"
        );
    }

    #[test]
    fn only_the_tools_asked_for_must_exist() {
        let d = tempfile::tempdir().unwrap();
        real_bin(d.path(), &[("clang-19", "clang"), ("ld.lld-19", "ld.lld")]);
        let env = ToolEnv {
            llvm: Some("-19".into()),
            ..env_in(d.path())
        };
        let args = ToolchainArgs::default();
        let cc = Toolchain::resolve_one(&args, &env, Role::Cc).unwrap();
        assert_eq!(cc.path, d.path().join("clang-19"));
        Toolchain::resolve_one(&args, &env, Role::Ld).unwrap();
        let e = format!("{:#}", Toolchain::resolve_in(&args, &env).unwrap_err());
        assert!(e.contains("llvm-ar-19 is not on PATH"), "{e}");
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
        let hit = search_newest(env.path.as_ref(), &Role::ALL).unwrap();
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
            e.contains(&format!("apt-get install -y {}", apt_packages().join(" "))),
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
        let tool = |role| Tool::new(role, gcc.to_string_lossy().into(), Origin::Env, None).unwrap();
        let mut tc = Toolchain {
            cc: tool(Role::Cc),
            ld: tool(Role::Ld),
            ar: tool(Role::Ar),
        };
        let e = tc.probe().unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("CC={} is not clang", gcc.display())),
            "{e}"
        );
    }
}
