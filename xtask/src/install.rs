//! `cargo xtask install`: the four tools, built in release mode, copied
//! into one directory on PATH — what kbuild's rules (`CC="thinlto-backend
//! wrap clang-19"`, `make THINLTO_TOOLS=1`) call by name.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The binaries a kernel build calls.
pub const TOOLS: [&str; 4] = [
    "thinlto-cmdparse",
    "thinlto-index",
    "thinlto-backend",
    "modpost-ir",
];

/// `$CARGO_HOME/bin`, else `~/.cargo/bin`: where `cargo install` puts
/// programs, and so already on a Rust user's PATH.
pub fn default_bin_dir() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(h).join("bin"));
    }
    let home =
        std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set: give --bin-dir")?;
    Ok(PathBuf::from(home).join(".cargo/bin"))
}

/// Where the man pages and completions go for binaries in `bin_dir`: the
/// prefix's `share` (`~/.cargo/bin` → `~/.cargo/share`), which man and
/// bash-completion search beside each PATH directory.
pub fn share_dir(bin_dir: &Path) -> PathBuf {
    let abs = std::path::absolute(bin_dir).unwrap_or_else(|_| bin_dir.to_path_buf());
    abs.parent().unwrap_or(Path::new("/")).join("share")
}

/// Builds the tools and copies them into `bin_dir`, each through a
/// temporary and a rename (a build running the old binary meanwhile keeps
/// it; nobody sees half a program), then their man pages and shell
/// completions into [`share_dir`]. Returns the installed paths.
pub fn install(bin_dir: &Path) -> Result<Vec<PathBuf>> {
    // Lean binaries: the release build keeps debug info for profiling.
    let bins = crate::flow::build_bins_in("dist")?;
    std::fs::create_dir_all(bin_dir)
        .with_context(|| format!("{}: cannot create", bin_dir.display()))?;
    let mut out = Vec::new();
    for t in TOOLS {
        let from = bins.path(t);
        let to = bin_dir.join(t);
        let tmp = bin_dir.join(format!(".{t}.install-{}", std::process::id()));
        std::fs::copy(&from, &tmp)
            .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
        std::fs::rename(&tmp, &to).with_context(|| {
            let _ = std::fs::remove_file(&tmp);
            format!("{}: cannot move into place", to.display())
        })?;
        out.push(to);
    }
    out.extend(crate::manual::install(&share_dir(bin_dir))?);
    Ok(out)
}

/// Whether `dir` is on PATH (as given or canonical).
pub fn on_path(dir: &Path) -> bool {
    let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let want = canon(dir);
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| canon(&d) == want))
        .unwrap_or(false)
}
