//! The thin link: `$LD $LDFLAGS -r --thinlto-index-only=INDEX @ORDER`, then
//! a check of everything lld promised, then the manifest.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};

use crate::classify::classify;
use crate::manifest::{Manifest, ManifestObject};

/// One thin link to run.
#[derive(Debug, Clone)]
pub struct ThinLink {
    /// The linker program (kbuild's `$(LD)`).
    pub ld: PathBuf,
    /// `KBUILD_LDFLAGS`, already split into words.
    pub ldflags: Vec<String>,
    /// The index file to write (the list of bitcode inputs).
    pub index: PathBuf,
    /// Also have lld write `foo.o.imports` and report them.
    pub imports: bool,
    /// `builtin.order`: the inputs, one per line, in archive order.
    pub order_file: PathBuf,
}

/// The objects of an order file, one per line.
pub fn read_order(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let text = String::from_utf8(text).with_context(|| format!("{}: not UTF-8", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

impl ThinLink {
    /// The command line, as it will run (lld writes the index to `tmp`).
    pub fn command(&self, tmp_index: &Path) -> Command {
        let mut c = Command::new(&self.ld);
        c.args(&self.ldflags)
            .arg("-r")
            .arg(format!("--thinlto-index-only={}", tmp_index.display()));
        if self.imports {
            c.arg("--thinlto-emit-imports-files");
        }
        c.arg(format!("@{}", self.order_file.display()));
        c
    }

    /// Runs the link, checks its outputs and returns the manifest. The
    /// index file is written through a temporary and a rename.
    pub fn run(&self) -> Result<Manifest> {
        let inputs = read_order(&self.order_file)?;
        if inputs.is_empty() {
            bail!("{}: no objects listed", self.order_file.display());
        }
        let mut objects = Vec::with_capacity(inputs.len());
        for obj in &inputs {
            let kind = classify(Path::new(obj))
                .with_context(|| format!("{obj} (listed in {})", self.order_file.display()))?;
            objects.push(ManifestObject {
                object: obj.clone(),
                kind,
                summary: None,
                imports: None,
            });
        }
        let dir = match self.index.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".thinlto-index.")
            .tempfile_in(&dir)
            .with_context(|| format!("{}: cannot create a temporary file", dir.display()))?;
        let tmp_path = tmp.path().to_path_buf();
        let started = SystemTime::now();
        let mut cmd = self.command(&tmp_path);
        let shown = format!("{cmd:?}");
        let status = cmd
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("cannot run the linker: {shown}"))?;
        if !status.success() {
            bail!("the thin link failed ({status}): {shown}");
        }
        let listed = read_order(&tmp_path)?;
        let expected: Vec<&str> = objects
            .iter()
            .filter(|o| o.kind.is_bitcode())
            .map(|o| o.object.as_str())
            .collect();
        if listed != expected {
            let missing: Vec<&&str> = expected
                .iter()
                .filter(|e| !listed.iter().any(|l| l == **e))
                .take(3)
                .collect();
            bail!(
                "the linker's index lists {} objects, the inputs hold {} bitcode objects (first missing: {missing:?}): {shown}",
                listed.len(),
                expected.len()
            );
        }
        for o in objects.iter_mut().filter(|o| o.kind.is_bitcode()) {
            let summary = format!("{}.thinlto.bc", o.object);
            let fresh = std::fs::metadata(&summary)
                .and_then(|m| m.modified())
                .map(|t| t >= started - std::time::Duration::from_secs(1))
                .unwrap_or(false);
            if !fresh {
                bail!("{summary}: the linker did not write it: {shown}");
            }
            o.summary = Some(summary);
            if self.imports {
                let path = format!("{}.imports", o.object);
                let list = read_order(Path::new(&path))
                    .with_context(|| format!("{path}: the linker did not write it"))?;
                o.imports = Some(list);
            }
        }
        tmp.persist(&self.index)
            .map_err(|e| e.error)
            .with_context(|| {
                format!("{}: cannot move the index into place", self.index.display())
            })?;
        Ok(Manifest {
            index: self.index.to_string_lossy().into_owned(),
            objects,
        })
    }
}
