//! A client of REAPI remote execution: [`Executor::execute`] runs one
//! action on the server's workers and returns its outputs.
//!
//! The steps, as the REAPI v2 spec has them:
//! 1. the Action, the Command, the input root's Directory protos and every
//!    input file the server lacks are uploaded (`FindMissingBlobs`, then
//!    `BatchUpdateBlobs` or `ByteStream.Write`: the cache client's
//!    `upload_missing`); an input file is read from the client's tree and
//!    checked against its digest first;
//! 2. `Execute` (the server may answer from its action cache), whose
//!    stream of `Operation`s ends with one that is `done`; a stream that
//!    breaks before (the call's deadline, a restarted proxy) is resumed
//!    with `WaitExecution` on the operation's name;
//! 3. the `ExecuteResponse`'s `ActionResult`: every output and
//!    stdout/stderr blob is fetched and checked against its digest.
//!
//! The action carries platform properties (`Action.platform` for v2.2
//! servers and `Command.platform` for older ones, BuildGrid 0.4.4 among
//! them): the farm's workers take only actions whose properties their
//! devices advertise (`thinlto-compiler`, see `crate::worker`).
//!
//! Like [`RemoteCache`], the executor blocks on its own runtime and is
//! shared by plain threads.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::longrunning::operations_client::OperationsClient;
use bazel_remote_apis::google::longrunning::{operation, CancelOperationRequest, Operation};
use prost::Message;
use re::execution_client::ExecutionClient;
use tonic::Code;

use crate::reapi::{printable, status_error, ActionKey, Digest, RemoteCache, RemoteOptions, Svc};

/// How many times a broken operation stream is resumed with
/// WaitExecution before the execution is an error.
const MAX_RESUMES: usize = 20;
/// How long a CancelOperation may take: it is sent while the process is
/// dying by a signal, and a dead server must not hold the exit.
const CANCEL_DEADLINE: Duration = Duration::from_secs(2);

/// How often a waiting execution looks at the queued notice's clock.
const QUEUED_CHECK: Duration = Duration::from_secs(1);

/// One action to execute: what the cache's [`ActionKey`] describes, plus
/// the platform properties a worker must have, and where the input files'
/// contents are.
pub struct RemoteAction<'a> {
    pub key: &'a ActionKey,
    /// Name → value; sorted here (REAPI wants them sorted by name).
    pub platform: Vec<(String, String)>,
    /// The input paths of the key are relative to this directory.
    pub local_root: &'a Path,
}

/// What an execution gave, every blob verified.
#[derive(Debug, Clone)]
pub struct Executed {
    pub exit_code: i32,
    /// Output path → content, as the ActionResult lists them.
    pub outputs: BTreeMap<String, Vec<u8>>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The answer came from the server's action cache.
    pub cached: bool,
    /// The worker that ran it (`ExecutedActionMetadata.worker`).
    pub worker: String,
    /// The action executed (with its platform properties).
    pub action: Digest,
    /// Bytes of the blobs the server lacked and got from us.
    pub uploaded: u64,
}

/// A connected remote-execution client.
pub struct Executor {
    /// This client's operations the server has not started yet
    /// ([`Executor::waiting`]).
    waiting: AtomicUsize,
    /// When one of this client's executions last started, or the first
    /// was sent after none waited: the clock of the queued notice.
    progress: std::sync::Mutex<Instant>,
    /// How long the clock may run with executions waiting before the
    /// notice ([`crate::reapi::DEFAULT_QUEUED_NOTICE_SECONDS`]).
    queued_notice: Duration,
    /// The queued notice was given.
    queued_said: AtomicBool,
    cas: RemoteCache,
    exec: ExecutionClient<Svc>,
    /// google.longrunning's Operations service of the execution server
    /// (CancelOperation).
    ops: OperationsClient<Svc>,
}

/// Why [`Executor::execute_until`] gave up: `cancelled` said so. The
/// operation, if the server had named it, was asked to cancel.
#[derive(Debug)]
pub struct Cancelled {
    /// The operation's name; empty when the server had not named it yet.
    pub operation: String,
    /// The CancelOperation call's error, if it failed.
    pub error: Option<String>,
}

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.operation.is_empty(), &self.error) {
            (true, _) => write!(f, "cancelled before the server named the operation"),
            (false, None) => write!(f, "cancelled operation {}", printable(&self.operation)),
            (false, Some(e)) => write!(
                f,
                "cannot cancel operation {}: {e}",
                printable(&self.operation)
            ),
        }
    }
}

impl std::error::Error for Cancelled {}

/// The execution service answered for this action alone: its
/// ExecuteResponse carries a status other than OK that concerns the
/// action (a worker refused it, its deadline passed, its inputs were
/// incomplete), not the farm. Such a job compiles here; the farm stays
/// in use for the others.
#[derive(Debug)]
pub struct ActionRefused {
    pub code: Code,
    /// The status's message, escaped (`reapi::printable`).
    pub message: String,
}

impl std::fmt::Display for ActionRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for ActionRefused {}

impl ActionRefused {
    /// The codes a worker or the scheduler gives one action (REAPI v2's
    /// ExecuteResponse.status: INVALID_ARGUMENT for an action it will not
    /// run, FAILED_PRECONDITION for missing inputs or an output-less
    /// success, DEADLINE_EXCEEDED past `Action.timeout`, and what a
    /// worker's sandbox reports: PERMISSION_DENIED, RESOURCE_EXHAUSTED is
    /// not among them: that one means an overloaded server, retried).
    fn of(code: Code) -> bool {
        matches!(
            code,
            Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::DeadlineExceeded
                | Code::PermissionDenied
                | Code::OutOfRange
        )
    }
}

impl Executor {
    /// Connects as the remote cache does (GetCapabilities included).
    pub fn connect(opts: &RemoteOptions) -> Result<Executor> {
        let cas = RemoteCache::connect(opts)?;
        let exec = ExecutionClient::new(cas.svc.clone());
        let ops = OperationsClient::new(cas.svc.clone());
        Ok(Executor {
            waiting: AtomicUsize::new(0),
            progress: std::sync::Mutex::new(Instant::now()),
            queued_notice: Duration::from_secs(crate::reapi::DEFAULT_QUEUED_NOTICE_SECONDS),
            queued_said: AtomicBool::new(false),
            cas,
            exec,
            ops,
        })
    }

    /// Uploads what the server lacks, executes, waits, fetches the
    /// outputs. An action that ran and failed is `Ok` with its exit code;
    /// an error is an action the server could not run (or a broken
    /// connection).
    pub fn execute(&self, action: &RemoteAction) -> Result<Executed> {
        let name = std::sync::Mutex::new(String::new());
        self.cas
            .rt
            .block_on(self.execute_async(action, &name))
            .with_context(|| format!("remote execution on {}", self.cas.url))
    }

    /// [`Executor::execute`], given up as soon as `cancelled` says so (it
    /// is asked five times a second): the operation's stream is dropped
    /// and the server asked to cancel the operation (CancelOperation,
    /// within [`CANCEL_DEADLINE`]), so that its worker stops the compile
    /// rather than finish a job nobody waits for. The error is then a
    /// [`Cancelled`].
    pub fn execute_until(
        &self,
        action: &RemoteAction,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Executed> {
        let name = std::sync::Mutex::new(String::new());
        self.cas
            .rt
            .block_on(async {
                let mut run = std::pin::pin!(self.execute_async(action, &name));
                loop {
                    match tokio::time::timeout(Duration::from_millis(200), run.as_mut()).await {
                        Ok(r) => return r,
                        Err(_) if cancelled() => break,
                        Err(_) => {}
                    }
                }
                let operation = name.lock().unwrap().clone();
                let error = if operation.is_empty() {
                    None
                } else {
                    self.cancel(&operation)
                        .await
                        .err()
                        .map(|e| format!("{e:#}"))
                };
                Err(anyhow::Error::new(Cancelled { operation, error }))
            })
            .with_context(|| format!("remote execution on {}", self.cas.url))
    }

    /// The server's action cache's answer for `action` (its digest with
    /// the platform properties, as [`Executor::execute`] would send it):
    /// a successful result whose every blob is fetched and verified, else
    /// `None` (a miss: absent, failed, or a blob missing or wrong).
    pub fn cached(&self, action: &RemoteAction) -> Result<Option<Executed>> {
        let protos = with_platform(action.key, &action.platform)?;
        self.cas
            .rt
            .block_on(async {
                let Some(result) = self.cas.action_result(&protos.action).await? else {
                    return Ok::<_, anyhow::Error>(None);
                };
                if result.exit_code != 0 {
                    return Ok(None);
                }
                let Some(hit) = self.cas.result_blobs(&result).await? else {
                    return Ok(None);
                };
                Ok(Some(Executed {
                    exit_code: 0,
                    outputs: hit.outputs,
                    stdout: hit.stdout,
                    stderr: hit.stderr,
                    cached: true,
                    worker: result
                        .execution_metadata
                        .map(|m| m.worker)
                        .unwrap_or_default(),
                    action: protos.action,
                    uploaded: 0,
                }))
            })
            .with_context(|| format!("action cache of {}", self.cas.url))
    }

    /// Says so when the executions waiting have none of them started for
    /// `after` (instead of [`crate::reapi::DEFAULT_QUEUED_NOTICE_SECONDS`]).
    pub fn with_queued_notice(mut self, after: Duration) -> Executor {
        self.queued_notice = after;
        self
    }

    /// How many of this client's executions the server has not started:
    /// sent, and the operation's metadata not yet past QUEUED
    /// (`ExecuteOperationMetadata.stage`). While one waits, the farm's
    /// workers have work queued (`--remote-batch` lets a batch fill up
    /// meanwhile). A server that never reports EXECUTING keeps an
    /// execution counted until it is done.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Says, once, that this client's executions have waited the queued
    /// notice's time with none started (an action of `platform` among
    /// them).
    fn queued_notice(&self, platform: &[(String, String)]) {
        let quiet = self.progress.lock().unwrap().elapsed();
        let waiting = self.waiting();
        if waiting == 0
            || quiet < self.queued_notice
            || self.queued_said.swap(true, Ordering::Relaxed)
        {
            return;
        }
        eprintln_one_write!(
            "{}",
            queued_notice_text(&self.cas.url, waiting, quiet, platform)
        );
    }

    /// Whether the server lets clients write its action cache.
    pub fn may_remember(&self) -> bool {
        self.cas.updates_allowed()
    }

    /// Records `result` in the server's action cache under `action` (its
    /// digest with the platform properties). Its blobs must be in the CAS
    /// already (a batch's worker uploaded them): nothing is uploaded.
    pub fn remember(&self, action: &RemoteAction, result: re::ActionResult) -> Result<()> {
        let protos = with_platform(action.key, &action.platform)?;
        self.cas
            .rt
            .block_on(self.cas.put_action_result(&protos.action, result))
            .with_context(|| format!("action cache of {}", self.cas.url))
    }

    /// CancelOperation on `name`, within [`CANCEL_DEADLINE`] (the call's
    /// connection included).
    async fn cancel(&self, name: &str) -> Result<()> {
        let mut ops = self.ops.clone();
        let mut req = tonic::Request::new(CancelOperationRequest {
            name: name.to_string(),
        });
        req.set_timeout(CANCEL_DEADLINE);
        crate::reapi::calls::count(crate::reapi::calls::Call::CancelOperation);
        match tokio::time::timeout(CANCEL_DEADLINE, ops.cancel_operation(req)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) => Err(status_error(s, "CancelOperation")),
            Err(_) => bail!("CancelOperation: no answer within {CANCEL_DEADLINE:?}"),
        }
    }

    /// `name` receives the operation's name as soon as the server gives it.
    async fn execute_async(
        &self,
        action: &RemoteAction<'_>,
        name: &std::sync::Mutex<String>,
    ) -> Result<Executed> {
        let protos = with_platform(action.key, &action.platform)?;
        let mut blobs: HashMap<Digest, Vec<u8>> = HashMap::new();
        blobs.insert(protos.action.clone(), protos.action_bytes.clone());
        blobs.insert(protos.command.clone(), protos.command_bytes.clone());
        for (d, b) in &action.key.directories {
            blobs.insert(d.clone(), b.clone());
        }
        let files = input_files(action.key)?;
        // Only the inputs the server lacks are read (and checked against
        // their digests), with the protos: a module imported by hundreds
        // of jobs is on the server after the first.
        let mut asked: Vec<&Digest> = blobs.keys().collect();
        asked.extend(files.iter().map(|(d, _)| d));
        let missing = self.cas.find_missing(asked).await?;
        let lacked: std::collections::HashSet<&Digest> = missing.iter().collect();
        let mut all: HashMap<Digest, &[u8]> =
            blobs.iter().map(|(d, b)| (d.clone(), &b[..])).collect();
        let mut contents: HashMap<Digest, Vec<u8>> = HashMap::new();
        for (d, path) in &files {
            if contents.contains_key(d) || !lacked.contains(d) {
                continue;
            }
            let local = action.local_root.join(path);
            let data = std::fs::read(&local)
                .with_context(|| format!("{}: cannot read (an input)", local.display()))?;
            if !d.matches(&data) {
                bail!(
                    "{}: changed since its digest was taken (want {d})",
                    local.display()
                );
            }
            contents.insert(d.clone(), data);
        }
        for (d, data) in &contents {
            all.insert(d.clone(), data);
        }
        let uploaded = self.cas.upload(&missing, &all).await?;

        let req = re::ExecuteRequest {
            instance_name: self.cas.instance.clone(),
            action_digest: Some(protos.action.to_proto()),
            skip_cache_lookup: false,
            digest_function: re::digest_function::Value::Sha256 as i32,
            ..Default::default()
        };
        let response = self.run_operation(req, name, &action.platform).await?;
        if let Some(s) = response.status.as_ref().filter(|s| s.code != 0) {
            let code = Code::from(s.code);
            if ActionRefused::of(code) {
                let mut message = printable(&s.message).into_owned();
                if !response.message.is_empty() {
                    message.push_str(&format!(" ({})", printable(&response.message)));
                }
                return Err(ActionRefused { code, message }.into());
            }
            bail!(
                "the server could not execute action {}: {:?}: {}{}",
                protos.action,
                Code::from(s.code),
                printable(&s.message),
                if response.message.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", printable(&response.message))
                }
            );
        }
        let result = response
            .result
            .with_context(|| format!("action {}: the response has no result", protos.action))?;
        let hit = self
            .cas
            .result_blobs(&result)
            .await?
            .with_context(|| {
                format!(
                    "action {}: an output of the result is missing from the CAS or does not match its digest",
                    protos.action
                )
            })?;
        Ok(Executed {
            exit_code: result.exit_code,
            outputs: hit.outputs,
            stdout: hit.stdout,
            stderr: hit.stderr,
            cached: response.cached_result,
            worker: result
                .execution_metadata
                .map(|m| m.worker)
                .unwrap_or_default(),
            action: protos.action,
            uploaded,
        })
    }

    /// Execute, then WaitExecution while the stream breaks before the
    /// operation is done. The operation's name goes to `known` as soon as
    /// the server gives it.
    /// `platform`: the action's, for the queued notice.
    async fn run_operation(
        &self,
        req: re::ExecuteRequest,
        known: &std::sync::Mutex<String>,
        platform: &[(String, String)],
    ) -> Result<re::ExecuteResponse> {
        let mut exec = self.exec.clone();
        let mut name = String::new();
        let mut last_error = None;
        let mut waiting = Waiting::new(self);
        for attempt in 0..=MAX_RESUMES {
            let stream = if attempt == 0 {
                crate::reapi::calls::count(crate::reapi::calls::Call::Execute);
                exec.execute(req.clone()).await
            } else {
                if name.is_empty() {
                    // Never got the operation's name: nothing to resume.
                    break;
                }
                // A short pause, so a restarting server is not hammered.
                tokio::time::sleep(Duration::from_millis(100)).await;
                crate::reapi::calls::count(crate::reapi::calls::Call::WaitExecution);
                exec.wait_execution(re::WaitExecutionRequest { name: name.clone() })
                    .await
            };
            let mut stream = match stream {
                Ok(s) => s.into_inner(),
                Err(s) if resumable(&s) => {
                    last_error = Some(s);
                    continue;
                }
                Err(s) => return Err(status_error(s, "Execute")),
            };
            loop {
                let Ok(message) = tokio::time::timeout(QUEUED_CHECK, stream.message()).await else {
                    self.queued_notice(platform);
                    continue;
                };
                match message {
                    Ok(Some(op)) => {
                        if started(&op) {
                            waiting.started();
                        }
                        if !op.name.is_empty() && op.name != name {
                            name = op.name.clone();
                            known.lock().unwrap().clone_from(&name);
                        }
                        if op.done {
                            return done(op);
                        }
                    }
                    // The stream ended before the operation was done.
                    Ok(None) => break,
                    Err(s) if resumable(&s) => {
                        last_error = Some(s);
                        break;
                    }
                    Err(s) => return Err(status_error(s, "Execute")),
                }
            }
        }
        match last_error {
            Some(s) => Err(status_error(s, "Execute")),
            None => bail!(
                "the operation stream ended before the operation {:?} was done",
                printable(&name)
            ),
        }
    }
}

/// What [`Executor::queued_notice`] says.
fn queued_notice_text(
    url: &str,
    waiting: usize,
    quiet: Duration,
    platform: &[(String, String)],
) -> String {
    let wanted: Vec<String> = platform
        .iter()
        .map(|(k, v)| format!("{k}={}", printable(v)))
        .collect();
    format!(
        "thinlto-backend: {url}: {waiting} execution(s) queued and none started for {} s: \
         is a worker connected whose platform matches {}? (A worker prints its own when it \
         starts; BuildGrid keeps an action no worker matches queued, without a word.) \
         Waiting on.",
        quiet.as_secs(),
        wanted.join(" ")
    )
}

/// Whether the operation's metadata says a worker has it (or had it).
fn started(op: &Operation) -> bool {
    op.done
        || op
            .metadata
            .as_ref()
            .and_then(|m| re::ExecuteOperationMetadata::decode(m.value.as_slice()).ok())
            .is_some_and(|m| m.stage >= re::execution_stage::Value::Executing as i32)
}

/// One execution counted in [`Executor::waiting`] until it starts or
/// ends, whichever way (an error, a cancel).
struct Waiting<'a> {
    exec: &'a Executor,
    counted: bool,
}

impl<'a> Waiting<'a> {
    fn new(exec: &'a Executor) -> Waiting<'a> {
        if exec.waiting.fetch_add(1, Ordering::Relaxed) == 0 {
            *exec.progress.lock().unwrap() = Instant::now();
        }
        Waiting {
            exec,
            counted: true,
        }
    }

    fn started(&mut self) {
        if std::mem::take(&mut self.counted) {
            self.exec.waiting.fetch_sub(1, Ordering::Relaxed);
            *self.exec.progress.lock().unwrap() = Instant::now();
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.started();
    }
}

/// Errors after which the operation may still be running: its stream is
/// resumed.
fn resumable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
    )
}

/// The ExecuteResponse of a finished operation.
fn done(op: Operation) -> Result<re::ExecuteResponse> {
    match op.result {
        Some(operation::Result::Response(any)) => re::ExecuteResponse::decode(any.value.as_slice())
            .with_context(|| {
                format!(
                    "operation {}: a malformed ExecuteResponse",
                    printable(&op.name)
                )
            }),
        Some(operation::Result::Error(s)) => bail!(
            "operation {} failed: {:?}: {}",
            printable(&op.name),
            Code::from(s.code),
            printable(&s.message)
        ),
        None => bail!("operation {} is done without a result", printable(&op.name)),
    }
}

/// The Action and Command of a key with platform properties added.
pub struct PlatformProtos {
    pub action: Digest,
    pub action_bytes: Vec<u8>,
    pub command: Digest,
    pub command_bytes: Vec<u8>,
}

/// `key`'s Command and Action with `platform` in both (sorted by name,
/// then value, as REAPI asks). No properties: the key's own protos.
pub fn with_platform(key: &ActionKey, platform: &[(String, String)]) -> Result<PlatformProtos> {
    let mut props: Vec<re::platform::Property> = platform
        .iter()
        .map(|(name, value)| re::platform::Property {
            name: name.clone(),
            value: value.clone(),
        })
        .collect();
    props.sort_by(|a, b| (&a.name, &a.value).cmp(&(&b.name, &b.value)));
    let platform = (!props.is_empty()).then_some(re::Platform { properties: props });
    let mut command = re::Command::decode(key.command_bytes.as_slice())?;
    // Deprecated in v2.2, but what BuildGrid 0.4.4 matches workers on.
    #[allow(deprecated)]
    {
        command.platform = platform.clone();
    }
    let command_bytes = command.encode_to_vec();
    let command_digest = Digest::of_bytes(&command_bytes);
    let mut a = re::Action::decode(key.action_bytes.as_slice())?;
    a.command_digest = Some(command_digest.to_proto());
    a.platform = platform;
    let action_bytes = a.encode_to_vec();
    Ok(PlatformProtos {
        action: Digest::of_bytes(&action_bytes),
        action_bytes,
        command: command_digest,
        command_bytes,
    })
}

/// Every input file of the key's input root: digest and path.
fn input_files(key: &ActionKey) -> Result<Vec<(Digest, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![(key.input_root().clone(), PathBuf::new())];
    while let Some((d, at)) = stack.pop() {
        let dir = re::Directory::decode(
            key.directories
                .get(&d)
                .with_context(|| format!("directory {d} is not in the key"))?
                .as_slice(),
        )?;
        for f in &dir.files {
            let fd = f
                .digest
                .as_ref()
                .and_then(Digest::from_proto)
                .context("a file without a digest")?;
            out.push((fd, at.join(&f.name)));
        }
        for sub in &dir.directories {
            let sd = sub
                .digest
                .as_ref()
                .and_then(Digest::from_proto)
                .context("a directory without a digest")?;
            stack.push((sd, at.join(&sub.name)));
        }
    }
    Ok(out)
}
