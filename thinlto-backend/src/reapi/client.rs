//! The REAPI connection, the CAS and the action cache; as the backend
//! cache's remote tier, the server is used as a shared cache only.
//!
//! A backend compile is described to the server as a REAPI *action*: a
//! `Command` (argv, environment, output paths), an input root (a Merkle tree
//! of `Directory` protos whose files are named by SHA-256 digest) and a salt.
//! The action's digest is the cache key. Two protocols of the spec are used:
//!
//! - lookup: `ActionCache.GetActionResult`, then the output blobs from the
//!   CAS (`BatchReadBlobs` for small blobs, `ByteStream.Read` for those over
//!   the server's batch limit);
//! - store: `FindMissingBlobs`, the missing blobs (`BatchUpdateBlobs` or
//!   `ByteStream.Write`), then `ActionCache.UpdateActionResult`.
//!
//! Nothing is executed remotely and the input files' contents are never
//! uploaded: their digests are part of the key, which is all a cache needs.
//! A server that also executes actions would find the inputs missing, which
//! is fine as we never ask it to.
//!
//! The cache must never hand back a wrong object, so every blob a lookup
//! fetches is checked against its digest (SHA-256 and size); anything
//! missing, truncated or mismatching makes the lookup a miss, as does a
//! failed action (exit code ≠ 0). Transport and server errors are errors,
//! for the caller to log and carry on without the remote tier.
//!
//! The callers are plain worker threads, not async code: [`RemoteCache`]
//! owns a small tokio runtime and every method blocks on it, so one
//! `RemoteCache` can be shared by all workers (it is `Send + Sync`; tonic's
//! channel multiplexes their calls over one HTTP/2 connection). It must not
//! be called from inside another tokio runtime.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::calls::Call;
use super::RemoteOptions;
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream;
use prost::Message;
use re::action_cache_client::ActionCacheClient;
use re::capabilities_client::CapabilitiesClient;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use sha2::{Digest as _, Sha256};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use crate::limits::{MAX_BLOB_BYTES, MAX_EXTRA_BYTES, MAX_REMOTE_OUTPUTS};

/// How long connecting (TCP, TLS, HTTP/2) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one gRPC call may take, streamed bodies included.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// gRPC's default maximum message size, which tonic also applies: the batch
/// limit when the server advertises none.
const GRPC_MAX_MESSAGE: usize = 4 << 20;
/// Room left in a batch for the request's own fields (instance name,
/// digests), as servers may apply their limit to the whole message: this
/// much, or a sixteenth of a small limit.
const BATCH_OVERHEAD: usize = 16 << 10;
/// Per-blob framing in a batch (digest, tags), counted with its size.
const PER_BLOB_OVERHEAD: usize = 128;
/// The size of one `ByteStream.Write` chunk.
const WRITE_CHUNK: usize = 1 << 20;

/// SHA-256 digest as REAPI spells it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    /// Lowercase hex.
    pub hash: String,
    pub size_bytes: i64,
}

impl Digest {
    pub fn of_bytes(b: &[u8]) -> Digest {
        Digest {
            hash: hex(&Sha256::digest(b)),
            size_bytes: b.len() as i64,
        }
    }

    /// The digest of a regular file of at most [`MAX_EXTRA_BYTES`], read
    /// as the cache reads every file ([`crate::digest::digest_file`]: never
    /// blocking, never a device or a FIFO).
    pub fn of_file(p: &Path) -> std::io::Result<Digest> {
        let mut h = Sha256::new();
        let size = crate::digest::digest_file(p, MAX_EXTRA_BYTES, |b| h.update(b))?;
        Ok(Digest {
            hash: hex(&h.finalize()),
            size_bytes: size as i64,
        })
    }

    /// The digest of a regular file (as [`Digest::of_file`]) and the
    /// blake3 hex of the same bytes, from one read: the two cannot
    /// describe different contents.
    pub fn of_file_with_blake3(p: &Path) -> std::io::Result<(Digest, String)> {
        let mut sha = Sha256::new();
        let mut b3 = blake3::Hasher::new();
        let size = crate::digest::digest_file(p, MAX_EXTRA_BYTES, |b| {
            sha.update(b);
            b3.update(b);
        })?;
        let d = Digest {
            hash: hex(&sha.finalize()),
            size_bytes: size as i64,
        };
        Ok((d, b3.finalize().to_hex().to_string()))
    }

    /// What a record keeps of files whose digests went into an action
    /// (`files`: path, relative to the working directory or absolute, and
    /// the digest the action named): each file's blake3 hex, the record's
    /// digest ([`crate::record::NativeRecord::reads`]), taken from a read
    /// whose SHA-256 must still be the action's ([`Digest::of_file_with_blake3`]).
    /// None when a file is gone, unreadable or changed since: then
    /// nothing can vouch for what the action read.
    pub fn blake3_of_files_as_sent(files: &[(String, Digest)]) -> Option<BTreeMap<String, String>> {
        blake3_as_sent(files, |p| Digest::of_file_with_blake3(Path::new(p)).ok())
    }

    /// Whether `data` is the blob this digest names.
    pub fn matches(&self, data: &[u8]) -> bool {
        data.len() as i64 == self.size_bytes && *self == Digest::of_bytes(data)
    }

    pub(crate) fn to_proto(&self) -> re::Digest {
        re::Digest {
            hash: self.hash.clone(),
            size_bytes: self.size_bytes,
        }
    }

    /// A digest from the server, if it is a well-formed SHA-256 one (a
    /// malformed one must not end up in a resource name) of a blob no
    /// larger than [`MAX_BLOB_BYTES`] (the size is the server's word, and
    /// sizes what the client reads).
    pub(crate) fn from_proto(d: &re::Digest) -> Option<Digest> {
        let ok = crate::limits::is_hex(&d.hash, 64)
            && (0..=MAX_BLOB_BYTES as i64).contains(&d.size_bytes);
        ok.then(|| Digest {
            hash: d.hash.clone(),
            size_bytes: d.size_bytes,
        })
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.hash, self.size_bytes)
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// One input file of an action's input root.
#[derive(Debug, Clone)]
pub struct InputFile {
    /// Relative, '/'-separated, no '..'.
    pub path: String,
    pub digest: Digest,
    pub executable: bool,
}

/// An action as REAPI sees it.
#[derive(Debug, Clone, Default)]
pub struct ActionSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Relative to the working directory (the input root).
    pub output_paths: Vec<String>,
    pub inputs: Vec<InputFile>,
    /// `Action.salt`: keys apart actions that are otherwise equal (the
    /// compiler's identity, the cache's format version).
    pub salt: Vec<u8>,
}

/// An action serialized once: its digest (the cache key) and the protos a
/// store uploads beside the result.
#[derive(Debug, Clone)]
pub struct ActionKey {
    /// The digest of the encoded `Action`: the action-cache key.
    pub action: Digest,
    pub(crate) action_bytes: Vec<u8>,
    command: Digest,
    pub(crate) command_bytes: Vec<u8>,
    input_root: Digest,
    /// Every `Directory` of the input root, the root included.
    pub(crate) directories: BTreeMap<Digest, Vec<u8>>,
    /// The Command's output paths, to refuse storing anything else.
    output_paths: Vec<String>,
}

impl ActionKey {
    pub fn command(&self) -> &Digest {
        &self.command
    }
    pub fn input_root(&self) -> &Digest {
        &self.input_root
    }
}

impl ActionSpec {
    /// Builds the REAPI Command (arguments, sorted environment_variables,
    /// output_paths (v2.1+) and the deprecated output_files for older
    /// servers), the input root as canonical Directory protos (nested
    /// directories, entries sorted by name, as the REAPI spec requires for a
    /// canonical Merkle tree) and the Action (command_digest,
    /// input_root_digest, salt, do_not_cache=false).
    ///
    /// Deterministic: the same spec gives the same bytes and digests, run
    /// after run (prost encodes fields in tag order, and every list whose
    /// order means nothing is sorted here: inputs, environment, outputs).
    /// Errors on an absolute path, '..', or two inputs at one path.
    pub fn key(&self) -> Result<ActionKey> {
        if self.argv.is_empty() {
            bail!("an action needs a command line (argv is empty)");
        }
        let mut env = self.env.clone();
        env.sort();
        if let Some(w) = env.windows(2).find(|w| w[0].0 == w[1].0) {
            bail!("environment variable {} is set twice", w[0].0);
        }
        let mut outputs = self.output_paths.clone();
        for o in &outputs {
            check_path(o).with_context(|| format!("output path {o:?}"))?;
        }
        outputs.sort();
        if let Some(w) = outputs.windows(2).find(|w| w[0] == w[1]) {
            bail!("output path {:?} is listed twice", w[0]);
        }
        // output_files is deprecated since v2.1 but what older servers read;
        // newer ones read output_paths and ignore it.
        #[allow(deprecated)]
        let command = re::Command {
            arguments: self.argv.clone(),
            environment_variables: env
                .into_iter()
                .map(|(name, value)| re::command::EnvironmentVariable { name, value })
                .collect(),
            output_files: outputs.clone(),
            output_paths: outputs.clone(),
            ..Default::default()
        };
        let command_bytes = command.encode_to_vec();
        let command_digest = Digest::of_bytes(&command_bytes);

        let mut root = DirTree::default();
        for f in &self.inputs {
            root.insert(f)
                .with_context(|| format!("input {:?}", f.path))?;
        }
        let mut directories = BTreeMap::new();
        let input_root = root.encode(&mut directories);

        let action = re::Action {
            command_digest: Some(command_digest.to_proto()),
            input_root_digest: Some(input_root.to_proto()),
            salt: self.salt.clone(),
            do_not_cache: false,
            ..Default::default()
        };
        let action_bytes = action.encode_to_vec();
        Ok(ActionKey {
            action: Digest::of_bytes(&action_bytes),
            action_bytes,
            command: command_digest,
            command_bytes,
            input_root,
            directories,
            output_paths: outputs,
        })
    }
}

/// A path is relative, '/'-separated, with plain names only (no '', '.'
/// or '..' component): the only spelling a canonical tree has.
fn check_path(p: &str) -> Result<()> {
    if p.starts_with('/') {
        bail!("is absolute (paths are relative to the input root)");
    }
    for c in p.split('/') {
        match c {
            "" => bail!("has an empty component"),
            "." => bail!("has a '.' component"),
            ".." => bail!("has a '..' component"),
            _ => {}
        }
    }
    Ok(())
}

/// The input root being built: names are kept sorted by the maps, which is
/// the canonical order (REAPI sorts by name, byte-wise, as `String`'s `Ord`
/// does).
#[derive(Default)]
struct DirTree {
    files: BTreeMap<String, (Digest, bool)>,
    dirs: BTreeMap<String, DirTree>,
}

impl DirTree {
    fn insert(&mut self, f: &InputFile) -> Result<()> {
        check_path(&f.path)?;
        let (parents, name) = match f.path.rsplit_once('/') {
            Some((d, n)) => (Some(d), n),
            None => (None, f.path.as_str()),
        };
        let mut dir = self;
        for c in parents.into_iter().flat_map(|d| d.split('/')) {
            if dir.files.contains_key(c) {
                bail!("{c:?} is both a file and a directory");
            }
            dir = dir.dirs.entry(c.to_string()).or_default();
        }
        if dir.dirs.contains_key(name) {
            bail!("is both a file and a directory");
        }
        if dir.files.contains_key(name) {
            bail!("is listed twice");
        }
        dir.files
            .insert(name.to_string(), (f.digest.clone(), f.executable));
        Ok(())
    }

    /// Encodes this directory and, first, its subdirectories into `out`;
    /// returns this directory's digest.
    fn encode(&self, out: &mut BTreeMap<Digest, Vec<u8>>) -> Digest {
        let directories = self
            .dirs
            .iter()
            .map(|(name, d)| re::DirectoryNode {
                name: name.clone(),
                digest: Some(d.encode(out).to_proto()),
            })
            .collect();
        let files = self
            .files
            .iter()
            .map(|(name, (digest, executable))| re::FileNode {
                name: name.clone(),
                digest: Some(digest.to_proto()),
                is_executable: *executable,
                ..Default::default()
            })
            .collect();
        let bytes = re::Directory {
            files,
            directories,
            ..Default::default()
        }
        .encode_to_vec();
        let digest = Digest::of_bytes(&bytes);
        out.insert(digest.clone(), bytes);
        digest
    }
}

/// A cached, successful action's result, every blob verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteHit {
    /// Output path -> content, as the ActionResult lists them (the caller
    /// checks it has the outputs it needs).
    pub outputs: BTreeMap<String, Vec<u8>>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// Adds the user's metadata (`--remote-header` and the others of
/// [`crate::remote_headers`]) and a deadline to every call.
#[derive(Clone)]
pub(crate) struct Headers(std::sync::Arc<Vec<(AsciiMetadataKey, AsciiMetadataValue)>>);

impl tonic::service::Interceptor for Headers {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        for (k, v) in self.0.iter() {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        // A call that set its own deadline keeps it (the Bots service's
        // long polls of reapi::bots).
        if !req.metadata().contains_key("grpc-timeout") {
            req.set_timeout(CALL_TIMEOUT);
        }
        Ok(req)
    }
}

pub(crate) type Svc = InterceptedService<Channel, Headers>;

/// A connected REAPI cache (see the module documentation).
pub struct RemoteCache {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) url: String,
    pub(crate) instance: String,
    cas: ContentAddressableStorageClient<Svc>,
    ac: ActionCacheClient<Svc>,
    bs: bytestream::byte_stream_client::ByteStreamClient<Svc>,
    /// The most blob bytes one batch call may carry.
    batch_limit: usize,
    /// Whether the server lets clients write the action cache.
    update_enabled: bool,
    /// Makes ByteStream upload names unique within this process.
    uploads: AtomicU64,
    /// The channel with the headers, for the other REAPI services (`reapi`).
    pub(crate) svc: Svc,
}

impl RemoteCache {
    /// Connects (within 5 s) and calls GetCapabilities (it
    /// gives the batch limit; the server must support SHA-256). Errors name
    /// the URL.
    pub fn connect(opts: &RemoteOptions) -> Result<RemoteCache> {
        let url = &opts.url;
        let endpoint = endpoint(opts).with_context(|| format!("remote cache {url}"))?;
        let headers = Headers(std::sync::Arc::new(
            parse_headers(&opts.headers).with_context(|| format!("remote cache {url}"))?,
        ));
        if let Some(w) = crate::remote_headers::plaintext_warning(url, &opts.headers) {
            eprintln_one_write!("thinlto-backend: remote cache: {w}");
        }
        // Two threads: the work is waiting on the network, and the machine's
        // cores belong to the compiles.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("remote-cache")
            .enable_all()
            .build()
            .context("cannot start the remote cache's tokio runtime")?;
        let channel = rt
            .block_on(async {
                match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
                    Ok(r) => r.map_err(|e| anyhow!("{e}: {}", source_chain(&e))),
                    Err(_) => Err(anyhow!("no connection within {CONNECT_TIMEOUT:?}")),
                }
            })
            .with_context(|| format!("cannot connect to the remote cache {url}"))?;
        let mut caps = CapabilitiesClient::with_interceptor(channel.clone(), headers.clone());
        let req = re::GetCapabilitiesRequest {
            instance_name: opts.instance.clone(),
        };
        let caps = rt
            .block_on(timed(Call::GetCapabilities, async move {
                caps.get_capabilities(req).await
            }))
            .map_err(|s| status_error(s, "GetCapabilities"))
            .and_then(|r| CacheTerms::of(r.into_inner()))
            .with_context(|| format!("remote cache {url}"))?;
        Ok(RemoteCache {
            rt,
            url: url.clone(),
            instance: opts.instance.clone(),
            cas: ContentAddressableStorageClient::with_interceptor(
                channel.clone(),
                headers.clone(),
            ),
            ac: ActionCacheClient::with_interceptor(channel.clone(), headers.clone()),
            svc: InterceptedService::new(channel.clone(), headers.clone()),
            bs: bytestream::byte_stream_client::ByteStreamClient::with_interceptor(
                channel, headers,
            ),
            batch_limit: caps.batch_limit,
            update_enabled: caps.update_enabled,
            uploads: AtomicU64::new(0),
        })
    }

    /// The most blob bytes one batch call carries (the server's
    /// `max_batch_total_size_bytes`, within gRPC's message limit, less room
    /// for the request's other fields); larger blobs go through ByteStream.
    pub fn batch_limit(&self) -> usize {
        self.batch_limit
    }

    /// GetActionResult (NOT_FOUND is a miss), then every output file blob
    /// and stdout/stderr, each verified against its digest: any missing,
    /// truncated or mismatching blob is a miss, never a wrong object, and
    /// so is a failed action (exit_code != 0).
    pub fn lookup(&self, key: &ActionKey) -> Result<Option<RemoteHit>> {
        self.rt
            .block_on(self.lookup_async(key))
            .with_context(|| format!("remote cache {}: lookup of action {}", self.url, key.action))
    }

    async fn lookup_async(&self, key: &ActionKey) -> Result<Option<RemoteHit>> {
        let mut ac = self.ac.clone();
        let req = re::GetActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(key.action.to_proto()),
            inline_stdout: true,
            inline_stderr: true,
            digest_function: re::digest_function::Value::Sha256 as i32,
            ..Default::default()
        };
        let result = match timed(Call::GetActionResult, async move {
            ac.get_action_result(req).await
        })
        .await
        {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(status_error(s, "GetActionResult")),
        };
        if result.exit_code != 0 {
            return Ok(None);
        }
        let Some(plan) = FetchPlan::of(&result) else {
            return Ok(None);
        };
        let Some(blobs) = self.fetch(plan.wanted()).await? else {
            return Ok(None);
        };
        Ok(plan.assemble(&blobs, result.exit_code))
    }

    /// Whether the server lets clients write its action cache
    /// (GetCapabilities' `update_enabled`).
    pub(crate) fn updates_allowed(&self) -> bool {
        self.update_enabled
    }

    /// GetActionResult of `action` as it is (NOT_FOUND is `None`), the
    /// blobs neither fetched nor checked: the caller does.
    pub(crate) async fn action_result(&self, action: &Digest) -> Result<Option<re::ActionResult>> {
        let mut ac = self.ac.clone();
        let req = re::GetActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(action.to_proto()),
            inline_stdout: true,
            inline_stderr: true,
            digest_function: re::digest_function::Value::Sha256 as i32,
            ..Default::default()
        };
        match timed(Call::GetActionResult, async move {
            ac.get_action_result(req).await
        })
        .await
        {
            Ok(r) => Ok(Some(r.into_inner())),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(status_error(s, "GetActionResult")),
        }
    }

    /// UpdateActionResult of `action` with `result`, whose blobs the
    /// caller knows the CAS has (nothing is uploaded).
    pub(crate) async fn put_action_result(
        &self,
        action: &Digest,
        result: re::ActionResult,
    ) -> Result<()> {
        let mut ac = self.ac.clone();
        let req = re::UpdateActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(action.to_proto()),
            action_result: Some(result),
            digest_function: re::digest_function::Value::Sha256 as i32,
            ..Default::default()
        };
        timed(Call::UpdateActionResult, async move {
            ac.update_action_result(req).await
        })
        .await
        .map_err(|s| status_error(s, "UpdateActionResult"))?;
        Ok(())
    }

    /// Every output and stdout/stderr blob of `result`, each verified,
    /// whatever its exit code (remote execution, `reapi::execute`); `None`
    /// if one is missing or does not match its digest.
    pub(crate) async fn result_blobs(
        &self,
        result: &re::ActionResult,
    ) -> Result<Option<RemoteHit>> {
        let Some(plan) = FetchPlan::of(result) else {
            return Ok(None);
        };
        let Some(blobs) = self.fetch(plan.wanted()).await? else {
            return Ok(None);
        };
        Ok(plan.assemble(&blobs, result.exit_code))
    }

    /// Uploads the Action and Command protos, the input root's Directory
    /// protos and every output and stdout/stderr blob the server lacks, then
    /// records the result (exit code 0) under the action's digest.
    ///
    /// The input files' contents are not uploaded: this is a cache, not
    /// remote execution, and their digests in the input root are what keys
    /// the result. Storing again under the same key replaces the entry with
    /// an equal one.
    pub fn store(
        &self,
        key: &ActionKey,
        outputs: &[(String, Vec<u8>)],
        stdout: &[u8],
        stderr: &[u8],
    ) -> Result<()> {
        self.rt
            .block_on(self.store_async(key, outputs, stdout, stderr))
            .with_context(|| format!("remote cache {}: store of action {}", self.url, key.action))
    }

    async fn store_async(
        &self,
        key: &ActionKey,
        outputs: &[(String, Vec<u8>)],
        stdout: &[u8],
        stderr: &[u8],
    ) -> Result<()> {
        if !self.update_enabled {
            bail!("the server does not let clients update its action cache");
        }
        for (i, (path, _)) in outputs.iter().enumerate() {
            if outputs[..i].iter().any(|(p, _)| p == path) {
                bail!("output {path:?} is given twice");
            }
            if key.output_paths.binary_search(path).is_err() {
                bail!(
                    "{path:?} is not one of the action's output paths {:?}",
                    key.output_paths
                );
            }
        }
        // Every blob the entry refers to, by digest (equal blobs once).
        let mut blobs: HashMap<Digest, &[u8]> = HashMap::new();
        blobs.insert(key.action.clone(), &key.action_bytes);
        blobs.insert(key.command.clone(), &key.command_bytes);
        for (d, bytes) in &key.directories {
            blobs.insert(d.clone(), bytes);
        }
        let mut result = re::ActionResult {
            exit_code: 0,
            ..Default::default()
        };
        for (path, data) in outputs {
            let d = Digest::of_bytes(data);
            result.output_files.push(re::OutputFile {
                path: path.clone(),
                digest: Some(d.to_proto()),
                is_executable: false,
                ..Default::default()
            });
            blobs.insert(d, data);
        }
        // Empty streams are left out: an unset digest reads as empty.
        if !stdout.is_empty() {
            let d = Digest::of_bytes(stdout);
            result.stdout_digest = Some(d.to_proto());
            blobs.insert(d, stdout);
        }
        if !stderr.is_empty() {
            let d = Digest::of_bytes(stderr);
            result.stderr_digest = Some(d.to_proto());
            blobs.insert(d, stderr);
        }
        self.upload_missing(&blobs).await?;

        let mut ac = self.ac.clone();
        let req = re::UpdateActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(key.action.to_proto()),
            action_result: Some(result),
            digest_function: re::digest_function::Value::Sha256 as i32,
            ..Default::default()
        };
        timed(Call::UpdateActionResult, async move {
            ac.update_action_result(req).await
        })
        .await
        .map_err(|s| status_error(s, "UpdateActionResult"))?;
        Ok(())
    }

    /// The blobs of `wanted`, by digest; `None` if one is missing or does not
    /// match its digest.
    pub(crate) async fn fetch(
        &self,
        wanted: Vec<Digest>,
    ) -> Result<Option<HashMap<Digest, Vec<u8>>>> {
        let mut got = HashMap::new();
        let (small, large): (Vec<Digest>, Vec<Digest>) = wanted
            .into_iter()
            .partition(|d| self.fits_a_batch(d.size_bytes as usize));
        for batch in batches(small, self.batch_limit) {
            match self.batch_read(batch).await? {
                Some(blobs) => got.extend(blobs),
                None => return Ok(None),
            }
        }
        for d in large {
            match self.bytestream_read(&d).await? {
                Some(data) => {
                    got.insert(d, data);
                }
                None => return Ok(None),
            }
        }
        Ok(Some(got))
    }

    fn fits_a_batch(&self, size: usize) -> bool {
        size + PER_BLOB_OVERHEAD <= self.batch_limit
    }

    async fn batch_read(&self, digests: Vec<Digest>) -> Result<Option<HashMap<Digest, Vec<u8>>>> {
        let mut cas = self.cas.clone();
        let req = re::BatchReadBlobsRequest {
            instance_name: self.instance.clone(),
            digests: digests.iter().map(Digest::to_proto).collect(),
            digest_function: re::digest_function::Value::Sha256 as i32,
            ..Default::default()
        };
        let resp = timed(Call::BatchReadBlobs, async move {
            cas.batch_read_blobs(req).await
        })
        .await
        .map_err(|s| status_error(s, "BatchReadBlobs"))?
        .into_inner();
        let mut got = HashMap::new();
        for r in resp.responses {
            let code = r.status.as_ref().map_or(0, |s| s.code);
            if code == Code::NotFound as i32 {
                return Ok(None);
            }
            if code != Code::Ok as i32 {
                let msg = r.status.map(|s| s.message).unwrap_or_default();
                bail!(
                    "BatchReadBlobs: a blob failed with {:?}: {}",
                    Code::from(code),
                    super::printable(&msg)
                );
            }
            // Compressed replies were not asked for; anything but identity
            // is a server bug, and a miss.
            let Some(d) = r.digest.as_ref().and_then(Digest::from_proto) else {
                return Ok(None);
            };
            if r.compressor != 0 || !d.matches(&r.data) {
                return Ok(None);
            }
            got.insert(d, r.data);
        }
        // A reply that leaves a blob out is a miss as well.
        Ok(digests.iter().all(|d| got.contains_key(d)).then_some(got))
    }

    async fn bytestream_read(&self, d: &Digest) -> Result<Option<Vec<u8>>> {
        let mut bs = self.bs.clone();
        let req = bytestream::ReadRequest {
            resource_name: format!(
                "{}blobs/{}/{}",
                self.instance_prefix(),
                d.hash,
                d.size_bytes
            ),
            read_offset: 0,
            read_limit: 0,
        };
        let want = d.size_bytes as usize;
        let read = async move {
            let mut stream = bs.read(req).await?.into_inner();
            // The size is the server's word: reserve no more than a
            // plausible object up front.
            let mut data = Vec::with_capacity(want.min(64 << 20));
            while let Some(chunk) = stream.message().await? {
                data.extend_from_slice(&chunk.data);
                // More than the digest's size can only be a wrong blob.
                if data.len() > want {
                    break;
                }
            }
            Ok(data)
        };
        match timed(Call::ByteStreamRead, read).await {
            Ok(data) => Ok(d.matches(&data).then_some(data)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(status_error(s, "ByteStream.Read")),
        }
    }

    /// FindMissingBlobs, then uploads what it names.
    /// Returns the bytes uploaded.
    pub(crate) async fn upload_missing(&self, blobs: &HashMap<Digest, &[u8]>) -> Result<u64> {
        let missing = self.find_missing(blobs.keys().collect()).await?;
        self.upload(&missing, blobs).await
    }

    /// FindMissingBlobs: which of `digests` the server lacks (each one
    /// of them; anything else it answers is an error).
    pub(crate) async fn find_missing(&self, mut digests: Vec<&Digest>) -> Result<Vec<Digest>> {
        let mut cas = self.cas.clone();
        digests.sort();
        digests.dedup();
        let req = re::FindMissingBlobsRequest {
            instance_name: self.instance.clone(),
            blob_digests: digests.iter().map(|d| d.to_proto()).collect(),
            digest_function: re::digest_function::Value::Sha256 as i32,
        };
        let missing = timed(Call::FindMissingBlobs, async move {
            cas.find_missing_blobs(req).await
        })
        .await
        .map_err(|s| status_error(s, "FindMissingBlobs"))?
        .into_inner()
        .missing_blob_digests;
        let mut out = missing
            .iter()
            .map(|m| {
                let d = Digest::from_proto(m).with_context(|| {
                    format!("FindMissingBlobs answered a malformed digest {m:?}")
                })?;
                if digests.binary_search(&&d).is_err() {
                    bail!("FindMissingBlobs answered {d}, which was not asked");
                }
                Ok(d)
            })
            .collect::<Result<Vec<Digest>>>()?;
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Uploads `missing`, each found in `blobs`. Returns the bytes
    /// uploaded.
    pub(crate) async fn upload(
        &self,
        missing: &[Digest],
        blobs: &HashMap<Digest, &[u8]>,
    ) -> Result<u64> {
        let mut small = Vec::new();
        let mut uploaded = 0u64;
        for d in missing {
            let d = d.clone();
            let data = *blobs
                .get(&d)
                .with_context(|| format!("FindMissingBlobs answered {d}, which was not asked"))?;
            uploaded += data.len() as u64;
            if self.fits_a_batch(data.len()) {
                small.push(d);
            } else {
                self.bytestream_write(&d, data).await?;
            }
        }
        for batch in batches(small, self.batch_limit) {
            self.batch_update(&batch, blobs).await?;
        }
        Ok(uploaded)
    }

    async fn batch_update(&self, batch: &[Digest], blobs: &HashMap<Digest, &[u8]>) -> Result<()> {
        let mut cas = self.cas.clone();
        let req = re::BatchUpdateBlobsRequest {
            instance_name: self.instance.clone(),
            requests: batch
                .iter()
                .map(|d| re::batch_update_blobs_request::Request {
                    digest: Some(d.to_proto()),
                    data: blobs[d].to_vec(),
                    ..Default::default()
                })
                .collect(),
            digest_function: re::digest_function::Value::Sha256 as i32,
        };
        let resp = timed(Call::BatchUpdateBlobs, async move {
            cas.batch_update_blobs(req).await
        })
        .await
        .map_err(|s| status_error(s, "BatchUpdateBlobs"))?
        .into_inner();
        for r in resp.responses {
            if let Some(s) = r.status.filter(|s| s.code != Code::Ok as i32) {
                let d = r.digest.map(|d| format!("{}/{}", d.hash, d.size_bytes));
                bail!(
                    "BatchUpdateBlobs: blob {} failed with {:?}: {}",
                    super::printable(&d.unwrap_or_default()),
                    Code::from(s.code),
                    super::printable(&s.message)
                );
            }
        }
        Ok(())
    }

    async fn bytestream_write(&self, d: &Digest, data: &[u8]) -> Result<()> {
        let mut bs = self.bs.clone();
        // Unique per upload (REAPI only asks for uniqueness among a client's
        // concurrent uploads): process id, a counter, the clock.
        let n = self.uploads.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_nanos());
        let resource_name = format!(
            "{}uploads/{}-{n}-{nanos}/blobs/{}/{}",
            self.instance_prefix(),
            std::process::id(),
            d.hash,
            d.size_bytes
        );
        let total = data.len();
        let mut requests: Vec<bytestream::WriteRequest> = Vec::new();
        let mut offset = 0;
        // An empty blob still needs one request, the one that finishes it.
        loop {
            let end = (offset + WRITE_CHUNK).min(total);
            requests.push(bytestream::WriteRequest {
                // Only the first request must name the resource.
                resource_name: if offset == 0 {
                    resource_name.clone()
                } else {
                    String::new()
                },
                write_offset: offset as i64,
                finish_write: end == total,
                data: data[offset..end].to_vec(),
            });
            offset = end;
            if offset == total {
                break;
            }
        }
        let stream = tonic::codegen::tokio_stream::iter(requests);
        let resp = match timed(Call::ByteStreamWrite, async move { bs.write(stream).await }).await {
            Ok(r) => r.into_inner(),
            // Some servers say so when another client uploaded it first.
            Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
            Err(s) => return Err(status_error(s, "ByteStream.Write")),
        };
        // A server that already had the blob may answer early with the
        // full size; anything else short of it is a failed upload.
        if resp.committed_size != total as i64 {
            bail!(
                "ByteStream.Write of {d}: the server committed {} of {total} bytes",
                resp.committed_size
            );
        }
        Ok(())
    }

    /// `"{instance}/"`, or nothing for the default instance: the start of a
    /// ByteStream resource name.
    fn instance_prefix(&self) -> String {
        if self.instance.is_empty() {
            String::new()
        } else {
            format!("{}/", self.instance)
        }
    }
}

/// What a server's capabilities mean for this client.
struct CacheTerms {
    batch_limit: usize,
    update_enabled: bool,
}

impl CacheTerms {
    fn of(caps: re::ServerCapabilities) -> Result<CacheTerms> {
        let cache = caps
            .cache_capabilities
            .context("the server has no cache capabilities (not a REAPI cache?)")?;
        let sha256 = re::digest_function::Value::Sha256 as i32;
        // An empty list is an old server's way of saying SHA-256 only.
        if !cache.digest_functions.is_empty() && !cache.digest_functions.contains(&sha256) {
            bail!(
                "the server does not support SHA-256 digests (it offers {:?})",
                cache.digest_functions
            );
        }
        // 0 is "no limit" but gRPC's message limit still applies (tonic's
        // decoding limit too, for the replies).
        let advertised = usize::try_from(cache.max_batch_total_size_bytes).unwrap_or(0);
        let limit = match advertised {
            0 => GRPC_MAX_MESSAGE,
            n => n.min(GRPC_MAX_MESSAGE),
        };
        Ok(CacheTerms {
            batch_limit: limit - BATCH_OVERHEAD.min(limit / 16),
            update_enabled: cache
                .action_cache_update_capabilities
                .is_some_and(|u| u.update_enabled),
        })
    }
}

/// The blobs a lookup fetches for an ActionResult, and how it reassembles
/// them into a hit.
struct FetchPlan {
    outputs: Vec<(String, Blob)>,
    stdout: Blob,
    stderr: Blob,
}

/// Where one piece of an ActionResult's content is.
enum Blob {
    Inline(Vec<u8>),
    Cas(Digest),
}

impl FetchPlan {
    /// `None` (a miss) for an ActionResult we cannot trust: a malformed or
    /// absent digest (or one over the size bound), more outputs than any
    /// action of the cache has, an output listed twice, inline content
    /// that does not match its digest.
    fn of(r: &re::ActionResult) -> Option<FetchPlan> {
        if r.output_files.len() > MAX_REMOTE_OUTPUTS {
            return None;
        }
        let mut outputs = Vec::new();
        for f in &r.output_files {
            let d = Digest::from_proto(f.digest.as_ref()?)?;
            if outputs.iter().any(|(p, _)| *p == f.path) {
                return None;
            }
            let blob = if !f.contents.is_empty() {
                d.matches(&f.contents)
                    .then(|| Blob::Inline(f.contents.clone()))?
            } else {
                Blob::Cas(d)
            };
            outputs.push((f.path.clone(), blob));
        }
        Some(FetchPlan {
            outputs,
            stdout: Self::stream(&r.stdout_raw, r.stdout_digest.as_ref())?,
            stderr: Self::stream(&r.stderr_raw, r.stderr_digest.as_ref())?,
        })
    }

    fn stream(raw: &[u8], digest: Option<&re::Digest>) -> Option<Blob> {
        match digest {
            None => Some(Blob::Inline(raw.to_vec())),
            Some(d) => {
                let d = Digest::from_proto(d)?;
                if raw.is_empty() {
                    Some(Blob::Cas(d))
                } else {
                    d.matches(raw).then(|| Blob::Inline(raw.to_vec()))
                }
            }
        }
    }

    /// The CAS blobs to fetch, each once; the empty blob needs no fetch.
    fn wanted(&self) -> Vec<Digest> {
        let mut v: Vec<Digest> = self
            .outputs
            .iter()
            .map(|(_, b)| b)
            .chain([&self.stdout, &self.stderr])
            .filter_map(|b| match b {
                Blob::Cas(d) if d.size_bytes > 0 => Some(d.clone()),
                _ => None,
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn assemble(self, blobs: &HashMap<Digest, Vec<u8>>, exit_code: i32) -> Option<RemoteHit> {
        let get = |b: Blob| -> Option<Vec<u8>> {
            match b {
                Blob::Inline(v) => Some(v),
                Blob::Cas(d) if d.size_bytes == 0 => d.matches(&[]).then(Vec::new),
                Blob::Cas(d) => blobs.get(&d).cloned(),
            }
        };
        let mut outputs = BTreeMap::new();
        for (path, b) in self.outputs {
            outputs.insert(path, get(b)?);
        }
        Some(RemoteHit {
            outputs,
            stdout: get(self.stdout)?,
            stderr: get(self.stderr)?,
            exit_code,
        })
    }
}

/// Groups digests into batches whose blobs total at most `limit` bytes.
fn batches(mut digests: Vec<Digest>, limit: usize) -> Vec<Vec<Digest>> {
    digests.sort();
    let mut out: Vec<Vec<Digest>> = Vec::new();
    let mut room = 0;
    for d in digests {
        let cost = d.size_bytes as usize + PER_BLOB_OVERHEAD;
        if out.is_empty() || cost > room {
            out.push(Vec::new());
            room = limit;
        }
        room = room.saturating_sub(cost);
        out.last_mut().expect("a batch was just pushed").push(d);
    }
    out
}

/// The tonic endpoint of a `grpc://` or `grpcs://` URL.
fn endpoint(opts: &RemoteOptions) -> Result<Endpoint> {
    let url = &opts.url;
    let (tls, rest) = if let Some(r) = url.strip_prefix("grpcs://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("grpc://") {
        (false, r)
    } else {
        bail!("the URL must start with grpc:// (plaintext) or grpcs:// (TLS)");
    };
    if rest.is_empty() || rest.contains('/') {
        bail!("the URL must be grpc[s]://HOST:PORT (the instance name is a separate option)");
    }
    let http = format!("{}://{rest}", if tls { "https" } else { "http" });
    let mut ep = Endpoint::from_shared(http)
        .context("not a valid URL")?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    if tls {
        let mut cfg = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &opts.tls_ca {
            let pem = std::fs::read(ca)
                .with_context(|| format!("cannot read the CA file {}", ca.display()))?;
            cfg = cfg.ca_certificate(Certificate::from_pem(pem));
        }
        ep = ep.tls_config(cfg).context("bad TLS configuration")?;
    } else if opts.tls_ca.is_some() {
        bail!("a CA file was given for a plaintext grpc:// URL (use grpcs://)");
    }
    Ok(ep)
}

/// `NAME=VALUE` pairs as gRPC ASCII metadata.
fn parse_headers(
    headers: &[(String, String)],
) -> Result<Vec<(AsciiMetadataKey, AsciiMetadataValue)>> {
    headers
        .iter()
        .map(|(name, value)| {
            let lower = name.to_ascii_lowercase();
            if lower.ends_with("-bin") {
                bail!("header {name}: binary (-bin) metadata is not supported");
            }
            let k = AsciiMetadataKey::from_bytes(lower.as_bytes())
                .map_err(|_| anyhow!("header {name:?}: not a valid gRPC metadata name"))?;
            let v = AsciiMetadataValue::try_from(value.as_str())
                .map_err(|_| anyhow!("header {name}: the value is not printable ASCII"))?;
            Ok((k, v))
        })
        .collect()
}

/// One call under [`CALL_TIMEOUT`] (tonic's own timeout ends at the reply's
/// headers; a streamed body needs this one too).
pub(crate) async fn timed<T>(
    kind: Call,
    call: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    super::calls::count(kind);
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(r) => r,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no answer within {CALL_TIMEOUT:?}"
        ))),
    }
}

/// A gRPC failure as an error naming the call.
pub(crate) fn status_error(s: Status, call: &str) -> anyhow::Error {
    let mut msg = format!("{call} failed: {:?}", s.code());
    if !s.message().is_empty() {
        // The server's words: printed escaped.
        msg += &format!(": {}", super::printable(s.message()));
    }
    if let Some(src) = std::error::Error::source(&s) {
        msg += &format!(" ({src}: {})", source_chain(src));
    }
    anyhow::Error::new(RpcError {
        code: s.code(),
        msg,
    })
}

/// A failed call, with its gRPC code (see [`is_transient`]).
#[derive(Debug)]
struct RpcError {
    code: Code,
    msg: String,
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for RpcError {}

/// Whether an error is one a client should retry after a pause: the server
/// is overloaded (RESOURCE_EXHAUSTED: BuildGrid answers so when more calls
/// are in flight than its thread pool has threads) or briefly unavailable.
pub fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<RpcError>()
            .is_some_and(|r| matches!(r.code, Code::ResourceExhausted | Code::Unavailable))
    })
}

/// The causes of an error, joined (tonic's transport errors say little on
/// top: "transport error").
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        // Wrappers often repeat their cause's text: say it once.
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = c.source();
    }
    parts.join(": ")
}

/// [`Digest::blake3_of_files_as_sent`], each file's two digests from
/// `digests` (a per-run cache may stand in for the read).
pub fn blake3_as_sent(
    files: &[(String, Digest)],
    digests: impl Fn(&str) -> Option<(Digest, String)>,
) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (p, sent) in files {
        let (now, b3) = digests(p)?;
        if now != *sent {
            return None;
        }
        out.insert(p.clone(), b3);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_as_sent_are_the_sent_bytes_blake3_or_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("blob with space.bin");
        std::fs::write(&p, b"data").unwrap();
        let name = p.to_string_lossy().into_owned();
        let sent = vec![(name.clone(), Digest::of_bytes(b"data"))];
        let got = Digest::blake3_of_files_as_sent(&sent).unwrap();
        assert_eq!(got[&name], blake3::hash(b"data").to_hex().as_str());
        assert_eq!(Digest::blake3_of_files_as_sent(&[]), Some(BTreeMap::new()));
        // Changed since it was sent, or gone: nothing vouches.
        std::fs::write(&p, b"datb").unwrap();
        assert_eq!(Digest::blake3_of_files_as_sent(&sent), None);
        std::fs::remove_file(&p).unwrap();
        assert_eq!(Digest::blake3_of_files_as_sent(&sent), None);
    }

    fn input(path: &str, content: &[u8]) -> InputFile {
        InputFile {
            path: path.into(),
            digest: Digest::of_bytes(content),
            executable: false,
        }
    }

    fn spec() -> ActionSpec {
        ActionSpec {
            argv: vec!["clang".into(), "-c".into(), "a.bc".into()],
            env: vec![("PWD".into(), "/x".into()), ("LANG".into(), "C".into())],
            output_paths: vec!["out/a.o".into()],
            inputs: vec![
                input("src/z.bc", b"z"),
                input("a.bc", b"a"),
                input("src/sub/y.bc", b"y"),
            ],
            salt: b"clang 19; v1".to_vec(),
        }
    }

    fn directory(key: &ActionKey, d: &Digest) -> re::Directory {
        re::Directory::decode(key.directories[d].as_slice()).unwrap()
    }

    #[test]
    fn digest_of_a_known_string() {
        assert_eq!(
            Digest::of_bytes(b"abc"),
            Digest {
                hash: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into(),
                size_bytes: 3
            }
        );
        assert_eq!(
            Digest::of_bytes(b"").hash,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &big).unwrap();
        assert_eq!(Digest::of_file(&p).unwrap(), Digest::of_bytes(&big));
    }

    #[test]
    fn key_is_deterministic_and_order_independent() {
        let a = spec().key().unwrap();
        let b = spec().key().unwrap();
        assert_eq!(a.action, b.action);
        assert_eq!(a.action_bytes, b.action_bytes);
        assert_eq!(a.command_bytes, b.command_bytes);
        assert_eq!(a.directories, b.directories);
        // Inputs and environment listed in another order: the same action.
        let mut s = spec();
        s.inputs.reverse();
        s.env.reverse();
        assert_eq!(s.key().unwrap().action, a.action);
        // Argument order matters, and so does every part of the action.
        let mut s = spec();
        s.argv.swap(1, 2);
        assert_ne!(s.key().unwrap().action, a.action);
        let mut s = spec();
        s.salt.push(b'!');
        assert_ne!(s.key().unwrap().action, a.action);
        let mut s = spec();
        s.inputs[0].digest = Digest::of_bytes(b"other");
        assert_ne!(s.key().unwrap().action, a.action);
        let mut s = spec();
        s.inputs[0].executable = true;
        assert_ne!(s.key().unwrap().action, a.action);
    }

    /// The key of a fixed spec, spelled out: the same in every process and
    /// on every machine. A change here (a new prost, a changed encoding)
    /// turns every remote entry into a miss; if intended, bump the format
    /// version the cache puts in the salt.
    #[test]
    fn key_of_a_fixed_spec_is_stable() {
        assert_eq!(spec().key().unwrap().action.to_string(), GOLDEN_ACTION);
    }
    /// Cross-checked: the same Action, Command and Directories built with
    /// BuildGrid 0.4.4's Python protos (`SerializeToString(deterministic=
    /// True)`) hash to this.
    const GOLDEN_ACTION: &str =
        "93f3e322a3a9ee6f1c292fe1ebd3b92fd55662f76b2dde03242d0116236ec95c/155";

    #[test]
    fn command_is_canonical() {
        let k = spec().key().unwrap();
        assert_eq!(k.command, Digest::of_bytes(&k.command_bytes));
        let c = re::Command::decode(k.command_bytes.as_slice()).unwrap();
        let names: Vec<&str> = c
            .environment_variables
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(names, ["LANG", "PWD"]);
        assert_eq!(c.output_paths, ["out/a.o"]);
        #[allow(deprecated)]
        let files = &c.output_files;
        assert_eq!(files, &["out/a.o"]);
        let a = re::Action::decode(k.action_bytes.as_slice()).unwrap();
        assert_eq!(a.command_digest, Some(k.command.to_proto()));
        assert_eq!(a.input_root_digest, Some(k.input_root.to_proto()));
        assert!(!a.do_not_cache);
        assert_eq!(a.salt, b"clang 19; v1");
    }

    #[test]
    fn input_root_is_a_canonical_merkle_tree() {
        let k = spec().key().unwrap();
        let root = directory(&k, &k.input_root);
        let files: Vec<&str> = root.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(files, ["a.bc"]);
        assert_eq!(
            root.files[0].digest,
            Some(Digest::of_bytes(b"a").to_proto())
        );
        let dirs: Vec<&str> = root.directories.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(dirs, ["src"]);
        let src = directory(
            &k,
            &Digest::from_proto(root.directories[0].digest.as_ref().unwrap()).unwrap(),
        );
        assert_eq!(
            src.files.iter().map(|f| &f.name).collect::<Vec<_>>(),
            ["z.bc"]
        );
        assert_eq!(
            src.directories.iter().map(|d| &d.name).collect::<Vec<_>>(),
            ["sub"]
        );
        let sub = directory(
            &k,
            &Digest::from_proto(src.directories[0].digest.as_ref().unwrap()).unwrap(),
        );
        assert_eq!(
            sub.files.iter().map(|f| &f.name).collect::<Vec<_>>(),
            ["y.bc"]
        );
        assert!(sub.directories.is_empty());
        assert_eq!(k.directories.len(), 3);
        // Sorted by name, byte-wise: "B" < "a" < "b".
        let mut s = spec();
        s.inputs = vec![input("b", b"1"), input("B", b"2"), input("a", b"3")];
        let k = s.key().unwrap();
        let root = directory(&k, &k.input_root);
        let names: Vec<&str> = root.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["B", "a", "b"]);
        // Every Directory's digest is the digest of its bytes.
        for (d, bytes) in &k.directories {
            assert_eq!(*d, Digest::of_bytes(bytes));
        }
    }

    #[test]
    fn rejects_bad_paths() {
        for bad in [
            "/abs/a.bc",
            "../a.bc",
            "src/../a.bc",
            "src//a.bc",
            "./a.bc",
            "src/",
            "",
        ] {
            let mut s = spec();
            s.inputs.push(input(bad, b"x"));
            assert!(s.key().is_err(), "input {bad:?} accepted");
            let mut s = spec();
            s.output_paths = vec![bad.into()];
            assert!(s.key().is_err(), "output {bad:?} accepted");
        }
        let mut s = spec();
        s.inputs.push(input("src/z.bc", b"another"));
        let e = format!("{:#}", s.key().unwrap_err());
        assert!(e.contains("src/z.bc") && e.contains("twice"), "{e}");
        // A file where another input needs a directory, both ways round.
        let mut s = spec();
        s.inputs.push(input("src", b"x"));
        assert!(s.key().is_err());
        let mut s = spec();
        s.inputs.push(input("a.bc/x", b"x"));
        assert!(s.key().is_err());
        let mut s = spec();
        s.output_paths.push("out/a.o".into());
        assert!(s.key().is_err());
        let mut s = spec();
        s.env.push(("PWD".into(), "/y".into()));
        assert!(s.key().is_err());
    }

    #[test]
    fn batches_respect_the_limit() {
        let d = |n: i64| Digest {
            hash: format!("{n:064x}"),
            size_bytes: n,
        };
        let b = batches(
            vec![d(600), d(300), d(100), d(900)],
            1000 + 2 * PER_BLOB_OVERHEAD,
        );
        for batch in &b {
            let total: usize = batch
                .iter()
                .map(|x| x.size_bytes as usize + PER_BLOB_OVERHEAD)
                .sum();
            assert!(total <= 1000 + 2 * PER_BLOB_OVERHEAD, "{batch:?}");
        }
        assert_eq!(b.iter().map(Vec::len).sum::<usize>(), 4);
    }

    #[test]
    fn capabilities_give_the_batch_limit() {
        let caps = |max: i64, fns: Vec<i32>| re::ServerCapabilities {
            cache_capabilities: Some(re::CacheCapabilities {
                digest_functions: fns,
                max_batch_total_size_bytes: max,
                ..Default::default()
            }),
            ..Default::default()
        };
        let sha256 = re::digest_function::Value::Sha256 as i32;
        let limit = |max| CacheTerms::of(caps(max, vec![sha256])).unwrap().batch_limit;
        assert_eq!(limit(0), (4 << 20) - (16 << 10));
        assert_eq!(limit(64 << 20), (4 << 20) - (16 << 10));
        assert_eq!(limit(4096), 4096 - 256);
        assert_eq!(limit(-1), (4 << 20) - (16 << 10));
        let t = CacheTerms::of(caps(0, vec![])).unwrap();
        assert!(!t.update_enabled);
        let sha1 = re::digest_function::Value::Sha1 as i32;
        assert!(CacheTerms::of(caps(0, vec![sha1])).is_err());
        assert!(CacheTerms::of(re::ServerCapabilities::default()).is_err());
    }

    #[test]
    fn overload_is_transient_and_named() {
        let busy = status_error(
            Status::resource_exhausted("Concurrent RPC limit exceeded!"),
            "GetActionResult",
        )
        .context("remote cache grpc://x:1: lookup");
        assert!(is_transient(&busy));
        assert!(format!("{busy:#}").contains("ResourceExhausted: Concurrent RPC limit"));
        assert!(is_transient(&status_error(
            Status::unavailable("x"),
            "FindMissingBlobs"
        )));
        for s in [Status::not_found("x"), Status::permission_denied("x")] {
            assert!(!is_transient(&status_error(s, "GetActionResult")));
        }
        assert!(!is_transient(&anyhow!("not an RPC error")));
    }

    #[test]
    fn bad_urls_and_headers_are_named() {
        let opts = |url: &str| RemoteOptions {
            url: url.into(),
            ..Default::default()
        };
        for bad in ["http://h:1", "h:1", "grpc://", "grpc://h:1/inst"] {
            let e = match RemoteCache::connect(&opts(bad)) {
                Ok(_) => panic!("{bad} accepted"),
                Err(e) => format!("{e:#}"),
            };
            assert!(e.contains(bad), "{e}");
        }
        assert!(parse_headers(&[("Authorization".into(), "Bearer x".into())]).is_ok());
        assert!(parse_headers(&[("bad name".into(), "x".into())]).is_err());
        assert!(parse_headers(&[("x".into(), "line\nbreak".into())]).is_err());
        assert!(parse_headers(&[("x-bin".into(), "x".into())]).is_err());
    }

    #[test]
    fn untrustworthy_results_are_misses() {
        let good = Digest::of_bytes(b"obj");
        let file = |path: &str, d: re::Digest, contents: &[u8]| re::OutputFile {
            path: path.into(),
            digest: Some(d),
            contents: contents.to_vec(),
            ..Default::default()
        };
        let r = |files: Vec<re::OutputFile>| re::ActionResult {
            output_files: files,
            ..Default::default()
        };
        assert!(FetchPlan::of(&r(vec![file("a.o", good.to_proto(), b"")])).is_some());
        assert!(FetchPlan::of(&r(vec![file("a.o", good.to_proto(), b"obj")])).is_some());
        // Inline content that is not the digest's.
        assert!(FetchPlan::of(&r(vec![file("a.o", good.to_proto(), b"job")])).is_none());
        // A malformed digest.
        let mut bad = good.to_proto();
        bad.hash = "../../etc".into();
        assert!(FetchPlan::of(&r(vec![file("a.o", bad, b"")])).is_none());
        // One path twice.
        let twice = vec![
            file("a.o", good.to_proto(), b""),
            file("a.o", good.to_proto(), b""),
        ];
        assert!(FetchPlan::of(&r(twice)).is_none());
        // A missing blob at assembly.
        let plan = FetchPlan::of(&r(vec![file("a.o", good.to_proto(), b"")])).unwrap();
        assert_eq!(plan.wanted(), std::slice::from_ref(&good));
        assert!(plan.assemble(&HashMap::new(), 0).is_none());
        // Sizes and counts over the bounds: a miss, nothing fetched.
        let mut huge = good.to_proto();
        huge.size_bytes = 1 << 62;
        assert!(FetchPlan::of(&r(vec![file("a.o", huge.clone(), b"")])).is_none());
        let mut out = r(vec![]);
        out.stdout_digest = Some(huge);
        assert!(FetchPlan::of(&out).is_none());
        let many = (0..=MAX_REMOTE_OUTPUTS)
            .map(|i| file(&format!("o{i}"), good.to_proto(), b""))
            .collect();
        assert!(FetchPlan::of(&r(many)).is_none());
    }
}
