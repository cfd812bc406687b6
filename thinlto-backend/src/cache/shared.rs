//! The remote tier as the backend uses it: two REAPI actions per job.
//!
//! A job's files are known only in part before it runs (the `.incbin`
//! problem, see the module docs of [`super`]). So, as in the local tier,
//! there are two levels, each a real REAPI action:
//! - the *manifest action*: the job's command, an input root holding the
//!   object, its shard and its imports, and a salt marking it a manifest;
//!   its output `thinlto-dist.manifest` lists the variants (the extra
//!   files each compile read, with their SHA-256 digests), newest first,
//!   and its other outputs are the newest variant's native (and `.dwo`):
//!   the usual hit is one `GetActionResult` and one `BatchReadBlobs`;
//! - the *compile action* of a variant: the same command, the input root
//!   plus the variant's extra files under the tree, and its outputs (the
//!   native, the `.dwo`). This one is exactly the compile: a service that
//!   executes actions could run it as it is (once given the inputs, which
//!   a cache-only client does not upload). Extra files outside the tree
//!   (`/usr/lib/os-release`, which the driver reads) cannot be in an input
//!   root; their paths and digests go into the salt.
//!
//! Both salts carry the compiler's identity (and the working directory
//! when the command asks for debug information).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::job::BackendJob;
use crate::limits::{
    MAX_EXTRAS, MAX_EXTRA_BYTES, MAX_MANIFEST_BYTES, MAX_OUTPUT_TEXT, MAX_PATH_BYTES, MAX_VARIANTS,
};
use crate::reapi::RemoteOptions;
use crate::reapi::{is_transient, ActionSpec, Digest, InputFile, RemoteCache, RemoteHit};

const MANIFEST_OUTPUT: &str = "thinlto-dist.manifest";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RemoteManifest {
    /// Each variant: its extra files as (path, SHA-256 hex, size).
    variants: Vec<Vec<(String, String, i64)>>,
}

impl RemoteManifest {
    /// The manifest a server sent, if it keeps to the bounds of
    /// [`super::limits`]; anything else is no manifest (a miss).
    fn parse(bytes: &[u8]) -> Option<RemoteManifest> {
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return None;
        }
        let m: RemoteManifest = serde_json::from_slice(bytes).ok()?;
        let sane =
            m.variants.len() <= MAX_VARIANTS && m.variants.iter().all(|v| v.len() <= MAX_EXTRAS);
        sane.then_some(m)
    }
}

/// Whether a remote manifest's extra file is one the client may open and
/// digest: a file the local trace could have listed ([`super::trace`]),
/// spelled as it spells them, of a size within [`MAX_EXTRA_BYTES`]. A
/// path relative to the tree, plain names only (no `..` to climb out of
/// it, no empty or `.` component), or an absolute one outside /proc, /sys
/// and /dev (the compiler's own files, which every trace lists; the
/// compile action names them in its salt). What is opened is then read
/// only if it is a regular file ([`crate::digest::open_regular`]).
fn extra_is_plain(path: &str, size: i64) -> bool {
    let rel = path.strip_prefix('/').unwrap_or(path);
    let plain = !rel.is_empty()
        && path.len() <= MAX_PATH_BYTES
        && !path.contains('\0')
        && rel
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    let special =
        path.starts_with('/') && matches!(rel.split('/').next(), Some("proc" | "sys" | "dev"));
    plain && !special && (0..=MAX_EXTRA_BYTES as i64).contains(&size)
}

/// Whether an absolute extra a remote manifest names is a file every user
/// of this machine may read: owned by root, readable by others, reached
/// through root-owned directories others may search (what a package
/// installs: the compiler's headers, `/usr/lib/os-release`). Digesting a
/// file is answering the server's question "does it hold these bytes?"
/// (the client then asks for the compile action keyed on the digest), so
/// a user's own files — a key, a config in a private directory — are
/// never opened on a server's word; the job is a miss and compiles
/// locally. Relative extras stay within the tree, which a remote build
/// sends to the farm anyway.
fn absolute_extra_is_public(path: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(real) = std::fs::canonicalize(path) else {
        return false;
    };
    let public = |p: &Path, bit: u32| {
        std::fs::metadata(p).is_ok_and(|m| m.uid() == 0 && m.mode() & bit != 0)
    };
    public(&real, 0o004) && real.ancestors().skip(1).all(|d| public(d, 0o001))
}

/// A remote hit: the outputs by path, what the compiler printed, and the
/// extra files of the variant (for the local tier's copy).
pub struct RemoteResult {
    pub key: String,
    pub native: Vec<u8>,
    pub dwo: Option<Vec<u8>>,
    pub output: String,
    pub extras: Vec<String>,
    /// What the compile read beyond its inputs, for the job's record:
    /// the variant's extra files (its compile action's input, keyed by
    /// the digests this client took), each with its blake3 from a read
    /// that saw the same SHA-256 ([`Digest::blake3_of_files_as_sent`]).
    /// None when a file changed since the lookup digested it.
    pub reads: Option<BTreeMap<String, String>>,
}

pub struct RemoteTier {
    cache: RemoteCache,
    /// SHA-256 of files, each hashed once per run.
    sha: Mutex<HashMap<String, Option<Digest>>>,
    /// Set after an error: the rest of the run does without.
    off: AtomicBool,
    /// Each job's manifest as its lookup found it (by native), so that
    /// storing a variant needs no second fetch.
    manifests: Mutex<HashMap<String, RemoteManifest>>,
    url: String,
}

impl RemoteTier {
    pub fn connect(opts: &RemoteOptions) -> Result<RemoteTier> {
        Ok(RemoteTier {
            cache: RemoteCache::connect(opts)?,
            sha: Mutex::new(HashMap::new()),
            off: AtomicBool::new(false),
            manifests: Mutex::new(HashMap::new()),
            url: opts.url.clone(),
        })
    }

    pub fn is_off(&self) -> bool {
        self.off.load(Ordering::Relaxed)
    }

    /// Reports an error once and leaves the remote tier out from now on.
    pub fn fail(&self, e: &anyhow::Error) {
        if !self.off.swap(true, Ordering::Relaxed) {
            eprintln_one_write!(
                "thinlto-backend: cache: remote cache {}: {e:#}; not used for the rest of this run",
                self.url
            );
        }
    }

    fn sha(&self, path: &str) -> Option<Digest> {
        if let Some(d) = self.sha.lock().unwrap().get(path) {
            return d.clone();
        }
        let d = Digest::of_file(Path::new(path)).ok();
        self.sha.lock().unwrap().insert(path.to_string(), d.clone());
        d
    }

    fn base_inputs(&self, job: &BackendJob) -> Result<Vec<InputFile>> {
        let mut v = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for p in job.content_inputs() {
            if !seen.insert(p) {
                continue;
            }
            let digest = self
                .sha(p)
                .with_context(|| format!("{p}: cannot read (input of {})", job.native))?;
            v.push(InputFile {
                path: tree_path(p)?,
                digest,
                executable: false,
            });
        }
        Ok(v)
    }

    fn manifest_spec(&self, job: &BackendJob, salt: &[u8]) -> Result<ActionSpec> {
        let mut s = b"thinlto-dist manifest 2\0".to_vec();
        s.extend_from_slice(salt);
        let mut output_paths = vec![MANIFEST_OUTPUT.into()];
        output_paths.extend(outputs_of(job)?);
        Ok(ActionSpec {
            argv: job.argv.clone(),
            env: Vec::new(),
            output_paths,
            inputs: self.base_inputs(job)?,
            salt: s,
        })
    }

    fn compile_spec(
        &self,
        job: &BackendJob,
        salt: &[u8],
        extras: &[(String, Digest)],
    ) -> Result<ActionSpec> {
        let mut s = b"thinlto-dist compile 1\0".to_vec();
        s.extend_from_slice(salt);
        let mut inputs = self.base_inputs(job)?;
        for (p, d) in extras {
            match tree_path(p) {
                Ok(rel) => inputs.push(InputFile {
                    path: rel,
                    digest: d.clone(),
                    executable: false,
                }),
                // Outside the tree: named in the salt.
                Err(_) => s.extend_from_slice(format!("extra {p} {d}\0").as_bytes()),
            }
        }
        Ok(ActionSpec {
            argv: job.argv.clone(),
            env: Vec::new(),
            output_paths: outputs_of(job)?,
            inputs,
            salt: s,
        })
    }

    /// The manifest, and the result it came with: the newest variant's
    /// outputs and what its compile printed.
    fn manifest(&self, job: &BackendJob, salt: &[u8]) -> Result<(RemoteManifest, RemoteHit)> {
        let key = self.manifest_spec(job, salt)?.key()?;
        Ok(match self.cache.lookup(&key)? {
            Some(mut hit) => {
                let m = hit
                    .outputs
                    .remove(MANIFEST_OUTPUT)
                    .and_then(|b| RemoteManifest::parse(&b))
                    .unwrap_or_default();
                (m, hit)
            }
            None => (
                RemoteManifest::default(),
                RemoteHit {
                    outputs: BTreeMap::new(),
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                    exit_code: 0,
                },
            ),
        })
    }

    /// The job's result from the remote cache, if a variant's extra files
    /// all have their recorded digests now (retried while the server is
    /// overloaded).
    pub fn lookup(&self, job: &BackendJob, salt: &[u8]) -> Result<Option<RemoteResult>> {
        retry(|| self.lookup_once(job, salt))
    }

    fn lookup_once(&self, job: &BackendJob, salt: &[u8]) -> Result<Option<RemoteResult>> {
        let (m, mut newest) = self.manifest(job, salt)?;
        self.manifests
            .lock()
            .unwrap()
            .insert(job.native.clone(), m.clone());
        for (n, variant) in m.variants.iter().enumerate() {
            let now: Option<Vec<(String, Digest)>> = variant
                .iter()
                .map(|(p, h, size)| {
                    if !extra_is_plain(p, *size)
                        || (p.starts_with("/") && !absolute_extra_is_public(p))
                    {
                        return None;
                    }
                    let d = self.sha(p)?;
                    (d.hash == *h && d.size_bytes == *size).then(|| (p.clone(), d))
                })
                .collect();
            let Some(extras) = now else { continue };
            let spec = self.compile_spec(job, salt, &extras)?;
            let key = spec.key()?;
            // The newest variant's outputs came with the manifest (each
            // checked against its digest); another's are its compile
            // action's.
            let outputs_here = n == 0
                && spec
                    .output_paths
                    .iter()
                    .all(|p| newest.outputs.contains_key(p));
            let mut hit = if outputs_here {
                std::mem::replace(
                    &mut newest,
                    RemoteHit {
                        outputs: BTreeMap::new(),
                        stdout: Vec::new(),
                        stderr: Vec::new(),
                        exit_code: 0,
                    },
                )
            } else {
                match self.cache.lookup(&key)? {
                    Some(h) => h,
                    None => continue,
                }
            };
            // Nothing empty is a hit (no compile that succeeds writes an
            // empty object).
            let Some(native) = hit
                .outputs
                .remove(&spec.output_paths[0])
                .filter(|b| !b.is_empty())
            else {
                continue;
            };
            let dwo = match spec.output_paths.get(1) {
                Some(p) => match hit.outputs.remove(p).filter(|b| !b.is_empty()) {
                    Some(b) => Some(b),
                    None => continue,
                },
                None => None,
            };
            if hit.stdout.len() + hit.stderr.len() > MAX_OUTPUT_TEXT {
                continue;
            }
            // Replayed as the compile's warnings: printed escaped.
            let mut output = String::from_utf8_lossy(&hit.stdout).into_owned();
            output.push_str(&String::from_utf8_lossy(&hit.stderr));
            let output = crate::reapi::printable(&output).into_owned();
            return Ok(Some(RemoteResult {
                key: key.action.hash.clone(),
                native,
                dwo,
                output,
                reads: Digest::blake3_of_files_as_sent(&extras),
                extras: extras.into_iter().map(|(p, _)| p).collect(),
            }));
        }
        Ok(None)
    }

    /// Stores a compile's result (the outputs as they are on disk now) and
    /// adds its variant to the job's manifest (retried while the server is
    /// overloaded).
    pub fn store(
        &self,
        job: &BackendJob,
        salt: &[u8],
        extras: &[String],
        native: &[u8],
        dwo: Option<&[u8]>,
        output: &str,
    ) -> Result<()> {
        retry(|| {
            let mut with = Vec::new();
            for p in extras {
                match self.sha(p) {
                    Some(d) => with.push((p.clone(), d)),
                    None => bail!("{p}: gone since the compile read it"),
                }
            }
            let spec = self.compile_spec(job, salt, &with)?;
            let key = spec.key()?;
            let mut outputs = vec![(spec.output_paths[0].clone(), native.to_vec())];
            if let (Some(p), Some(b)) = (spec.output_paths.get(1), dwo) {
                outputs.push((p.clone(), b.to_vec()));
            }
            self.cache.store(&key, &outputs, b"", output.as_bytes())?;
            let known = self.manifests.lock().unwrap().remove(&job.native);
            let mut m = match known {
                Some(m) => m,
                None => self.manifest(job, salt)?.0,
            };
            let variant: Vec<(String, String, i64)> = with
                .iter()
                .map(|(p, d)| (p.clone(), d.hash.clone(), d.size_bytes))
                .collect();
            m.variants.retain(|v| *v != variant);
            m.variants.insert(0, variant);
            m.variants.truncate(MAX_VARIANTS);
            let mkey = self.manifest_spec(job, salt)?.key()?;
            let mut with_manifest = vec![(MANIFEST_OUTPUT.to_string(), serde_json::to_vec(&m)?)];
            with_manifest.extend(outputs);
            // What the compiler printed goes with the newest variant too.
            self.cache
                .store(&mkey, &with_manifest, b"", output.as_bytes())
        })
    }
}

/// Runs `op` again after a transient error (an overloaded server), with
/// exponential back-off from 10 ms, up to about 5 s in all.
fn retry<T>(mut op: impl FnMut() -> Result<T>) -> Result<T> {
    let mut pause = std::time::Duration::from_millis(10);
    for _ in 0..9 {
        match op() {
            Err(e) if is_transient(&e) && crate::signals::pending_signal().is_none() => {
                std::thread::sleep(pause);
                pause *= 2;
            }
            r => return r,
        }
    }
    op()
}

/// A job's outputs as an action names them: the native, and the `.dwo`
/// when the command asks for split DWARF.
fn outputs_of(job: &BackendJob) -> Result<Vec<String>> {
    let mut outputs = vec![tree_path(&job.native)?];
    if let Some(dwo) = crate::job::split_dwarf_file(&job.argv, Path::new(&job.native)) {
        outputs.push(tree_path(&dwo.to_string_lossy())?);
    }
    Ok(outputs)
}

/// A path of the tree as an input root spells it: relative, plain names.
fn tree_path(p: &str) -> Result<String> {
    let t = p.strip_prefix("./").unwrap_or(p);
    if t.starts_with('/') || t.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        bail!("{p}: not a plain path under the tree (the remote cache needs one)");
    }
    Ok(t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_extras_are_opened() {
        for ok in [
            "kernel/config_data.txt",
            "a",
            "/usr/lib/os-release",
            "/usr/lib/llvm-19/bin/clang",
        ] {
            assert!(extra_is_plain(ok, 10), "{ok:?} refused");
        }
        for bad in [
            "../x",
            "kernel/../../x",
            "./a",
            "a//b",
            "a/",
            "",
            "/",
            "/dev/zero",
            "/proc/self/environ",
            "/sys/kernel/notes",
            "/usr/../dev/zero",
            "a\0b",
        ] {
            assert!(!extra_is_plain(bad, 10), "{bad:?} accepted");
        }
        assert!(!extra_is_plain(&"a/".repeat(MAX_PATH_BYTES), 10));
        assert!(!extra_is_plain("a", -1));
        assert!(!extra_is_plain("a", 1 << 62));
    }

    #[test]
    fn manifests_over_the_bounds_are_none() {
        let m = |variants: usize, extras: usize| {
            let v = vec![("a".to_string(), "00".repeat(32), 1i64); extras];
            serde_json::to_vec(&RemoteManifest {
                variants: vec![v; variants],
            })
            .unwrap()
        };
        assert!(RemoteManifest::parse(&m(MAX_VARIANTS, 3)).is_some());
        assert!(RemoteManifest::parse(&m(MAX_VARIANTS + 1, 3)).is_none());
        assert!(RemoteManifest::parse(&m(1, MAX_EXTRAS + 1)).is_none());
        assert!(RemoteManifest::parse(b"{not json").is_none());
    }
}
