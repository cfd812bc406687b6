//! The thin link: `$LD $LDFLAGS -r --thinlto-index-only=INDEX @ORDER`, then
//! a check of everything lld promised, then the manifest.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};

use crate::classify::classify;
use crate::fsutil::AtomicFile;
use crate::manifest::{Manifest, ManifestObject};

/// One thin link to run.
#[derive(Debug, Clone)]
pub struct ThinLink {
    /// The linker (kbuild's `$(LD)`).
    pub ld: crate::Tool,
    /// `KBUILD_LDFLAGS`, already split into words.
    pub ldflags: Vec<String>,
    /// The index file to write (the list of bitcode inputs).
    pub index: PathBuf,
    /// Also have lld write `foo.o.imports` and report them.
    pub imports: bool,
    /// `builtin.order`: the inputs, one per line, in archive order.
    pub order_file: PathBuf,
    /// Run lld even when the record says its inputs are unchanged.
    pub force: bool,
}

/// What a thin link did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkOutcome {
    Linked,
    /// Same command, same input contents as the recorded link, and every
    /// output still there: lld was not run, nothing was rewritten.
    UpToDate,
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
        let mut c = self.ld.command();
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
        Ok(self.run_incremental()?.0)
    }

    /// The record of the last link: `dir/.vmlinux.thinlto-index.digests.cmd`,
    /// in kbuild's `savedcmd_` form plus a digest of every input's content.
    /// Not kbuild's own `dir/.vmlinux.thinlto-index.cmd`: when kbuild runs
    /// this tool under `if_changed` (examples/kbuild/thinlto-tools.patch),
    /// make truncates that file after every run of the recipe.
    pub fn record_path(&self) -> PathBuf {
        let name = self
            .index
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        thinlto_cmdparse::dot_cmd_path(&self.index).with_file_name(format!(".{name}.digests.cmd"))
    }

    fn inputs_digest(&self, inputs: &[String], command: &str) -> Result<String> {
        let mut h = blake3::Hasher::new();
        h.update(command.as_bytes());
        h.update(b"\0");
        // A new linker binary may index differently.
        if let Ok(m) = std::fs::metadata(&self.ld.path) {
            h.update(format!("{} {:?}\0", m.len(), m.modified().ok()).as_bytes());
        }
        for obj in inputs {
            let bytes = std::fs::read(obj).with_context(|| format!("{obj}: cannot read"))?;
            h.update(obj.as_bytes());
            h.update(b"\0");
            h.update(blake3::hash(&bytes).as_bytes());
        }
        Ok(h.finalize().to_hex().to_string())
    }

    /// Like [`ThinLink::run`], but skips lld when the recorded link had the
    /// same command and input contents and its outputs are all in place —
    /// kbuild's if_changed, by content. Skipping also leaves every
    /// `.thinlto.bc` untouched (lld rewrites them all, same bytes, new mtimes).
    pub fn run_incremental(&self) -> Result<(Manifest, LinkOutcome)> {
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
        let shown_cmd = {
            let c = self.command(&self.index);
            let mut v = vec![c.get_program().to_string_lossy().into_owned()];
            v.extend(c.get_args().map(|a| a.to_string_lossy().into_owned()));
            thinlto_cmdparse::shell::join(&v)
        };
        let digest = self.inputs_digest(&inputs, &shown_cmd)?;
        let record_text = format!(
            "savedcmd_{} := {}\n# thinlto-dist: inputs {digest}\n",
            self.index.display(),
            thinlto_cmdparse::make::escape_savedcmd(&shown_cmd)
        );
        if !self.force
            && std::fs::read_to_string(self.record_path()).ok().as_deref()
                == Some(record_text.as_str())
        {
            if let Ok(m) = self.manifest_from_outputs(objects.clone(), None) {
                // make asked because the order file is newer than the
                // index: an index as new as a link would leave it lets the
                // next make find nothing to redo (the bytes are the same).
                std::fs::File::options()
                    .write(true)
                    .open(&self.index)
                    .and_then(|f| f.set_modified(SystemTime::now()))
                    .with_context(|| {
                        format!("{}: cannot update its mtime", self.index.display())
                    })?;
                return Ok((m, LinkOutcome::UpToDate));
            }
        }
        // lld rewrites every `.thinlto.bc` in place while it runs: from the
        // moment it starts, the record no longer describes the outputs. A
        // failed or killed link must not leave it to vouch for a mix of old
        // and new summaries once the inputs are back as recorded.
        match std::fs::remove_file(self.record_path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e)
                    .with_context(|| format!("{}: cannot remove", self.record_path().display()))
            }
            _ => {}
        }
        // lld truncates and writes the temporary it is given, so the index
        // keeps the temporary's mode (0666 minus the umask).
        let tmp = AtomicFile::new(&self.index)?;
        let tmp_path = tmp.temp_path().to_path_buf();
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
        let manifest = self
            .manifest_from_outputs_at(objects, &tmp_path, Some(started))
            .map_err(|e| anyhow::anyhow!("{e:#}: {shown}"))?;
        tmp.commit()?;
        // The record comes back last, once every output is in place.
        crate::fsutil::write_atomic(&self.record_path(), record_text.as_bytes())?;
        Ok((manifest, LinkOutcome::Linked))
    }

    fn manifest_from_outputs(
        &self,
        objects: Vec<ManifestObject>,
        since: Option<SystemTime>,
    ) -> Result<Manifest> {
        self.manifest_from_outputs_at(objects, &self.index, since)
    }

    /// Checks what lld promised — the index lists exactly the bitcode
    /// inputs in order, each has its `.thinlto.bc` (written after `since`,
    /// when given) and, with `--imports`, its `.imports` — and builds the
    /// manifest.
    fn manifest_from_outputs_at(
        &self,
        mut objects: Vec<ManifestObject>,
        index_file: &Path,
        since: Option<SystemTime>,
    ) -> Result<Manifest> {
        let listed = read_order(index_file)?;
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
                "the linker's index lists {} objects, the inputs hold {} bitcode objects (first missing: {missing:?})",
                listed.len(),
                expected.len()
            );
        }
        for o in objects.iter_mut().filter(|o| o.kind.is_bitcode()) {
            let summary = format!("{}.thinlto.bc", o.object);
            let ok = std::fs::metadata(&summary)
                .and_then(|m| m.modified())
                .map(|t| since.is_none_or(|s| t >= s - std::time::Duration::from_secs(1)))
                .unwrap_or(false);
            if !ok {
                bail!("{summary}: the linker did not write it");
            }
            o.summary = Some(summary);
            if self.imports {
                let path = format!("{}.imports", o.object);
                let list = read_order(Path::new(&path))
                    .with_context(|| format!("{path}: the linker did not write it"))?;
                o.imports = Some(list);
            }
        }
        Ok(Manifest {
            index: self.index.to_string_lossy().into_owned(),
            objects,
        })
    }
}
