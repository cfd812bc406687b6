//! `reapi` (the REAPI client) against an in-process fake REAPI server that does what
//! a real one (BuildGrid, in tests/tests/remote_cache.rs) never does on
//! purpose: serves bytes that are not the requested digest's, truncated or
//! overlong ByteStream reads, capabilities without SHA-256. It also records
//! the metadata of every call, to show the `--remote-header`s reach each
//! RPC.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream;
use re::action_cache_server::{ActionCache, ActionCacheServer};
use re::capabilities_server::{Capabilities, CapabilitiesServer};
use re::content_addressable_storage_server::{
    ContentAddressableStorage, ContentAddressableStorageServer,
};
use thinlto_backend::reapi::{ActionSpec, Digest, InputFile, RemoteCache, RemoteOptions};
use tonic::codegen::tokio_stream;
use tonic::{Request, Response, Status, Streaming};

/// What the fake serves, and what it saw.
#[derive(Default)]
struct State {
    /// The answer of every GetActionResult (None: NOT_FOUND).
    result: Option<re::ActionResult>,
    /// Blob bytes by hash, served as they are, whatever the digest says.
    blobs: HashMap<String, Vec<u8>>,
    /// Every call: the RPC and its `authorization` metadata.
    calls: Vec<(&'static str, Option<String>)>,
    /// The instance names and ByteStream resource names of the calls.
    names: BTreeSet<String>,
    max_batch: i64,
    digest_functions: Vec<i32>,
    /// The ActionResult every Execute answers (None: Execute is
    /// UNIMPLEMENTED), and whether it says it came from the action cache.
    executed: Option<re::ActionResult>,
    executed_cached: bool,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<State>>);

impl Fake {
    fn saw<T>(&self, rpc: &'static str, req: &Request<T>) {
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        self.0.lock().unwrap().calls.push((rpc, auth));
    }

    fn named(&self, name: &str) {
        self.0.lock().unwrap().names.insert(name.to_string());
    }

    fn blob(&self, hash: &str) -> Option<Vec<u8>> {
        self.0.lock().unwrap().blobs.get(hash).cloned()
    }
}

fn unimplemented<T>() -> Result<T, Status> {
    Err(Status::unimplemented("not in the fake"))
}

type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Capabilities for Fake {
    async fn get_capabilities(
        &self,
        req: Request<re::GetCapabilitiesRequest>,
    ) -> Result<Response<re::ServerCapabilities>, Status> {
        self.saw("GetCapabilities", &req);
        self.named(&req.get_ref().instance_name);
        let s = self.0.lock().unwrap();
        Ok(Response::new(re::ServerCapabilities {
            cache_capabilities: Some(re::CacheCapabilities {
                digest_functions: s.digest_functions.clone(),
                max_batch_total_size_bytes: s.max_batch,
                action_cache_update_capabilities: Some(re::ActionCacheUpdateCapabilities {
                    update_enabled: true,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl ActionCache for Fake {
    async fn get_action_result(
        &self,
        req: Request<re::GetActionResultRequest>,
    ) -> Result<Response<re::ActionResult>, Status> {
        self.saw("GetActionResult", &req);
        self.named(&req.get_ref().instance_name);
        let r = self.0.lock().unwrap().result.clone();
        r.map(Response::new)
            .ok_or_else(|| Status::not_found("no such action"))
    }

    async fn update_action_result(
        &self,
        req: Request<re::UpdateActionResultRequest>,
    ) -> Result<Response<re::ActionResult>, Status> {
        self.saw("UpdateActionResult", &req);
        self.named(&req.get_ref().instance_name);
        let r = req.into_inner().action_result.unwrap_or_default();
        self.0.lock().unwrap().result = Some(r.clone());
        Ok(Response::new(r))
    }
}

#[tonic::async_trait]
impl ContentAddressableStorage for Fake {
    async fn find_missing_blobs(
        &self,
        req: Request<re::FindMissingBlobsRequest>,
    ) -> Result<Response<re::FindMissingBlobsResponse>, Status> {
        self.saw("FindMissingBlobs", &req);
        self.named(&req.get_ref().instance_name);
        let missing = req
            .into_inner()
            .blob_digests
            .into_iter()
            .filter(|d| self.blob(&d.hash).is_none())
            .collect();
        Ok(Response::new(re::FindMissingBlobsResponse {
            missing_blob_digests: missing,
        }))
    }

    async fn batch_update_blobs(
        &self,
        req: Request<re::BatchUpdateBlobsRequest>,
    ) -> Result<Response<re::BatchUpdateBlobsResponse>, Status> {
        self.saw("BatchUpdateBlobs", &req);
        self.named(&req.get_ref().instance_name);
        let mut responses = Vec::new();
        for r in req.into_inner().requests {
            let d = r.digest.unwrap_or_default();
            self.0.lock().unwrap().blobs.insert(d.hash.clone(), r.data);
            responses.push(re::batch_update_blobs_response::Response {
                digest: Some(d),
                status: None,
            });
        }
        Ok(Response::new(re::BatchUpdateBlobsResponse { responses }))
    }

    async fn batch_read_blobs(
        &self,
        req: Request<re::BatchReadBlobsRequest>,
    ) -> Result<Response<re::BatchReadBlobsResponse>, Status> {
        self.saw("BatchReadBlobs", &req);
        self.named(&req.get_ref().instance_name);
        let responses = req
            .into_inner()
            .digests
            .into_iter()
            .map(|d| {
                let blob = self.blob(&d.hash);
                re::batch_read_blobs_response::Response {
                    status: blob
                        .is_none()
                        .then(|| bazel_remote_apis::google::rpc::Status {
                            code: tonic::Code::NotFound as i32,
                            ..Default::default()
                        }),
                    data: blob.unwrap_or_default(),
                    digest: Some(d),
                    compressor: 0,
                }
            })
            .collect();
        Ok(Response::new(re::BatchReadBlobsResponse { responses }))
    }

    type GetTreeStream = BoxStream<re::GetTreeResponse>;
    async fn get_tree(
        &self,
        _: Request<re::GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        unimplemented()
    }

    async fn split_blob(
        &self,
        _: Request<re::SplitBlobRequest>,
    ) -> Result<Response<re::SplitBlobResponse>, Status> {
        unimplemented()
    }

    type GetChunkMappingStream = BoxStream<re::GetChunkMappingResponse>;
    async fn get_chunk_mapping(
        &self,
        _: Request<re::GetChunkMappingRequest>,
    ) -> Result<Response<Self::GetChunkMappingStream>, Status> {
        unimplemented()
    }

    async fn splice_blob(
        &self,
        _: Request<re::SpliceBlobRequest>,
    ) -> Result<Response<re::SpliceBlobResponse>, Status> {
        unimplemented()
    }

    async fn register_chunk_mapping(
        &self,
        _: Request<Streaming<re::RegisterChunkMappingRequest>>,
    ) -> Result<Response<re::RegisterChunkMappingResponse>, Status> {
        unimplemented()
    }
}

#[tonic::async_trait]
impl re::execution_server::Execution for Fake {
    type ExecuteStream = BoxStream<bazel_remote_apis::google::longrunning::Operation>;
    /// One Operation, done, with the ExecuteResponse of `executed`.
    async fn execute(
        &self,
        req: Request<re::ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        use prost::Message;
        self.saw("Execute", &req);
        let (result, cached) = {
            let s = self.0.lock().unwrap();
            (s.executed.clone(), s.executed_cached)
        };
        let result = result.ok_or_else(|| Status::unimplemented("not in the fake"))?;
        let response = re::ExecuteResponse {
            result: Some(result),
            cached_result: cached,
            ..Default::default()
        };
        let op = bazel_remote_apis::google::longrunning::Operation {
            name: "fake-operation".into(),
            done: true,
            result: Some(
                bazel_remote_apis::google::longrunning::operation::Result::Response(
                    bazel_remote_apis::google::protobuf::Any {
                        type_url:
                            "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse"
                                .into(),
                        value: response.encode_to_vec(),
                    },
                ),
            ),
            ..Default::default()
        };
        Ok(Response::new(Box::pin(tokio_stream::iter([Ok(op)]))))
    }

    type WaitExecutionStream = BoxStream<bazel_remote_apis::google::longrunning::Operation>;
    async fn wait_execution(
        &self,
        _: Request<re::WaitExecutionRequest>,
    ) -> Result<Response<Self::WaitExecutionStream>, Status> {
        unimplemented()
    }
}

/// The hash of a `…/blobs/HASH/SIZE` resource name.
fn resource_hash(name: &str) -> String {
    let parts: Vec<&str> = name.split('/').collect();
    let i = parts
        .iter()
        .rposition(|p| *p == "blobs")
        .expect("a blobs/ resource");
    parts[i + 1].to_string()
}

#[tonic::async_trait]
impl bytestream::byte_stream_server::ByteStream for Fake {
    type ReadStream = BoxStream<bytestream::ReadResponse>;
    async fn read(
        &self,
        req: Request<bytestream::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        self.saw("ByteStream.Read", &req);
        self.named(&req.get_ref().resource_name);
        let data = self
            .blob(&resource_hash(&req.get_ref().resource_name))
            .ok_or_else(|| Status::not_found("no such blob"))?;
        let chunks: Vec<Result<bytestream::ReadResponse, Status>> = data
            .chunks(100_000)
            .map(|c| Ok(bytestream::ReadResponse { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn write(
        &self,
        req: Request<Streaming<bytestream::WriteRequest>>,
    ) -> Result<Response<bytestream::WriteResponse>, Status> {
        self.saw("ByteStream.Write", &req);
        let mut stream = req.into_inner();
        let (mut name, mut data) = (String::new(), Vec::new());
        while let Some(w) = stream.message().await? {
            if name.is_empty() {
                name = w.resource_name;
                self.named(&name);
            }
            assert_eq!(w.write_offset as usize, data.len(), "writes are in order");
            data.extend_from_slice(&w.data);
            if w.finish_write {
                break;
            }
        }
        let committed_size = data.len() as i64;
        self.0
            .lock()
            .unwrap()
            .blobs
            .insert(resource_hash(&name), data);
        Ok(Response::new(bytestream::WriteResponse { committed_size }))
    }

    async fn query_write_status(
        &self,
        _: Request<bytestream::QueryWriteStatusRequest>,
    ) -> Result<Response<bytestream::QueryWriteStatusResponse>, Status> {
        unimplemented()
    }
}

/// The fake, serving on a localhost port from its own runtime.
struct Server {
    fake: Fake,
    url: String,
    _rt: tokio::runtime::Runtime,
}

fn serve(max_batch: i64, digest_functions: Vec<i32>) -> Server {
    serve_with(max_batch, digest_functions, None)
}

/// [`serve`], over TLS with `tls`'s identity when given (then the URL is
/// `grpcs://localhost:PORT`).
fn serve_with(
    max_batch: i64,
    digest_functions: Vec<i32>,
    tls: Option<tonic::transport::Identity>,
) -> Server {
    let fake = Fake::default();
    {
        let mut s = fake.0.lock().unwrap();
        s.max_batch = max_batch;
        s.digest_functions = digest_functions;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let incoming = rt
        .block_on(async {
            tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
        })
        .expect("bind 127.0.0.1:0");
    let port = incoming.local_addr().unwrap().port();
    let mut builder = tonic::transport::Server::builder();
    let url = match tls {
        Some(id) => {
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(id))
                .expect("server TLS config");
            format!("grpcs://localhost:{port}")
        }
        None => format!("grpc://127.0.0.1:{port}"),
    };
    let router = builder
        .add_service(CapabilitiesServer::new(fake.clone()))
        .add_service(ActionCacheServer::new(fake.clone()))
        .add_service(ContentAddressableStorageServer::new(fake.clone()))
        .add_service(re::execution_server::ExecutionServer::new(fake.clone()))
        .add_service(bytestream::byte_stream_server::ByteStreamServer::new(
            fake.clone(),
        ));
    rt.spawn(router.serve_with_incoming(incoming));
    Server { fake, url, _rt: rt }
}

const SHA256: i32 = re::digest_function::Value::Sha256 as i32;
/// The fake's batch limit: small, so a few kB already go through ByteStream.
const MAX_BATCH: i64 = 4096;

fn spec() -> ActionSpec {
    ActionSpec {
        argv: vec!["clang".into(), "-c".into(), "a.bc".into()],
        env: vec![],
        output_paths: vec!["a.o".into()],
        inputs: vec![InputFile {
            path: "a.bc".into(),
            digest: Digest::of_bytes(b"a"),
            executable: false,
        }],
        salt: b"fake".to_vec(),
    }
}

fn connect(server: &Server, headers: &[(&str, &str)]) -> RemoteCache {
    connect_to(server, "", headers)
}

fn connect_to(server: &Server, instance: &str, headers: &[(&str, &str)]) -> RemoteCache {
    RemoteCache::connect(&RemoteOptions {
        url: server.url.clone(),
        instance: instance.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("connect: {e:#}"))
}

#[test]
fn headers_and_the_instance_reach_every_call() {
    let server = serve(MAX_BATCH, vec![SHA256]);
    let cache = connect_to(&server, "ci/main", &[("Authorization", "Bearer secret")]);
    assert!(cache.batch_limit() < 4096);
    let key = spec().key().unwrap();
    // A small output (batched) and a large stderr (ByteStream).
    let stderr: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    cache
        .store(&key, &[("a.o".into(), b"object".to_vec())], b"", &stderr)
        .unwrap();
    let hit = cache.lookup(&key).unwrap().expect("a hit");
    assert_eq!(hit.outputs["a.o"], b"object");
    assert_eq!(hit.stderr, stderr);

    let calls = server.fake.0.lock().unwrap().calls.clone();
    let rpcs: BTreeSet<&str> = calls.iter().map(|(r, _)| *r).collect();
    let want: BTreeSet<&str> = [
        "GetCapabilities",
        "FindMissingBlobs",
        "BatchUpdateBlobs",
        "ByteStream.Write",
        "UpdateActionResult",
        "GetActionResult",
        "BatchReadBlobs",
        "ByteStream.Read",
    ]
    .into();
    assert_eq!(rpcs, want);
    for (rpc, auth) in &calls {
        assert_eq!(auth.as_deref(), Some("Bearer secret"), "{rpc}");
    }
    // Every request names the instance: the instance_name fields, and the
    // ByteStream resources start with it.
    let d = Digest::of_bytes(&stderr);
    let names = server.fake.0.lock().unwrap().names.clone();
    let mut names = names.into_iter();
    assert_eq!(names.next().as_deref(), Some("ci/main"));
    let rest: Vec<String> = names.collect();
    assert_eq!(rest.len(), 2, "{rest:?}");
    assert_eq!(
        rest[0],
        format!("ci/main/blobs/{}/{}", d.hash, d.size_bytes)
    );
    let upload = rest[1]
        .strip_prefix("ci/main/uploads/")
        .and_then(|r| r.split_once('/'))
        .map(|(_, tail)| tail);
    assert_eq!(
        upload,
        Some(format!("blobs/{}/{}", d.hash, d.size_bytes).as_str()),
        "{rest:?}"
    );
}

/// Serves an ActionResult whose one output is `claimed`, with `served` as
/// the bytes behind its hash; returns what lookup made of it.
fn lookup_with(claimed: &[u8], served: &[u8]) -> Option<Vec<u8>> {
    let server = serve(MAX_BATCH, vec![SHA256]);
    let d = Digest::of_bytes(claimed);
    {
        let mut s = server.fake.0.lock().unwrap();
        s.blobs.insert(d.hash.clone(), served.to_vec());
        s.result = Some(re::ActionResult {
            output_files: vec![re::OutputFile {
                path: "a.o".into(),
                digest: Some(re::Digest {
                    hash: d.hash,
                    size_bytes: d.size_bytes,
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    let cache = connect(&server, &[]);
    let hit = cache
        .lookup(&spec().key().unwrap())
        .unwrap_or_else(|e| panic!("lookup failed instead of missing: {e:#}"));
    hit.map(|h| h.outputs["a.o"].clone())
}

#[test]
fn forged_or_truncated_blobs_are_misses() {
    let small = b"the genuine object".to_vec();
    let large: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    for (what, genuine) in [("batched", &small), ("ByteStream", &large)] {
        // The control: the genuine bytes are a hit.
        assert_eq!(
            lookup_with(genuine, genuine).as_ref(),
            Some(genuine),
            "{what}"
        );
        let mut forged = genuine.clone();
        forged[3] ^= 1;
        assert_eq!(
            lookup_with(genuine, &forged),
            None,
            "{what}: same size, other bytes"
        );
        let truncated = &genuine[..genuine.len() - 1];
        assert_eq!(lookup_with(genuine, truncated), None, "{what}: truncated");
        let mut longer = genuine.clone();
        longer.push(0);
        assert_eq!(lookup_with(genuine, &longer), None, "{what}: overlong");
    }
}

#[test]
fn a_server_without_sha256_is_refused_by_name() {
    let sha1 = re::digest_function::Value::Sha1 as i32;
    let server = serve(MAX_BATCH, vec![sha1]);
    let e = match RemoteCache::connect(&RemoteOptions {
        url: server.url.clone(),
        ..Default::default()
    }) {
        Ok(_) => panic!("a SHA-1-only server was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("SHA-256") && e.contains(&server.url), "{e}");
}

#[test]
fn server_errors_are_errors_not_misses() {
    let server = serve(MAX_BATCH, vec![SHA256]);
    let cache = connect(&server, &[]);
    let key = spec().key().unwrap();
    assert_eq!(cache.lookup(&key).unwrap(), None, "NOT_FOUND is a miss");
    // A server gone away is an error the caller reports, not a miss it
    // would silently recompile around.
    drop(server);
    let e = cache.lookup(&key).unwrap_err();
    assert!(format!("{e:#}").contains("GetActionResult"), "{e:#}");
}

/// The TLS fixtures (tests/fixtures/tls): a test CA and a certificate it
/// signed for localhost and 127.0.0.1, valid for a century, made with
/// openssl (`req -x509 … CA:TRUE`, then `x509 -req … -extfile` with
/// `subjectAltName=DNS:localhost,IP:127.0.0.1`,
/// `extendedKeyUsage=serverAuth`). The CA's key was discarded.
fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

#[test]
fn grpcs_with_a_private_ca() {
    let id = tonic::transport::Identity::from_pem(
        std::fs::read(fixture("server.pem")).unwrap(),
        std::fs::read(fixture("server.key")).unwrap(),
    );
    let server = serve_with(MAX_BATCH, vec![SHA256], Some(id));
    let opts = |tls_ca: Option<std::path::PathBuf>| RemoteOptions {
        url: server.url.clone(),
        tls_ca,
        ..Default::default()
    };
    let cache = RemoteCache::connect(&opts(Some(fixture("ca.pem"))))
        .unwrap_or_else(|e| panic!("grpcs:// with the test CA: {e:#}"));
    let key = spec().key().unwrap();
    cache
        .store(&key, &[("a.o".into(), b"over TLS".to_vec())], b"", b"")
        .unwrap();
    let hit = cache.lookup(&key).unwrap().expect("a hit");
    assert_eq!(hit.outputs["a.o"], b"over TLS");

    // The system roots alone do not know the test CA.
    let e = match RemoteCache::connect(&opts(None)) {
        Ok(_) => panic!("a certificate of an unknown CA was accepted"),
        Err(e) => format!("{e:#}"),
    };
    eprintln!("without the CA: {e}");
    assert!(e.contains(&server.url), "{e}");
    // And a CA file that is not there is named.
    let e = match RemoteCache::connect(&opts(Some(fixture("missing.pem")))) {
        Ok(_) => panic!("a missing CA file was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("missing.pem"), "{e}");
}

#[test]
fn a_failed_action_is_a_miss() {
    // BuildGrid's cache-failed-actions: false never serves one; a server
    // that does must not make a failed compile's outputs a hit.
    let server = serve(MAX_BATCH, vec![SHA256]);
    let d = Digest::of_bytes(b"obj");
    {
        let mut s = server.fake.0.lock().unwrap();
        s.blobs.insert(d.hash.clone(), b"obj".to_vec());
        s.result = Some(re::ActionResult {
            output_files: vec![re::OutputFile {
                path: "a.o".into(),
                digest: Some(re::Digest {
                    hash: d.hash.clone(),
                    size_bytes: d.size_bytes,
                }),
                ..Default::default()
            }],
            exit_code: 1,
            ..Default::default()
        });
    }
    let cache = connect(&server, &[]);
    let key = spec().key().unwrap();
    assert_eq!(cache.lookup(&key).unwrap(), None);
    // The same entry with exit code 0 is a hit: the exit code decided.
    server
        .fake
        .0
        .lock()
        .unwrap()
        .result
        .as_mut()
        .unwrap()
        .exit_code = 0;
    assert!(cache.lookup(&key).unwrap().is_some());
}

/// The fake serves, for every action, a manifest listing one variant whose
/// extra files are `extras` (path, SHA-256, size), with `native` as the
/// newest variant's output; returns what the backend cache's lookup made
/// of it. The job is made of files of this crate (the tests run in its
/// directory): only their digests matter, nothing compiles.
fn backend_lookup(extras: &[(String, String, i64)], native_size: Option<i64>) -> Option<Vec<u8>> {
    backend_lookup_of(extras, native_size, b"native bytes")
}

/// [`backend_lookup`] with `native` as the newest variant's native.
fn backend_lookup_of(
    extras: &[(String, String, i64)],
    native_size: Option<i64>,
    native: &[u8],
) -> Option<Vec<u8>> {
    use thinlto_backend::cache::{BackendCache, CacheOptions};
    use thinlto_backend::{BackendJob, JobInput};
    let server = serve(MAX_BATCH, vec![SHA256]);
    let native_path = "fake.thinlto-native.o";
    let manifest = serde_json::to_vec(&serde_json::json!({ "variants": [extras] })).unwrap();
    let native = native.to_vec();
    {
        let mut s = server.fake.0.lock().unwrap();
        let mut output_files = Vec::new();
        for (path, data) in [("thinlto-dist.manifest", &manifest), (native_path, &native)] {
            let d = Digest::of_bytes(data);
            s.blobs.insert(d.hash.clone(), data.clone());
            output_files.push(re::OutputFile {
                path: path.into(),
                digest: Some(re::Digest {
                    hash: d.hash,
                    size_bytes: d.size_bytes,
                }),
                ..Default::default()
            });
        }
        if let Some(n) = native_size {
            output_files[1].digest.as_mut().unwrap().size_bytes = n;
        }
        s.result = Some(re::ActionResult {
            output_files,
            ..Default::default()
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = BackendCache::open(
        &CacheOptions {
            dir: dir.path().to_path_buf(),
            sharing: thinlto_backend::cache::local::Sharing::Private,
            max_size: 1 << 30,
            remote: Some(RemoteOptions {
                url: server.url.clone(),
                ..Default::default()
            }),
        },
        &["true".to_string()],
    )
    .unwrap_or_else(|e| panic!("open: {e:#}"));
    let job = BackendJob {
        input: JobInput {
            object: "Cargo.toml".into(),
            summary: "src/lib.rs".into(),
            imports: None,
        },
        native: native_path.into(),
        record_path: Some(dir.path().join("record")),
        argv: ["true", "-c", "-o", native_path, "Cargo.toml"]
            .map(String::from)
            .to_vec(),
        command_text: String::new(),
        key_argv: None,
    };
    let hit = cache.lookup(&job, &Default::default());
    cache.finish();
    hit.map(|h| h.native)
}

fn extra(path: &str, content_of: &str) -> (String, String, i64) {
    let d = Digest::of_bytes(&std::fs::read(content_of).unwrap());
    (path.to_string(), d.hash, d.size_bytes)
}

/// A hostile manifest names files for the client to open and digest: only
/// plain paths the local trace could have listed, regular files read
/// without blocking and within bounds, are; anything else is a miss.
#[test]
fn hostile_manifests_are_misses_and_never_hang() {
    // The control: a genuine extra of the tree is a hit.
    assert_eq!(
        backend_lookup(&[extra("build.rs", "build.rs")], None).as_deref(),
        Some(&b"native bytes"[..])
    );
    // Out of the tree through '..', with the right digest: not opened.
    assert_eq!(
        backend_lookup(&[extra("../Cargo.toml", "../Cargo.toml")], None),
        None
    );
    assert_eq!(
        backend_lookup(&[extra("src/../Cargo.toml", "Cargo.toml")], None),
        None
    );
    // A device that never ends, and one under /proc.
    let empty = Digest::of_bytes(b"");
    for dev in ["/dev/zero", "/proc/self/environ"] {
        assert_eq!(
            backend_lookup(&[(dev.into(), empty.hash.clone(), 0)], None),
            None,
            "{dev}"
        );
    }
    // A FIFO nobody writes (opening it to read used to block forever).
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert_eq!(
        backend_lookup(
            &[(fifo.to_str().unwrap().into(), empty.hash.clone(), 0)],
            None
        ),
        None
    );
    // An absolute file every user may read (a packaged one) is a hit; a
    // private one, even with the right digest, is never opened on a
    // server's word (the digest would answer a question about its bytes).
    let public = "/usr/lib/os-release";
    let public_extra = extra(
        public,
        &std::fs::canonicalize(public).unwrap().to_string_lossy(),
    );
    assert_eq!(
        backend_lookup(&[public_extra], None).as_deref(),
        Some(&b"native bytes"[..])
    );
    // A key in a private directory (as in a home directory: 0700).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let private = d.path().join("id_key");
    std::fs::write(&private, "secret\n").unwrap();
    let private = private.to_str().unwrap();
    assert_eq!(backend_lookup(&[extra(private, private)], None), None);
    // Absurd sizes: an extra's, an output's.
    let mut huge = extra("build.rs", "build.rs");
    huge.2 = 1 << 62;
    assert_eq!(backend_lookup(&[huge], None), None);
    assert_eq!(
        backend_lookup(&[extra("build.rs", "build.rs")], Some(1 << 62)),
        None
    );
    // Nothing empty is a hit: an entry whose native is the empty blob.
    assert_eq!(
        backend_lookup_of(&[extra("build.rs", "build.rs")], None, b""),
        None
    );
}

/// A one-object tree for the binary: a real ThinLTO object (clang), its
/// shard (ld.lld --thinlto-index-only), kbuild's `.cmd` file, the index,
/// and `cc`, a compiler wrapper that keeps the environment the compile got
/// in `cc.env`. Returns the tree.
fn one_object_tree() -> tempfile::TempDir {
    let tc = thinlto_index::Toolchain::resolve(&Default::default()).expect("a toolchain");
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.current_dir(d).output().unwrap();
        assert!(out.status.success(), "{cmd:?}: {out:?}");
    };
    std::fs::write(d.join("a.c"), "int f(void) { return 1; }\n").unwrap();
    run(std::process::Command::new(&tc.cc.path).args([
        "-flto=thin",
        "-O2",
        "-c",
        "-o",
        "a.o",
        "a.c",
    ]));
    run(std::process::Command::new(&tc.ld.path).args([
        "-shared",
        "--thinlto-index-only",
        "a.o",
        "-o",
        "a.so",
    ]));
    std::fs::write(
        d.join(".a.o.cmd"),
        "savedcmd_a.o := ./cc -flto=thin -O2 -c -o a.o a.c\n",
    )
    .unwrap();
    std::fs::write(d.join("index"), "a.o\n").unwrap();
    std::fs::write(
        d.join("cc"),
        format!(
            "#!/bin/sh\nenv > cc.env\nexec {} \"$@\"\n",
            tc.cc.path.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("cc"), std::fs::Permissions::from_mode(0o755)).unwrap();
    t
}

/// The `authorization` values of every call the fake saw since the last
/// look (there is at least one: GetCapabilities).
fn seen_auth(server: &Server) -> BTreeSet<Option<String>> {
    let calls = std::mem::take(&mut server.fake.0.lock().unwrap().calls);
    assert!(!calls.is_empty(), "no call reached the server");
    calls.into_iter().map(|(_, a)| a).collect()
}

#[test]
fn headers_from_a_file_and_the_environment_reach_the_server() {
    let server = serve(MAX_BATCH, vec![SHA256]);
    let t = one_object_tree();
    std::fs::write(
        t.path().join("headers"),
        "# the CI's token\nauthorization: Bearer from-file\n\nx-team=kernel\n",
    )
    .unwrap();
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_thinlto-backend"))
            .current_dir(t.path())
            .args(["-B", "--index", "index", "--cache-dir", "cache"])
            .args(["--remote-cache", &server.url])
            .args(args)
            // The wrapper, whatever LLVM= the suite runs under (it beats CC).
            .env("CC", "./cc")
            .env_remove("LLVM")
            .env_remove("THINLTO_REMOTE_HEADERS")
            .env_remove("THINLTO_REMOTE_HEADER_FILE")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let one = |v: &str| BTreeSet::from([Some(v.to_string())]);

    // From the file (by flag, then by its variable): on every call, and
    // said to go in the clear.
    let (ok, err) = run(&[], &["--explain", "--remote-header-file", "headers"]);
    assert!(ok, "{err}");
    assert_eq!(seen_auth(&server), one("Bearer from-file"));
    assert!(
        err.contains("the header authorization goes to grpc://127.0.0.1:")
            && err.contains("over plaintext gRPC"),
        "{err}"
    );
    let (ok, err) = run(&[("THINLTO_REMOTE_HEADER_FILE", "headers")], &["--explain"]);
    assert!(ok, "{err}");
    assert_eq!(seen_auth(&server), one("Bearer from-file"));

    // From the environment, through a whole run: on every call, and not
    // in the compiler's environment.
    let (ok, err) = run(
        &[("THINLTO_REMOTE_HEADERS", "authorization: Bearer from-env\n")],
        &[],
    );
    assert!(ok, "{err}");
    assert_eq!(seen_auth(&server), one("Bearer from-env"));
    let cc_env = std::fs::read_to_string(t.path().join("cc.env")).expect("the compile ran");
    assert!(!cc_env.contains("from-env"), "{cc_env}");

    // The flag wins over the file, the file over the environment.
    let env = [("THINLTO_REMOTE_HEADERS", "authorization: Bearer from-env")];
    let (ok, err) = run(&env, &["--explain", "--remote-header-file", "headers"]);
    assert!(ok, "{err}");
    assert_eq!(seen_auth(&server), one("Bearer from-file"));
    let flags = [
        "--explain",
        "--remote-header-file",
        "headers",
        "--remote-header",
        "authorization=Bearer from-flag",
    ];
    let (ok, err) = run(&env, &flags);
    assert!(ok, "{err}");
    assert_eq!(seen_auth(&server), one("Bearer from-flag"));

    // A bad line: an error naming file:line, without the line (a secret).
    std::fs::write(t.path().join("headers"), "x-team: kernel\nBearer s3cret\n").unwrap();
    let (ok, err) = run(&[], &["--explain", "--remote-header-file", "headers"]);
    assert!(!ok);
    assert!(err.contains("headers:2: expected a header"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

/// A two-object tree for the binary: `a.o` calls a function of `b.o`
/// (ThinLTO imports it), thin-linked by ld.lld WITHOUT
/// `--thinlto-emit-imports-files` (as kbuild links), kbuild's `.cmd`
/// files and the index. Compiled by the toolchain's own compiler word (a
/// worker would need the same). Returns the tree.
fn two_object_tree() -> tempfile::TempDir {
    let tc = thinlto_index::Toolchain::resolve(&Default::default()).expect("a toolchain");
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.current_dir(d).output().unwrap();
        assert!(out.status.success(), "{cmd:?}: {out:?}");
    };
    std::fs::write(
        d.join("a.c"),
        "int g(int);\nint f(int x) { return g(x) + 1; }\n",
    )
    .unwrap();
    std::fs::write(d.join("b.c"), "int g(int x) { return x * 3; }\n").unwrap();
    for o in ["a", "b"] {
        run(std::process::Command::new(&tc.cc.path).args([
            "-flto=thin",
            "-O2",
            "-c",
            "-o",
            &format!("{o}.o"),
            &format!("{o}.c"),
        ]));
        std::fs::write(
            d.join(format!(".{o}.o.cmd")),
            format!(
                "savedcmd_{o}.o := {} -flto=thin -O2 -c -o {o}.o {o}.c\n",
                tc.cc.spelled
            ),
        )
        .unwrap();
    }
    run(std::process::Command::new(&tc.ld.path).args([
        "-r",
        "--thinlto-index-only",
        "a.o",
        "b.o",
        "-o",
        "ab.o",
    ]));
    assert!(!d.join("a.o.imports").exists());
    std::fs::write(d.join("index"), "a.o\nb.o\n").unwrap();
    t
}

/// `thinlto-backend -B --no-cache --index index` on `tree`, with `args`:
/// (success, stderr, stdout).
fn backend_run(tree: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let tc = thinlto_index::Toolchain::resolve(&Default::default()).expect("a toolchain");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_thinlto-backend"))
        .current_dir(tree)
        .args(["-B", "--no-cache", "--no-warm", "--index", "index"])
        .args(args)
        .env("CC", &tc.cc.spelled)
        .env_remove("LLVM")
        .env_remove("THINLTO_REMOTE_EXEC")
        .env_remove("THINLTO_REMOTE_HEADERS")
        .env_remove("THINLTO_REMOTE_HEADER_FILE")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Nothing empty is a success: a farm that answers exit 0 without the
/// native (as BuildGrid did, and then served from its action cache, when
/// clang-19 on a worker could not load an import), or an action-cache
/// hit whose native is empty, is a farm fault: every job compiles here,
/// the build succeeds with the natives of a local build, and it is said
/// once, with the worker's own output escaped (it is the server's text).
#[test]
fn a_farm_result_without_its_outputs_compiles_here() {
    let t = two_object_tree();
    let (ok, err, _) = backend_run(t.path(), &[]);
    assert!(ok, "{err}");
    let local: Vec<Vec<u8>> = ["a", "b"]
        .map(|o| std::fs::read(t.path().join(format!("{o}.thinlto-native.o"))).unwrap())
        .to_vec();
    assert!(local.iter().all(|n| !n.is_empty()));

    let server = serve(MAX_BATCH, vec![SHA256]);
    let empty = Digest::of_bytes(b"");
    let cases = [
        // Exit 0, no output at all, clang's message on stderr (with an
        // escape sequence a hostile server could send).
        (
            false,
            re::ActionResult {
                exit_code: 0,
                stderr_raw: b"Error running ThinLTO backend: Error loading imported file 'b.o': \x1b[31mNo such file or directory\n".to_vec(),
                ..Default::default()
            },
        ),
        // An action-cache hit whose native is the empty blob.
        (
            true,
            re::ActionResult {
                exit_code: 0,
                output_files: vec![re::OutputFile {
                    path: "a.thinlto-native.o".into(),
                    digest: Some(re::Digest {
                        hash: empty.hash.clone(),
                        size_bytes: 0,
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ),
    ];
    for (cached, result) in cases {
        {
            let mut s = server.fake.0.lock().unwrap();
            s.executed = Some(result);
            s.executed_cached = cached;
            s.calls.clear();
        }
        for o in ["a", "b"] {
            std::fs::remove_file(t.path().join(format!("{o}.thinlto-native.o"))).unwrap();
        }
        // One action a job (a batch's missing outputs are
        // tests/remote_batch.rs's).
        let (ok, err, out) = backend_run(
            t.path(),
            &["--remote-exec", &server.url, "--remote-batch", "1"],
        );
        let executes = server
            .fake
            .0
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|(rpc, _)| *rpc == "Execute")
            .count();
        assert_eq!(executes, 2, "both jobs went to the farm:\n{err}");
        assert!(ok, "cached={cached}: the build failed:\n{err}");
        assert_eq!(
            err.matches("a farm fault; such jobs compile here").count(),
            1,
            "cached={cached}: said once:\n{err}"
        );
        let whence = if cached {
            "from the farm's action cache"
        } else {
            "from the farm (worker"
        };
        assert!(err.contains(whence), "{err}");
        if !cached {
            assert!(
                err.contains("Error loading imported file 'b.o': \\x1b[31mNo such file"),
                "the worker's output, escaped:\n{err}"
            );
        }
        assert!(
            !err.contains('\x1b'),
            "a raw escape reached the terminal:\n{err}"
        );
        assert_eq!(out.matches("\"where\":\"local\"").count(), 2, "{out}");
        assert!(
            err.contains("0 on the farm, 2 compiled here instead"),
            "{err}"
        );
        for (o, want) in ["a", "b"].iter().zip(&local) {
            let got = std::fs::read(t.path().join(format!("{o}.thinlto-native.o"))).unwrap();
            assert!(&got == want, "{o}: not the local build's native");
        }
    }
}
