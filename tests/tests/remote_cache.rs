//! The remote tier of the backend-job cache against a real REAPI server
//! (BuildGrid): misses, round trips (batched and through ByteStream), keys
//! that differ, and entries a broken or malicious server could hand out,
//! which must be misses rather than errors or wrong bytes.
//!
//! One BuildGrid serves every scenario (it takes seconds to start): the
//! scenarios use distinct salts, so their actions never meet.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use re::action_cache_client::ActionCacheClient;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use thinlto_backend::reapi::{
    ActionKey, ActionSpec, Digest, InputFile, RemoteCache, RemoteOptions,
};
use thinlto_dist_tests::buildgrid::BuildGrid;

fn opts(bg: &BuildGrid) -> RemoteOptions {
    RemoteOptions {
        url: bg.url.clone(),
        ..Default::default()
    }
}

fn spec(salt: &str) -> ActionSpec {
    ActionSpec {
        argv: ["clang-19", "-c", "-x", "ir", "in/a.o", "-o", "out/a.o"]
            .map(String::from)
            .to_vec(),
        env: vec![("LANG".into(), "C".into())],
        output_paths: vec!["out/a.o".into(), "out/a.o.d".into()],
        inputs: vec![
            InputFile {
                path: "in/a.o".into(),
                digest: Digest::of_bytes(b"bitcode of a"),
                executable: false,
            },
            InputFile {
                path: "out/vmlinux.thinlto-index/a.o.thinlto.bc".into(),
                digest: Digest::of_bytes(b"index of a"),
                executable: false,
            },
        ],
        salt: salt.as_bytes().to_vec(),
    }
}

/// `n` bytes that never repeat a pattern a compressor or a dedup could
/// exploit (xorshift).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn outputs(obj: &[u8]) -> Vec<(String, Vec<u8>)> {
    vec![
        ("out/a.o".into(), obj.to_vec()),
        ("out/a.o.d".into(), b"out/a.o: in/a.o\n".to_vec()),
    ]
}

fn as_map(v: &[(String, Vec<u8>)]) -> BTreeMap<String, Vec<u8>> {
    v.iter().cloned().collect()
}

#[test]
fn remote_cache_against_buildgrid() {
    let bg = BuildGrid::start();
    let t = Instant::now();
    let cache = RemoteCache::connect(&opts(&bg))
        .unwrap_or_else(|e| panic!("connect: {e:#}\nBuildGrid log:\n{}", bg.log_tail()));
    eprintln!(
        "connect + GetCapabilities: {:?}; batch limit {} bytes",
        t.elapsed(),
        cache.batch_limit()
    );
    unknown_action_is_a_miss(&cache);
    store_then_lookup_round_trips(&cache);
    large_blob_goes_through_bytestream(&cache);
    blobs_over_the_batch_limit_together_take_several_batches(&cache);
    different_salt_or_input_is_a_miss(&cache);
    corrupt_entries_are_misses(&bg, &cache);
    headers_are_accepted(&bg);
    concurrent_lookups_from_plain_threads(cache);
    unreachable_server_is_a_named_error(bg);
}

fn unknown_action_is_a_miss(cache: &RemoteCache) {
    let key = spec("unknown").key().unwrap();
    assert_eq!(cache.lookup(&key).unwrap(), None);
}

fn store_then_lookup_round_trips(cache: &RemoteCache) {
    let key = spec("round trip").key().unwrap();
    let outs = outputs(&noise(100_000, 1));
    cache
        .store(&key, &outs, b"", b"warning: something\n")
        .unwrap();
    let hit = cache.lookup(&key).unwrap().expect("a hit after a store");
    assert_eq!(hit.outputs, as_map(&outs));
    assert_eq!(hit.stdout, b"");
    assert_eq!(hit.stderr, b"warning: something\n");
    assert_eq!(hit.exit_code, 0);

    // Storing again (as two workers racing on one job would) is harmless.
    cache
        .store(&key, &outs, b"", b"warning: something\n")
        .unwrap();
    assert_eq!(cache.lookup(&key).unwrap(), Some(hit.clone()));

    // Rebuilding the key from an equal spec finds the same entry.
    assert_eq!(
        cache.lookup(&spec("round trip").key().unwrap()).unwrap(),
        Some(hit)
    );

    // An output the action does not declare is refused, before any upload.
    let e = cache
        .store(&key, &[("elsewhere.o".into(), vec![1])], b"", b"")
        .unwrap_err();
    assert!(format!("{e:#}").contains("elsewhere.o"), "{e:#}");

    // Lookup latency of a hit with a 100 kB object, on localhost.
    let n = 20;
    let t = Instant::now();
    for _ in 0..n {
        assert!(cache.lookup(&key).unwrap().is_some());
    }
    eprintln!(
        "lookup hit (100 kB + 16 B outputs): {:?} each",
        t.elapsed() / n
    );
    let miss = spec("never stored").key().unwrap();
    let t = Instant::now();
    for _ in 0..n {
        assert!(cache.lookup(&miss).unwrap().is_none());
    }
    eprintln!("lookup miss: {:?} each", t.elapsed() / n);
}

fn large_blob_goes_through_bytestream(cache: &RemoteCache) {
    let big = noise(5 << 20, 2);
    assert!(
        big.len() > cache.batch_limit(),
        "the test blob must exceed the batch limit ({})",
        cache.batch_limit()
    );
    let key = spec("large").key().unwrap();
    let outs = outputs(&big);
    // Large stdout too: it is a blob like the others.
    let stdout = noise(5 << 20, 3);
    let t = Instant::now();
    cache.store(&key, &outs, &stdout, b"").unwrap();
    eprintln!("store of 2 x 5 MiB through ByteStream: {:?}", t.elapsed());
    let t = Instant::now();
    let hit = cache.lookup(&key).unwrap().expect("a hit after a store");
    eprintln!("lookup of 2 x 5 MiB through ByteStream: {:?}", t.elapsed());
    assert!(hit.outputs["out/a.o"] == big, "the 5 MiB output differs");
    assert!(hit.stdout == stdout, "the 5 MiB stdout differs");
    assert_eq!(hit.outputs["out/a.o.d"], outs[1].1);
}

fn blobs_over_the_batch_limit_together_take_several_batches(cache: &RemoteCache) {
    let mut s = spec("several batches");
    s.output_paths = (0..4).map(|i| format!("out/{i}.o")).collect();
    let key = s.key().unwrap();
    // Each fits a batch, all four do not.
    let each = cache.batch_limit() * 2 / 5;
    let outs: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("out/{i}.o"), noise(each, 20 + i as u64)))
        .collect();
    cache.store(&key, &outs, b"", b"").unwrap();
    let hit = cache.lookup(&key).unwrap().expect("a hit after a store");
    assert!(hit.outputs == as_map(&outs), "the batched outputs differ");
}

fn different_salt_or_input_is_a_miss(cache: &RemoteCache) {
    let base = spec("differ");
    let key = base.key().unwrap();
    cache.store(&key, &outputs(b"obj"), b"", b"").unwrap();
    assert!(cache.lookup(&key).unwrap().is_some());

    let mut s = base.clone();
    s.salt = b"differ, another compiler".to_vec();
    assert_eq!(cache.lookup(&s.key().unwrap()).unwrap(), None);

    let mut s = base.clone();
    s.inputs[1].digest = Digest::of_bytes(b"another index of a");
    assert_eq!(cache.lookup(&s.key().unwrap()).unwrap(), None);

    let mut s = base;
    s.argv.push("-O3".into());
    assert_eq!(cache.lookup(&s.key().unwrap()).unwrap(), None);
}

/// Raw REAPI clients, to write what our own `store` never would.
struct Raw {
    rt: tokio::runtime::Runtime,
    ac: ActionCacheClient<tonic::transport::Channel>,
    cas: ContentAddressableStorageClient<tonic::transport::Channel>,
}

impl Raw {
    fn connect(bg: &BuildGrid) -> Raw {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let http = bg.url.replace("grpc://", "http://");
        let (ac, cas) = rt.block_on(async {
            let ch = tonic::transport::Endpoint::from_shared(http)
                .unwrap()
                .connect()
                .await
                .unwrap();
            (
                ActionCacheClient::new(ch.clone()),
                ContentAddressableStorageClient::new(ch),
            )
        });
        Raw { rt, ac, cas }
    }

    fn update(&mut self, key: &ActionKey, result: re::ActionResult) {
        let req = re::UpdateActionResultRequest {
            action_digest: Some(proto(&key.action)),
            action_result: Some(result),
            ..Default::default()
        };
        let ac = &mut self.ac;
        self.rt
            .block_on(ac.update_action_result(req))
            .expect("UpdateActionResult");
    }

    /// Uploads `data` under `digest` (which may not be its digest); whether
    /// the server accepted it.
    fn put(&mut self, digest: re::Digest, data: &[u8]) -> bool {
        let req = re::BatchUpdateBlobsRequest {
            requests: vec![re::batch_update_blobs_request::Request {
                digest: Some(digest),
                data: data.to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let cas = &mut self.cas;
        match self.rt.block_on(cas.batch_update_blobs(req)) {
            Err(_) => false,
            Ok(r) => r
                .into_inner()
                .responses
                .iter()
                .all(|r| r.status.as_ref().is_none_or(|s| s.code == 0)),
        }
    }
}

fn proto(d: &Digest) -> re::Digest {
    re::Digest {
        hash: d.hash.clone(),
        size_bytes: d.size_bytes,
    }
}

fn output(path: &str, d: re::Digest) -> re::OutputFile {
    re::OutputFile {
        path: path.into(),
        digest: Some(d),
        ..Default::default()
    }
}

fn corrupt_entries_are_misses(bg: &BuildGrid, cache: &RemoteCache) {
    let mut raw = Raw::connect(bg);
    let present = b"a blob the CAS has".to_vec();
    assert!(raw.put(proto(&Digest::of_bytes(&present)), &present));
    let present_d = Digest::of_bytes(&present);

    // Each case: an ActionResult no honest store writes, which lookup
    // must take for a miss (Ok(None)), not an error and not its bytes.
    let mut wrong_size = proto(&present_d);
    wrong_size.size_bytes -= 1;
    let mut longer = proto(&present_d);
    longer.size_bytes += 1;
    let cases: Vec<(&str, re::ActionResult)> = vec![
        (
            "an output blob the CAS lacks",
            re::ActionResult {
                output_files: vec![output(
                    "out/a.o",
                    proto(&Digest::of_bytes(b"never uploaded")),
                )],
                ..Default::default()
            },
        ),
        (
            "an output digest with a smaller size than its blob",
            re::ActionResult {
                output_files: vec![output("out/a.o", wrong_size)],
                ..Default::default()
            },
        ),
        (
            "an output digest with a larger size than its blob",
            re::ActionResult {
                output_files: vec![output("out/a.o", longer)],
                ..Default::default()
            },
        ),
        (
            "a stderr blob the CAS lacks",
            re::ActionResult {
                output_files: vec![output("out/a.o", proto(&present_d))],
                stderr_digest: Some(proto(&Digest::of_bytes(b"never uploaded stderr"))),
                ..Default::default()
            },
        ),
        (
            "inline stdout that is not its digest's",
            re::ActionResult {
                output_files: vec![output("out/a.o", proto(&present_d))],
                stdout_raw: b"forged".to_vec(),
                stdout_digest: Some(proto(&Digest::of_bytes(b"genuine"))),
                ..Default::default()
            },
        ),
        (
            "inline output contents that are not its digest's",
            re::ActionResult {
                output_files: vec![re::OutputFile {
                    contents: b"forged".to_vec(),
                    ..output("out/a.o", proto(&present_d))
                }],
                ..Default::default()
            },
        ),
        (
            "a malformed digest",
            re::ActionResult {
                output_files: vec![output(
                    "out/a.o",
                    re::Digest {
                        hash: "../../etc/passwd".into(),
                        size_bytes: 4,
                    },
                )],
                ..Default::default()
            },
        ),
        (
            "a failed action",
            re::ActionResult {
                output_files: vec![output("out/a.o", proto(&present_d))],
                exit_code: 1,
                ..Default::default()
            },
        ),
    ];
    for (i, (what, result)) in cases.into_iter().enumerate() {
        let key = spec(&format!("corrupt {i}")).key().unwrap();
        raw.update(&key, result);
        match cache.lookup(&key) {
            Ok(None) => {}
            Ok(Some(hit)) => panic!("{what}: lookup returned a hit {:?}", hit.outputs.keys()),
            Err(e) => panic!("{what}: lookup failed instead of missing: {e:#}"),
        }
    }

    // A blob whose content is not its digest's: a sound server refuses
    // the upload; if this one takes it, lookup must still not return it.
    let forged = b"not the genuine object".to_vec();
    let genuine = Digest::of_bytes(b"the genuine object");
    let accepted = raw.put(proto(&genuine), &forged);
    eprintln!("forged upload accepted: {accepted}");
    let key = spec("corrupt content").key().unwrap();
    raw.update(
        &key,
        re::ActionResult {
            output_files: vec![output("out/a.o", proto(&genuine))],
            ..Default::default()
        },
    );
    assert_eq!(
        cache.lookup(&key).unwrap(),
        None,
        "forged content (the server {} it)",
        if accepted { "accepted" } else { "refused" }
    );
    // The well-formed control: the same entry shape with the real blob hits.
    let key = spec("corrupt control").key().unwrap();
    raw.update(
        &key,
        re::ActionResult {
            output_files: vec![output("out/a.o", proto(&present_d))],
            ..Default::default()
        },
    );
    let hit = cache.lookup(&key).unwrap().expect("the control entry hits");
    assert_eq!(hit.outputs["out/a.o"], present);
}

fn headers_are_accepted(bg: &BuildGrid) {
    let mut o = opts(bg);
    o.headers = vec![
        ("Authorization".into(), "Bearer not-checked-here".into()),
        ("x-thinlto-test".into(), "1".into()),
    ];
    let cache = RemoteCache::connect(&o).expect("connect with headers");
    let key = spec("headers").key().unwrap();
    cache.store(&key, &outputs(b"h"), b"", b"").unwrap();
    assert!(cache.lookup(&key).unwrap().is_some());

    // A header gRPC cannot carry is refused at connect, by name.
    o.headers = vec![("bad header".into(), "1".into())];
    let e = RemoteCache::connect(&o)
        .err()
        .expect("a bad header is refused");
    assert!(format!("{e:#}").contains("bad header"), "{e:#}");
}

fn concurrent_lookups_from_plain_threads(cache: RemoteCache) {
    fn shareable<T: Send + Sync>(_: &T) {}
    shareable(&cache);
    let cache = Arc::new(cache);
    let threads: Vec<_> = (0..4u8)
        .map(|i| {
            let cache = Arc::clone(&cache);
            std::thread::spawn(move || {
                let key = spec(&format!("thread {i}")).key().unwrap();
                let obj = noise(10_000 + i as usize, 10 + i as u64);
                assert_eq!(cache.lookup(&key).unwrap(), None);
                cache.store(&key, &outputs(&obj), &[i], b"").unwrap();
                let hit = cache.lookup(&key).unwrap().expect("hit");
                assert_eq!(hit.outputs["out/a.o"], obj);
                assert_eq!(hit.stdout, [i]);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a worker thread panicked");
    }
}

fn unreachable_server_is_a_named_error(bg: BuildGrid) {
    let o = opts(&bg);
    drop(bg);
    let t = Instant::now();
    let e = RemoteCache::connect(&o)
        .err()
        .expect("nothing listens any more");
    let msg = format!("{e:#}");
    eprintln!("server gone: {msg}");
    assert!(msg.contains(&o.url), "{msg}");
    assert!(t.elapsed().as_secs() < 10, "connect took {:?}", t.elapsed());
}
