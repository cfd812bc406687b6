//! The backend cache (`--cache`): a compile whose result is stored is
//! never run again, in this tree or another, on this machine (the local
//! tier, [`local`]) or, with `--remote-cache`, on any machine sharing a
//! Remote Execution API cache ([`crate::reapi`], the REAPI client; `shared.rs`
//! makes each job two REAPI actions, a manifest and a compile).
//!
//! The key of a job ([`BackendCache::key`]) is complete, or the cache
//! would be worse than none:
//! - the compiler's identity ([`identity`]: build ids of the executable and
//!   its libraries, `--version`, config files, `CCC_*`/`CLANG_*`/`LLVM_*`);
//! - the whole argv, the output path included (relative, as kbuild spells
//!   it, so that another checkout of the tree shares the entries), and the
//!   working directory when the command asks for debug information (which
//!   may record it);
//! - the digest of every compiler plugin the argv loads (`-fpass-plugin=`,
//!   `-fplugin=`, `-Xclang -load -Xclang P`: loaded by the dynamic loader,
//!   which no preload traces); `COMPILER_PATH`, and `PATH` when the
//!   command runs an external assembler (they pick the `as`);
//! - the path and digest of the object, its shard and every module it
//!   imports (the shard also records each imported module's hash);
//! - the files the compile read beyond those ([`trace`]): what inline asm
//!   `.incbin`s, found by tracing the compiler's `open` calls through the
//!   preload shim. They are not known before the first compile, so a key
//!   names a manifest of variants, each valid while its extra files keep
//!   their digests (ccache's manifests). A compile the shim could not
//!   trace (a static compiler, a static `as`), or whose trace is
//!   incomplete, is not stored; nor is one that read a file changed since
//!   the compile started (its digest now is not that of what it read).
//!
//! Every stored output is checked against its digest when read: a
//! corrupt, truncated or foreign entry is a miss. A cache that fails (a
//! full disk, an unreachable server) is reported once and left out of the
//! rest of the run; the build goes on.

pub mod identity;
pub mod local;
#[cfg(feature = "remote")]
mod shared;
#[cfg(not(feature = "remote"))]
#[path = "shared_off.rs"]
mod shared;
pub mod trace;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::digest::DigestCache;
use crate::job::BackendJob;
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

/// Where the cache lives, who may write it, how big it may grow, and the
/// remote tier.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    pub dir: PathBuf,
    /// `--cache-shared`: see [`local::Sharing`].
    pub sharing: local::Sharing,
    pub max_size: u64,
    pub remote: Option<crate::reapi::RemoteOptions>,
}

/// A cached result, ready to be put in place.
pub struct Hit {
    pub tier: Tier,
    pub key: String,
    pub native: Vec<u8>,
    pub dwo: Option<Vec<u8>>,
    /// What the compiler printed when it ran (its warnings).
    pub output: String,
    pub seconds: Option<f64>,
    /// The files the compile that made it read beyond its inputs, each
    /// with its digest as it is now (the job's record keeps them, as a
    /// traced local compile's: `engine/reads.rs`): the local variant's
    /// extras, just checked against the files; a remote variant's, read
    /// again with the digests its compile action was keyed by. None when
    /// that cannot be established (the record then has no reads).
    pub reads: Option<std::collections::BTreeMap<String, String>>,
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

/// What a compile left, to be stored by a storer thread.
struct Finished {
    job: BackendJob,
    key: String,
    trace: String,
    native: Vec<u8>,
    dwo: Option<Vec<u8>>,
    output: String,
    seconds: f64,
    /// When the compile started: what it read must be older.
    started: SystemTime,
}

/// The state the workers and the storer threads share.
struct Inner {
    local: LocalStore,
    remote: Option<shared::RemoteTier>,
    max_size: u64,
    identity: String,
    cwd: PathBuf,
    /// `COMPILER_PATH` and `PATH`, as the compiles get them: they pick the
    /// programs the driver runs (the key has them where they matter).
    compiler_path: Option<std::ffi::OsString>,
    path: Option<std::ffi::OsString>,
    /// Digests of extra files, each file hashed once per run.
    digests: DigestCache,
    hits_local: AtomicU64,
    hits_remote: AtomicU64,
    misses: AtomicU64,
    stored: AtomicU64,
    uncacheable: AtomicU64,
    /// The kinds of trouble already reported (each once per run).
    warned: Mutex<HashSet<String>>,
}

pub struct BackendCache {
    inner: Arc<Inner>,
    /// Where this run's trace files go (removed at the end).
    traces: tempfile::TempDir,
    trace_seq: AtomicU64,
    /// Results are stored off the jobs' path: a job slot is free as soon
    /// as its compile is done, and the uploads overlap the next compiles.
    storers: Mutex<Option<Storers>>,
}

/// The storer threads and the channel that feeds them.
type Storers = (mpsc::Sender<Finished>, Vec<std::thread::JoinHandle<()>>);

/// Storer threads: the local tier is quick; the remote one waits on the
/// network (several round trips per result), so it gets more.
const STORERS: usize = 2;
const REMOTE_STORERS: usize = 8;
/// Lookups in flight at once ([`BackendCache::prefetch`]): a remote lookup
/// is two or three round trips, and the server can serve many at once.
const REMOTE_LOOKUPS: usize = 16;

/// A lookup done ahead of its job, by [`BackendCache::prefetch`].
enum Slot {
    Pending,
    Ready(Option<Hit>),
    Taken,
}

/// The lookups of a run, done in the background in the order the jobs
/// will start, so that a job finds its answer ready (and a remote
/// cache's latency overlaps the compiles instead of adding to each).
pub struct Prefetch {
    slots: Vec<Mutex<Slot>>,
    ready: std::sync::Condvar,
    /// Set when the prefetch threads are done (or stopped by a signal).
    done: Mutex<bool>,
    /// Set when the run stopped (a failure): no more lookups.
    cancelled: std::sync::atomic::AtomicBool,
}

impl Prefetch {
    /// Stops the lookups not started yet (the run is over).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    fn set(&self, i: usize, hit: Option<Hit>) {
        *self.slots[i].lock().unwrap() = Slot::Ready(hit);
        let _g = self.done.lock().unwrap();
        self.ready.notify_all();
    }

    fn finish(&self) {
        *self.done.lock().unwrap() = true;
        self.ready.notify_all();
    }

    /// Job `i`'s lookup: Some(answer) once it is ready, None if the
    /// prefetch ended without it (the caller looks up itself).
    pub fn take(&self, i: usize) -> Option<Option<Hit>> {
        let mut done = self.done.lock().unwrap();
        loop {
            {
                let mut slot = self.slots[i].lock().unwrap();
                match std::mem::replace(&mut *slot, Slot::Taken) {
                    Slot::Ready(h) => return Some(h),
                    Slot::Taken => return None,
                    Slot::Pending => *slot = Slot::Pending,
                }
            }
            if *done {
                return None;
            }
            done = self.ready.wait(done).unwrap();
        }
    }
}

impl BackendCache {
    /// Opens the cache for jobs compiled by `cc_argv` (the words of `$(CC)`).
    /// A remote cache that cannot be reached is reported, and left out.
    pub fn open(opts: &CacheOptions, cc_argv: &[String]) -> Result<BackendCache> {
        // Absolute: the compiles write their traces there, and a wrapper
        // may change directory.
        let dir = std::path::absolute(&opts.dir)
            .with_context(|| format!("{}: no such directory", opts.dir.display()))?;
        let local = LocalStore::new(&dir).with_sharing(opts.sharing);
        local
            .create_root()
            .with_context(|| format!("{}: cannot create the cache", local.root().display()))?;
        if opts.sharing == local::Sharing::Private {
            warn_if_not_private(&[&dir, local.root()]);
        }
        // Traces live only while their job does: in memory (a tmpfs) when
        // there is one of ours, so that they cost no disk writes.
        let traces = trace_dir(local.root())?;
        let (identity, _) = identity::compiler_identity(cc_argv)?;
        let remote = match &opts.remote {
            Some(r) => match shared::RemoteTier::connect(r) {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln_one_write!(
                        "thinlto-backend: cache: {e:#}; going on with the local cache only"
                    );
                    None
                }
            },
            None => None,
        };
        let inner = Arc::new(Inner {
            local,
            remote,
            max_size: opts.max_size,
            identity,
            cwd: std::env::current_dir().context("the working directory")?,
            compiler_path: std::env::var_os("COMPILER_PATH"),
            path: std::env::var_os("PATH"),
            digests: DigestCache::default(),
            hits_local: AtomicU64::new(0),
            hits_remote: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            uncacheable: AtomicU64::new(0),
            warned: Mutex::new(HashSet::new()),
        });
        let (tx, rx) = mpsc::channel::<Finished>();
        let rx = Arc::new(Mutex::new(rx));
        let storers = if inner.remote.is_some() {
            REMOTE_STORERS
        } else {
            STORERS
        };
        let threads = (0..storers)
            .map(|i| {
                let (inner, rx) = (inner.clone(), rx.clone());
                std::thread::Builder::new()
                    .name(format!("cache-store-{i}"))
                    .spawn(move || loop {
                        let next = rx.lock().unwrap().recv();
                        match next {
                            // Interrupted: what is left is dropped, not
                            // stored (the run must end promptly).
                            Ok(_) if crate::signals::pending_signal().is_some() => {}
                            Ok(f) => inner.store(f),
                            Err(_) => return,
                        }
                    })
                    .context("cannot start a cache thread")
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BackendCache {
            inner,
            traces,
            trace_seq: AtomicU64::new(0),
            storers: Mutex::new(Some((tx, threads))),
        })
    }

    /// The job's key (see [`Inner::key`]).
    pub fn key(&self, job: &BackendJob, record: &NativeRecord) -> String {
        self.inner.key(job, record)
    }

    /// The stored result of `job`, if there is one whose extra files all
    /// still have their digests and whose outputs are intact: the local
    /// tier first, then the remote one (whose hit is copied to the local
    /// tier).
    pub fn lookup(&self, job: &BackendJob, record: &NativeRecord) -> Option<Hit> {
        let i = &self.inner;
        let key = i.key(job, record);
        if let Some(hit) = i.lookup_local(&key) {
            i.hits_local.fetch_add(1, Ordering::Relaxed);
            return Some(hit);
        }
        if let Some(hit) = i.lookup_remote(job, &key) {
            i.hits_remote.fetch_add(1, Ordering::Relaxed);
            return Some(hit);
        }
        i.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Starts looking up `jobs` (in `order`, the order they will start) on
    /// background threads of `scope`; each job then takes its answer with
    /// [`Prefetch::take`].
    pub fn prefetch<'s, 'e>(
        &'s self,
        scope: &'s std::thread::Scope<'s, 'e>,
        jobs: &'s [(BackendJob, String, NativeRecord)],
        order: &[usize],
    ) -> Arc<Prefetch> {
        let pf = Arc::new(Prefetch {
            slots: (0..jobs.len()).map(|_| Mutex::new(Slot::Pending)).collect(),
            ready: std::sync::Condvar::new(),
            done: Mutex::new(false),
            cancelled: std::sync::atomic::AtomicBool::new(false),
        });
        let order = Arc::new(order.to_vec());
        let next = Arc::new(AtomicU64::new(0));
        let threads = if self.inner.remote.is_some() {
            REMOTE_LOOKUPS
        } else {
            2
        };
        let spawned = threads.min(order.len()).max(1);
        let left = Arc::new(AtomicU64::new(spawned as u64));
        for _ in 0..spawned {
            let (pf, order, next, left) = (pf.clone(), order.clone(), next.clone(), left.clone());
            scope.spawn(move || {
                loop {
                    if crate::signals::pending_signal().is_some()
                        || pf.cancelled.load(Ordering::Relaxed)
                    {
                        break;
                    }
                    let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(&i) = order.get(k) else { break };
                    let (job, _, record) = &jobs[i];
                    pf.set(i, self.lookup(job, record));
                }
                if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                    pf.finish();
                }
            });
        }
        pf
    }

    /// Which tier has `job`, without counting or copying: for `--explain`.
    pub fn probe(&self, job: &BackendJob, record: &NativeRecord) -> Option<(Tier, String)> {
        let i = &self.inner;
        let key = i.key(job, record);
        let m = i.local.manifest(&key);
        if m.variants.iter().any(|v| i.extras_match(v)) {
            return Some((Tier::Local, key));
        }
        let r = i.remote.as_ref().filter(|r| !r.is_off())?;
        match r.lookup(job, &i.salt(job)) {
            Ok(Some(hit)) => Some((Tier::Remote, hit.key)),
            Ok(None) => None,
            Err(e) => {
                r.fail(&e);
                None
            }
        }
    }

    /// The files beyond its inputs that `job`'s compile is known to read
    /// (the newest variant's extras inside the tree, as its trace found
    /// them): what remote execution puts into the job's input root. None
    /// when no compile of this job was ever stored.
    pub fn known_extras(&self, job: &BackendJob, record: &NativeRecord) -> Option<Vec<String>> {
        self.known_reads(job, record)
            .map(|r| r.into_iter().filter(|p| !p.starts_with('/')).collect())
    }

    /// Every file beyond its inputs that `job`'s compile is known to read
    /// (the newest variant's extras: inside the tree relative, outside it
    /// absolute). None when no compile of this job was ever stored.
    pub fn known_reads(&self, job: &BackendJob, record: &NativeRecord) -> Option<Vec<String>> {
        let i = &self.inner;
        let m = i.local.manifest(&i.key(job, record));
        m.variants
            .first()
            .map(|v| v.extras.iter().map(|(p, _)| p.clone()).collect())
    }

    /// Stores the result of a remote compile of `job` in the local tier:
    /// the worker ran it hermetically on exactly its inputs and `extras`
    /// (so those are its extras, digested now), with the compiler of the
    /// same identity.
    pub fn store_remote(
        &self,
        job: &BackendJob,
        record: &NativeRecord,
        extras: &[String],
        native: &[u8],
        dwo: Option<&[u8]>,
        output: &str,
    ) {
        let i = &self.inner;
        let mut with_digests = Vec::with_capacity(extras.len());
        for p in extras {
            match identity::content_digest(&i.cwd.join(p)) {
                Ok(d) => with_digests.push((p.clone(), d)),
                Err(_) => return,
            }
        }
        match i.add_local(&i.key(job, record), with_digests, native, dwo, output, None) {
            Ok(()) => {
                i.stored.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => i.warn_once("store", &format!("cannot store a result: {e:#}")),
        }
    }

    /// A new trace file for one compile (`THINLTO_TRACE`).
    pub fn trace_file(&self) -> PathBuf {
        let n = self.trace_seq.fetch_add(1, Ordering::Relaxed);
        self.traces.path().join(format!("{n}.trace"))
    }

    /// Hands the result of a successful compile of `job`, started at
    /// `started`, to the storers: its native (and .dwo) and what it
    /// printed as they are now, and the files its trace names.
    pub fn store(
        &self,
        job: &BackendJob,
        record: &NativeRecord,
        trace: &Path,
        output: &str,
        seconds: f64,
        started: SystemTime,
    ) {
        let i = &self.inner;
        if crate::warm::shim::path().is_err() {
            // No shim, no trace: nothing can vouch for the result (and
            // shim::path said so, once).
            i.uncacheable.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let read = || -> Result<Finished> {
            let text = std::fs::read_to_string(trace)
                .with_context(|| format!("{}: cannot read the trace", trace.display()))?;
            let _ = std::fs::remove_file(trace);
            let native = std::fs::read(&job.native)
                .with_context(|| format!("{}: cannot read", job.native))?;
            let dwo = match crate::job::split_dwarf_file(&job.argv, Path::new(&job.native)) {
                Some(p) => Some(
                    std::fs::read(&p).with_context(|| format!("{}: cannot read", p.display()))?,
                ),
                None => None,
            };
            Ok(Finished {
                job: job.clone(),
                key: i.key(job, record),
                trace: text,
                native,
                dwo,
                output: output.to_string(),
                seconds,
                started,
            })
        };
        match read() {
            Ok(f) => {
                let st = self.storers.lock().unwrap();
                if let Some((tx, _)) = st.as_ref() {
                    let _ = tx.send(f);
                }
            }
            Err(e) => {
                i.uncacheable.fetch_add(1, Ordering::Relaxed);
                i.warn_once("read", &format!("{e:#}; results not stored"));
            }
        }
    }

    /// Waits for the storers, then returns the run's counts; adds them to
    /// the store's counters and prunes it to its size limit if anything
    /// was stored.
    pub fn finish(&self) -> CacheSummary {
        if let Some((tx, threads)) = self.storers.lock().unwrap().take() {
            drop(tx);
            for t in threads {
                let _ = t.join();
            }
        }
        let i = &self.inner;
        let s = CacheSummary {
            hits_local: i.hits_local.load(Ordering::Relaxed),
            hits_remote: i.hits_remote.load(Ordering::Relaxed),
            misses: i.misses.load(Ordering::Relaxed),
            stored: i.stored.load(Ordering::Relaxed),
            uncacheable: i.uncacheable.load(Ordering::Relaxed),
        };
        let c = Counters {
            hits_local: s.hits_local,
            hits_remote: s.hits_remote,
            misses: s.misses,
            stored: s.stored,
            uncacheable: s.uncacheable,
        };
        if let Err(e) = i.local.add_counters(&c) {
            i.warn_once("stats", &format!("cannot update the counters: {e:#}"));
        }
        if s.stored > 0 {
            i.local.prune(i.max_size);
        }
        s
    }
}

impl Inner {
    fn warn_once(&self, kind: &str, msg: &str) {
        if self.warned.lock().unwrap().insert(kind.to_string()) {
            eprintln_one_write!("thinlto-backend: cache: {msg}");
        }
    }

    /// What keys jobs apart besides their argv and inputs: the compiler,
    /// its plugins, the search paths for the programs it runs, and the
    /// working directory where the output may record it.
    fn salt(&self, job: &BackendJob) -> Vec<u8> {
        let mut s = format!("compiler {}\0", self.identity).into_bytes();
        let mut add = |what: &str, value: &[u8]| {
            s.extend_from_slice(what.as_bytes());
            s.push(b' ');
            s.extend_from_slice(value);
            s.push(0);
        };
        if records_cwd(&job.argv) {
            add("cwd", self.cwd.as_os_str().as_encoded_bytes());
        }
        for p in plugins(&job.argv) {
            // A plugin that cannot be read is refused at store time.
            let d = self.digests.digest(p).unwrap_or_default();
            add("plugin", format!("{p} {d}").as_bytes());
        }
        if let Some(c) = &self.compiler_path {
            add("COMPILER_PATH", c.as_encoded_bytes());
        }
        if external_assembler(&job.argv) {
            let path = self.path.as_deref().unwrap_or_default();
            add("PATH", path.as_encoded_bytes());
        }
        s
    }

    /// The job's key: a blake3 hex of everything its output depends on
    /// that is known before it runs (module docs). `record` is the record
    /// `plan::decide` made: its digests are those of the content inputs
    /// (for a DTLTO job, named by role, as its `key_argv` names them).
    fn key(&self, job: &BackendJob, record: &NativeRecord) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"thinlto-dist backend cache 1\0");
        h.update(&self.salt(job));
        h.update(b"argv\0");
        for a in job.key_argv.as_ref().unwrap_or(&job.argv) {
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

    fn extras_match(&self, v: &Variant) -> bool {
        v.extras
            .iter()
            .all(|(p, d)| self.digests.digest(p).as_deref() == Some(d.as_str()))
    }

    fn lookup_local(&self, key: &str) -> Option<Hit> {
        let m = self.local.manifest(key);
        for v in m.variants.iter().filter(|v| self.extras_match(v)) {
            // Nothing empty is a hit.
            let Some(native) = self.local.get_blob(&v.native).filter(|b| !b.is_empty()) else {
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
                // extras_match just found each with this digest.
                reads: Some(v.extras.iter().cloned().collect()),
            });
        }
        None
    }

    fn lookup_remote(&self, job: &BackendJob, key: &str) -> Option<Hit> {
        let r = self.remote.as_ref().filter(|r| !r.is_off())?;
        let hit = match r.lookup(job, &self.salt(job)) {
            Ok(Some(h)) => h,
            Ok(None) => return None,
            Err(e) => {
                r.fail(&e);
                return None;
            }
        };
        // A copy in the local tier: the next build of this machine finds
        // it there.
        let extras: Option<Vec<(String, String)>> = hit
            .extras
            .iter()
            .map(|p| Some((p.clone(), self.digests.digest(p)?)))
            .collect();
        if let Some(extras) = extras {
            if let Err(e) = self.add_local(
                key,
                extras,
                &hit.native,
                hit.dwo.as_deref(),
                &hit.output,
                None,
            ) {
                self.warn_once("store", &format!("cannot store a result: {e:#}"));
            }
        }
        Some(Hit {
            tier: Tier::Remote,
            key: hit.key,
            native: hit.native,
            dwo: hit.dwo,
            output: hit.output,
            seconds: None,
            reads: hit.reads,
        })
    }

    fn add_local(
        &self,
        key: &str,
        extras: Vec<(String, String)>,
        native: &[u8],
        dwo: Option<&[u8]>,
        output: &str,
        seconds: Option<f64>,
    ) -> Result<()> {
        let native = self.local.put_blob(native)?;
        let dwo = match dwo {
            Some(b) => Some(self.local.put_blob(b)?),
            None => None,
        };
        self.local.add_variant(
            key,
            Variant {
                extras,
                native,
                dwo,
                output: output.to_string(),
                seconds,
            },
        )
    }

    /// Stores one compile's result in both tiers (a storer thread).
    fn store(&self, f: Finished) {
        let job = &f.job;
        let mut known = job.content_inputs();
        known.push(&job.native);
        let dwo_str = crate::job::split_dwarf_file(&job.argv, Path::new(&job.native))
            .map(|p| p.to_string_lossy().into_owned());
        if let Some(d) = &dwo_str {
            known.push(d);
        }
        let refuse = |kind: &str, why: String| {
            self.uncacheable.fetch_add(1, Ordering::Relaxed);
            self.warn_once(kind, &format!("{why}; results not stored"));
        };
        if let Some(p) = plugins(&job.argv).find(|p| self.digests.digest(p).is_none()) {
            return refuse(
                "plugin",
                format!("{}: the compiler plugin {p} cannot be read", job.native),
            );
        }
        let extras = match trace::extras(&f.trace, &self.cwd, &job.input.object, &known) {
            Ok(x) => x,
            Err(e) => return refuse("untraced", e.to_string()),
        };
        // What would be refused when read back is not stored (either tier).
        let over = extras.len() > crate::limits::MAX_EXTRAS
            || f.output.len() > crate::limits::MAX_OUTPUT_TEXT
            || std::iter::once(&f.native)
                .chain(f.dwo.as_ref())
                .any(|b| b.len() as u64 > crate::limits::MAX_BLOB_BYTES);
        if over {
            return refuse(
                "bounds",
                format!(
                    "{}: more extra files, output or object bytes than the cache keeps",
                    job.native
                ),
            );
        }
        // Digested now, not from this run's digests (taken maybe before
        // the compile), and only if unchanged since the compile started:
        // then the digest now is that of what the compile read.
        let mut with_digests = Vec::with_capacity(extras.len());
        for p in &extras {
            if changed_since(&self.cwd.join(p), f.started) {
                return refuse(
                    "changed",
                    format!("{p} changed while {} compiled", job.native),
                );
            }
            match identity::content_digest(Path::new(p)) {
                Ok(d) => with_digests.push((p.clone(), d)),
                // Gone since: the result cannot be vouched for.
                Err(e) => {
                    return refuse(
                        "gone",
                        format!("{e:#} (read by the compile of {})", job.native),
                    )
                }
            }
        }
        let seconds = Some(crate::record::round3(f.seconds));
        match self.add_local(
            &f.key,
            with_digests,
            &f.native,
            f.dwo.as_deref(),
            &f.output,
            seconds,
        ) {
            Ok(()) => {
                self.stored.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.warn_once("store", &format!("cannot store a result: {e:#}")),
        }
        if let Some(r) = self.remote.as_ref().filter(|r| !r.is_off()) {
            if let Err(e) = r.store(
                job,
                &self.salt(job),
                &extras,
                &f.native,
                f.dwo.as_deref(),
                &f.output,
            ) {
                r.fail(&e);
            }
        }
    }
}

/// One line when a cache not declared shared could be written by someone
/// else (owned by another user, or group/other-writable): whoever can
/// write it chooses the objects this build links.
fn warn_if_not_private(dirs: &[&Path]) {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let why = dirs.iter().find_map(|d| {
        let m = std::fs::metadata(d).ok()?;
        if m.uid() != euid {
            Some(format!("{} is owned by uid {}", d.display(), m.uid()))
        } else if m.mode() & 0o022 != 0 {
            Some(format!(
                "{} is writable by others (mode {:o})",
                d.display(),
                m.mode() & 0o7777
            ))
        } else {
            None
        }
    });
    if let Some(why) = why {
        eprintln_one_write!(
            "thinlto-backend: cache: warning: {why}: whoever can write the cache chooses what \
             this build links (declare a shared cache with --cache-shared; see docs/cache.md, \"Who is trusted\")"
        );
    }
}

/// A new directory for a run's traces: under $XDG_RUNTIME_DIR (a tmpfs of
/// the user's own), else /dev/shm, else beside the store.
pub(crate) fn trace_dir(store: &Path) -> Result<tempfile::TempDir> {
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from);
    let candidates = runtime
        .into_iter()
        .chain([PathBuf::from("/dev/shm"), store.to_path_buf()]);
    let mut last = None;
    for dir in candidates {
        match tempfile::Builder::new()
            .prefix("thinlto-traces.")
            .tempdir_in(&dir)
        {
            Ok(t) => return Ok(t),
            Err(e) => last = Some((dir, e)),
        }
    }
    let (dir, e) = last.expect("the store is always a candidate");
    Err(e).with_context(|| format!("{}: cannot create a directory", dir.display()))
}

/// Whether the output may record the working directory: with debug
/// information (`-g…`, except `-g0`; `--debug…`, clang's spelling of
/// `-g`), DWARF's comp_dir.
pub(crate) fn records_cwd(argv: &[String]) -> bool {
    argv.iter().any(|a| {
        (a.starts_with("-g") && a != "-g0" && !a.starts_with("-gno-")) || a.starts_with("--debug")
    })
}

/// The compiler plugins `argv` loads: `-fpass-plugin=P`, `-fplugin=P`,
/// `-Xclang -load -Xclang P`.
pub(crate) fn plugins(argv: &[String]) -> impl Iterator<Item = &str> {
    argv.iter().enumerate().filter_map(|(i, a)| {
        a.strip_prefix("-fpass-plugin=")
            .or_else(|| a.strip_prefix("-fplugin="))
            .or_else(|| match &argv[i..] {
                [x1, load, x2, p, ..] if x1 == "-Xclang" && load == "-load" && x2 == "-Xclang" => {
                    Some(p.as_str())
                }
                _ => None,
            })
    })
}

/// Whether the driver runs an external assembler (the last of
/// `-fno-integrated-as`/`-fintegrated-as` and their `-no-…` spellings).
pub(crate) fn external_assembler(argv: &[String]) -> bool {
    argv.iter()
        .rev()
        .find_map(|a| match a.as_str() {
            "-fno-integrated-as" | "-no-integrated-as" => Some(true),
            "-fintegrated-as" | "-integrated-as" => Some(false),
            _ => None,
        })
        .unwrap_or(false)
}

/// A change of a file's status is stamped from the kernel's coarse clock,
/// which may lag the real time by a tick (10 ms at the slowest common
/// HZ, 100): a change stamped this much before a compile started may have
/// come after. (Not more: a build that edits a file and runs the backend
/// at once would store nothing.)
const STAMP_SLACK: Duration = Duration::from_millis(10);

/// Whether `path` (or a symlink on its way) changed since `started`, or
/// cannot be told: by the inode change time, which no tool sets back.
pub(crate) fn changed_since(path: &Path, started: SystemTime) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(since) = started
        .checked_sub(STAMP_SLACK)
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
    else {
        return true;
    };
    let changed = |m: std::fs::Metadata| {
        let ctime = Duration::new(m.ctime().max(0) as u64, m.ctime_nsec().max(0) as u32);
        ctime >= since
    };
    let Ok(m) = std::fs::metadata(path) else {
        return true;
    };
    if changed(m) {
        return true;
    }
    // A retargeted link changes the link, not the file it points to now.
    path.ancestors().any(|a| {
        std::fs::symlink_metadata(a).is_ok_and(|m| m.file_type().is_symlink() && changed(m))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn debug_plugins_and_the_assembler_are_read_from_the_argv() {
        assert!(records_cwd(&words("clang -c --debug a.o")));
        assert!(records_cwd(&words("clang -c -g2 a.o")));
        assert!(!records_cwd(&words("clang -c -g0 a.o")));
        let argv = words(
            "clang -fpass-plugin=p1.so -fplugin=/x/p2.so -Xclang -load -Xclang p3.so -Xclang -load",
        );
        assert_eq!(
            plugins(&argv).collect::<Vec<_>>(),
            ["p1.so", "/x/p2.so", "p3.so"]
        );
        assert!(external_assembler(&words("clang -fno-integrated-as -c")));
        assert!(!external_assembler(&words(
            "clang -no-integrated-as -fintegrated-as"
        )));
        assert!(!external_assembler(&words("clang -c")));
    }

    #[test]
    fn a_file_changed_after_the_start_is_changed() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("data");
        std::fs::write(&f, "old").unwrap();
        let long_ago = SystemTime::now() - Duration::from_secs(3600);
        assert!(changed_since(&f, long_ago));
        let link = d.path().join("link");
        std::os::unix::fs::symlink("data", &link).unwrap();
        let future = SystemTime::now() + Duration::from_secs(3600);
        assert!(!changed_since(&link, future));
        assert!(changed_since(&d.path().join("missing"), future));
    }
}
