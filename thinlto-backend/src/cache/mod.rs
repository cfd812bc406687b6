//! The backend cache (`--cache`): a compile whose result is stored is
//! never run again, in this tree or another, on this machine (the local
//! tier, [`local`]) or, with `--remote-cache`, on any machine sharing a
//! Remote Execution API cache ([`remote`]).
//!
//! The key of a job ([`BackendCache::key`]) is complete, or the cache
//! would be worse than none:
//! - the compiler's identity ([`identity`]: build ids of the executable and
//!   its libraries, `--version`, config files, `CCC_*`/`CLANG_*`/`LLVM_*`);
//! - the whole argv, the output path included (relative, as kbuild spells
//!   it, so that another checkout of the tree shares the entries), and the
//!   working directory when the command asks for debug information (which
//!   may record it);
//! - the path and digest of the object, its shard and every module it
//!   imports (the shard also records each imported module's hash);
//! - the files the compile read beyond those ([`trace`]): what inline asm
//!   `.incbin`s, found by tracing the compiler's `open` calls through the
//!   preload shim. They are not known before the first compile, so a key
//!   names a manifest of variants, each valid while its extra files keep
//!   their digests (ccache's manifests). A compile the shim could not
//!   trace (a static compiler) is not stored.
//!
//! Every stored output is checked against its digest when read: a
//! corrupt, truncated or foreign entry is a miss. A cache that fails (a
//! full disk, an unreachable server) is reported once and left out of the
//! rest of the run; the build goes on.

pub mod identity;
pub mod local;
pub mod remote;
pub mod trace;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::plan::{BackendJob, DigestCache};
use crate::record::NativeRecord;
use local::{Counters, LocalStore, Variant};

/// Which tier answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Local,
    Remote,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Local => "local",
            Tier::Remote => "remote",
        }
    }
}

/// Where the cache lives and how big it may grow.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    pub dir: PathBuf,
    pub max_size: u64,
}

/// `--cache-dir`, else `$THINLTO_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/thinlto-dist`, else `~/.cache/thinlto-dist`.
pub fn default_dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    env("THINLTO_CACHE_DIR").map(PathBuf::from).or_else(|| {
        env("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("thinlto-dist"))
    })
}

/// 5 GiB, as ccache's default.
pub const DEFAULT_MAX_SIZE: u64 = 5 << 30;

/// A cached result, ready to be put in place.
pub struct Hit {
    pub tier: Tier,
    pub key: String,
    pub native: Vec<u8>,
    pub dwo: Option<Vec<u8>>,
    /// What the compiler printed when it ran (its warnings).
    pub output: String,
    pub seconds: Option<f64>,
}

/// The counts of one run.
#[derive(Debug, Clone, Default)]
pub struct CacheSummary {
    pub hits_local: u64,
    pub hits_remote: u64,
    pub misses: u64,
    pub stored: u64,
    pub uncacheable: u64,
}

pub struct BackendCache {
    local: LocalStore,
    max_size: u64,
    identity: String,
    cwd: PathBuf,
    /// Digests of extra files, each file hashed once per run.
    digests: DigestCache,
    hits_local: AtomicU64,
    hits_remote: AtomicU64,
    misses: AtomicU64,
    stored: AtomicU64,
    uncacheable: AtomicU64,
    /// The kinds of trouble already reported (each once per run).
    warned: Mutex<HashSet<String>>,
    /// Where this run's trace files go (removed at the end).
    traces: tempfile::TempDir,
    trace_seq: AtomicU64,
}

impl BackendCache {
    /// Opens the cache for jobs compiled by `cc_argv` (the words of `$(CC)`).
    pub fn open(opts: &CacheOptions, cc_argv: &[String]) -> Result<BackendCache> {
        let local = LocalStore::new(&opts.dir);
        std::fs::create_dir_all(local.root())
            .with_context(|| format!("{}: cannot create the cache", local.root().display()))?;
        let traces = tempfile::Builder::new()
            .prefix("traces.")
            .tempdir_in(local.root())
            .with_context(|| format!("{}: cannot create a directory", local.root().display()))?;
        let (identity, _) = identity::compiler_identity(cc_argv)?;
        Ok(BackendCache {
            local,
            max_size: opts.max_size,
            identity,
            cwd: std::env::current_dir().context("the working directory")?,
            digests: DigestCache::default(),
            hits_local: AtomicU64::new(0),
            hits_remote: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            uncacheable: AtomicU64::new(0),
            warned: Mutex::new(HashSet::new()),
            traces,
            trace_seq: AtomicU64::new(0),
        })
    }

    fn warn_once(&self, kind: &str, msg: &str) {
        if self.warned.lock().unwrap().insert(kind.to_string()) {
            eprintln!("thinlto-backend: cache: {msg}");
        }
    }

    /// The job's key: a blake3 hex of everything its output depends on
    /// that is known before it runs (module docs). `record` is the record
    /// `plan::decide` made: its digests are those of the content inputs.
    pub fn key(&self, job: &BackendJob, record: &NativeRecord) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"thinlto-dist backend cache 1\0");
        h.update(self.identity.as_bytes());
        h.update(b"\0");
        if records_cwd(&job.argv) {
            h.update(b"cwd\0");
            h.update(self.cwd.as_os_str().as_encoded_bytes());
            h.update(b"\0");
        }
        h.update(b"argv\0");
        for a in &job.argv {
            h.update(a.as_bytes());
            h.update(b"\0");
        }
        h.update(b"inputs\0");
        for (p, d) in &record.digests {
            h.update(p.as_bytes());
            h.update(b"\0");
            h.update(d.as_bytes());
            h.update(b"\0");
        }
        h.finalize().to_hex().to_string()
    }

    /// The stored result of `job`, if there is one whose extra files all
    /// still have their digests and whose outputs are intact.
    pub fn lookup(&self, job: &BackendJob, record: &NativeRecord) -> Option<Hit> {
        let key = self.key(job, record);
        let hit = self.lookup_local(&key);
        match &hit {
            Some(_) => self.hits_local.fetch_add(1, Ordering::Relaxed),
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        hit
    }

    /// [`lookup`](Self::lookup) without counting or touching anything:
    /// for `--explain`.
    pub fn probe(&self, job: &BackendJob, record: &NativeRecord) -> Option<(Tier, String)> {
        let key = self.key(job, record);
        let m = self.local.manifest(&key);
        m.variants
            .iter()
            .any(|v| self.extras_match(v))
            .then_some((Tier::Local, key))
    }

    fn extras_match(&self, v: &Variant) -> bool {
        v.extras
            .iter()
            .all(|(p, d)| self.digests.digest(p).as_deref() == Some(d.as_str()))
    }

    fn lookup_local(&self, key: &str) -> Option<Hit> {
        let m = self.local.manifest(key);
        for v in m.variants.iter().filter(|v| self.extras_match(v)) {
            let Some(native) = self.local.get_blob(&v.native) else {
                continue;
            };
            let dwo = match &v.dwo {
                Some(r) => match self.local.get_blob(r) {
                    Some(b) => Some(b),
                    None => continue,
                },
                None => None,
            };
            let mut blobs = vec![&v.native];
            blobs.extend(v.dwo.as_ref());
            self.local.touch(key, &blobs);
            return Some(Hit {
                tier: Tier::Local,
                key: key.to_string(),
                native,
                dwo,
                output: v.output.clone(),
                seconds: v.seconds,
            });
        }
        None
    }

    /// A new trace file for one compile (`THINLTO_TRACE`).
    pub fn trace_file(&self) -> PathBuf {
        let n = self.trace_seq.fetch_add(1, Ordering::Relaxed);
        self.traces.path().join(format!("{n}.trace"))
    }

    /// Stores the result of a successful compile of `job`: its native
    /// (and .dwo), what it printed, and the extra files its trace names.
    pub fn store(
        &self,
        job: &BackendJob,
        record: &NativeRecord,
        trace: &Path,
        output: &str,
        seconds: f64,
    ) {
        let text = match std::fs::read_to_string(trace) {
            Ok(t) => t,
            Err(e) => {
                self.uncacheable.fetch_add(1, Ordering::Relaxed);
                self.warn_once(
                    "trace",
                    &format!("{}: {e}; results not stored", trace.display()),
                );
                return;
            }
        };
        let _ = std::fs::remove_file(trace);
        let dwo_path = crate::run::split_dwarf_file(&job.argv, Path::new(&job.native));
        let mut known = job.content_inputs();
        known.push(&job.native);
        let dwo_str = dwo_path.as_ref().map(|p| p.to_string_lossy().into_owned());
        if let Some(d) = &dwo_str {
            known.push(d);
        }
        let extras = match trace::extras(&text, &self.cwd, &job.input.object, &known) {
            Ok(x) => x,
            Err(e) => {
                self.uncacheable.fetch_add(1, Ordering::Relaxed);
                self.warn_once("untraced", &format!("{e}; results not stored"));
                return;
            }
        };
        let mut with_digests = Vec::with_capacity(extras.len());
        for p in extras {
            match self.digests.digest(&p) {
                Some(d) => with_digests.push((p, d)),
                // Gone since: the result cannot be vouched for.
                None => {
                    self.uncacheable.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        let r = (|| -> Result<()> {
            let native = std::fs::read(&job.native)
                .with_context(|| format!("{}: cannot read", job.native))?;
            let native = self.local.put_blob(&native)?;
            let dwo = match &dwo_path {
                Some(p) => Some(self.local.put_blob(
                    &std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()))?,
                )?),
                None => None,
            };
            self.local.add_variant(
                &self.key(job, record),
                Variant {
                    extras: with_digests,
                    native,
                    dwo,
                    output: output.to_string(),
                    seconds: Some(crate::run::round3(seconds)),
                },
            )
        })();
        match r {
            Ok(()) => {
                self.stored.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.warn_once("store", &format!("cannot store a result: {e:#}")),
        }
    }

    /// The run's counts; adds them to the store's counters and prunes it
    /// to its size limit if anything was stored.
    pub fn finish(&self) -> CacheSummary {
        let s = CacheSummary {
            hits_local: self.hits_local.load(Ordering::Relaxed),
            hits_remote: self.hits_remote.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            stored: self.stored.load(Ordering::Relaxed),
            uncacheable: self.uncacheable.load(Ordering::Relaxed),
        };
        let c = Counters {
            hits_local: s.hits_local,
            hits_remote: s.hits_remote,
            misses: s.misses,
            stored: s.stored,
            uncacheable: s.uncacheable,
        };
        if let Err(e) = self.local.add_counters(&c) {
            self.warn_once("stats", &format!("cannot update the counters: {e:#}"));
        }
        if s.stored > 0 {
            self.local.prune(self.max_size);
        }
        s
    }
}

/// Whether the output may record the working directory: with debug
/// information (`-g…`, except `-g0`), DWARF's comp_dir.
fn records_cwd(argv: &[String]) -> bool {
    argv.iter()
        .any(|a| a.starts_with("-g") && a != "-g0" && !a.starts_with("-gno-"))
}
