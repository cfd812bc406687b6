//! A hostile client of a shared farm: crafted Actions sent through a real
//! BuildGrid (PostgreSQL, 127.0.0.1) to the real `thinlto-backend worker`
//! (issue 25), with raw REAPI clients, as any client of the server could.
//! Each attack is refused with a short message (a lease status BuildGrid
//! does not retry and never caches) or contained by the sandbox; the
//! store stays honest (an honest action after each poisoning attempt
//! gives the bytes a local compile gives); a DAG bomb is refused; an
//! action past its deadline is killed; a compile that "succeeds" without
//! its outputs is a failure that never reaches the action cache.

use std::collections::BTreeMap;
use std::path::Path;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::longrunning::operation;
use prost::Message;
use re::action_cache_client::ActionCacheClient;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use re::execution_client::ExecutionClient;
use thinlto_backend::reapi::{Digest, COMPILER_PROPERTY};
use thinlto_dist_tests::*;
use xtask::farm::Farm;

/// Raw clients of the farm's server.
struct Hostile {
    rt: tokio::runtime::Runtime,
    cas: ContentAddressableStorageClient<tonic::transport::Channel>,
    exec: ExecutionClient<tonic::transport::Channel>,
    ac: ActionCacheClient<tonic::transport::Channel>,
}

/// What the farm answered.
#[derive(Debug)]
struct Answer {
    action: re::Digest,
    /// The ExecuteResponse's status code (0: OK).
    code: i32,
    message: String,
    result: re::ActionResult,
    stderr: String,
}

fn proto(d: &Digest) -> re::Digest {
    re::Digest {
        hash: d.hash.clone(),
        size_bytes: d.size_bytes,
    }
}

impl Hostile {
    fn connect(url: &str) -> Hostile {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let http = url.replace("grpc://", "http://");
        let ch = rt.block_on(async {
            tonic::transport::Endpoint::from_shared(http)
                .unwrap()
                .connect()
                .await
                .unwrap()
        });
        Hostile {
            rt,
            cas: ContentAddressableStorageClient::new(ch.clone()),
            exec: ExecutionClient::new(ch.clone()),
            ac: ActionCacheClient::new(ch),
        }
    }

    fn put(&mut self, data: &[u8]) -> re::Digest {
        let d = proto(&Digest::of_bytes(data));
        let req = re::BatchUpdateBlobsRequest {
            requests: vec![re::batch_update_blobs_request::Request {
                digest: Some(d.clone()),
                data: data.to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let r = self.rt.block_on(self.cas.batch_update_blobs(req)).unwrap();
        assert!(r
            .into_inner()
            .responses
            .iter()
            .all(|r| r.status.as_ref().is_none_or(|s| s.code == 0)));
        d
    }

    fn get(&mut self, d: &re::Digest) -> Vec<u8> {
        if d.size_bytes == 0 {
            return Vec::new();
        }
        let req = re::BatchReadBlobsRequest {
            digests: vec![d.clone()],
            ..Default::default()
        };
        let r = self.rt.block_on(self.cas.batch_read_blobs(req)).unwrap();
        r.into_inner().responses.remove(0).data
    }

    /// Uploads the Command and Action (with the compiler's platform
    /// property, as BuildGrid matches it) and executes it.
    fn execute(
        &mut self,
        mut command: re::Command,
        root: re::Digest,
        identity: &str,
        timeout: Option<prost_types_duration::Duration>,
        skip_cache_lookup: bool,
    ) -> Answer {
        let platform = re::Platform {
            properties: vec![re::platform::Property {
                name: COMPILER_PROPERTY.into(),
                value: identity.into(),
            }],
        };
        #[allow(deprecated)]
        {
            command.platform = Some(platform.clone());
            command.output_files = command.output_paths.clone();
        }
        let command_digest = self.put(&command.encode_to_vec());
        let action = re::Action {
            command_digest: Some(command_digest),
            input_root_digest: Some(root),
            platform: Some(platform),
            timeout: timeout.map(|t| bazel_remote_apis::google::protobuf::Duration {
                seconds: t.0,
                nanos: t.1,
            }),
            ..Default::default()
        };
        let action_digest = self.put(&action.encode_to_vec());
        let req = re::ExecuteRequest {
            action_digest: Some(action_digest.clone()),
            skip_cache_lookup,
            ..Default::default()
        };
        let response = self.rt.block_on(async {
            let mut stream = self.exec.execute(req).await.unwrap().into_inner();
            loop {
                let op = stream
                    .message()
                    .await
                    .unwrap()
                    .expect("the stream ended early");
                if op.done {
                    match op.result {
                        Some(operation::Result::Response(any)) => {
                            break re::ExecuteResponse::decode(any.value.as_slice()).unwrap()
                        }
                        other => panic!("operation failed: {other:?}"),
                    }
                }
            }
        });
        let status = response.status.unwrap_or_default();
        let result = response.result.unwrap_or_default();
        let stderr = result
            .stderr_digest
            .clone()
            .map(|d| String::from_utf8_lossy(&self.get(&d)).into_owned())
            .unwrap_or_default();
        Answer {
            action: action_digest,
            code: status.code,
            message: status.message,
            result,
            stderr,
        }
    }

    /// Whether the action cache has a result for `action`.
    fn cached(&mut self, action: &re::Digest) -> bool {
        let req = re::GetActionResultRequest {
            action_digest: Some(action.clone()),
            ..Default::default()
        };
        self.rt.block_on(self.ac.get_action_result(req)).is_ok()
    }

    /// The Directory tree of `files` (path, bytes), canonical (sorted),
    /// uploaded; its digest.
    fn tree(&mut self, files: &[(&str, &[u8])]) -> re::Digest {
        #[derive(Default)]
        struct Dir {
            files: BTreeMap<String, Vec<u8>>,
            dirs: BTreeMap<String, Dir>,
        }
        let mut top = Dir::default();
        for (path, data) in files {
            let mut at = &mut top;
            let parts: Vec<&str> = path.split('/').collect();
            for p in &parts[..parts.len() - 1] {
                at = at.dirs.entry(p.to_string()).or_default();
            }
            at.files
                .insert(parts[parts.len() - 1].to_string(), data.to_vec());
        }
        fn upload(h: &mut Hostile, d: &Dir) -> re::Digest {
            let mut out = re::Directory::default();
            for (name, data) in &d.files {
                out.files.push(re::FileNode {
                    name: name.clone(),
                    digest: Some(h.put(data)),
                    ..Default::default()
                });
            }
            for (name, sub) in &d.dirs {
                let digest = upload(h, sub);
                out.directories.push(re::DirectoryNode {
                    name: name.clone(),
                    digest: Some(digest),
                });
            }
            h.put(&out.encode_to_vec())
        }
        upload(self, &top)
    }
}

/// (seconds, nanos) of an Action.timeout.
mod prost_types_duration {
    pub struct Duration(pub i64, pub i32);
}

fn command(argv: &[String], outputs: &[&str], env: &[(&str, &str)]) -> re::Command {
    re::Command {
        arguments: argv.to_vec(),
        output_paths: outputs.iter().map(|s| s.to_string()).collect(),
        environment_variables: env
            .iter()
            .map(|(n, v)| re::command::EnvironmentVariable {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

/// Our client's backend argv for `object` (`extra` flags first).
fn backend_argv(cc: &str, object: &str, native: &str, extra: &[&str]) -> Vec<String> {
    let mut v = vec![cc.to_string()];
    v.extend(extra.iter().map(|s| s.to_string()));
    v.extend(
        [
            "-x",
            "ir",
            "-fno-lto",
            "-Wno-unused-command-line-argument",
            &format!("-fthinlto-index={object}.thinlto.bc"),
            "-c",
            "-o",
            native,
            object,
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    v
}

fn read(tree: &Path, p: &str) -> Vec<u8> {
    std::fs::read(tree.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

const REFUSED: i32 = tonic::Code::InvalidArgument as i32;

/// A refusal: the status the client shows, a one-line stderr naming
/// `what`, nothing cached, no output.
fn assert_refused(h: &mut Hostile, a: &Answer, what: &str) {
    assert_eq!(a.code, REFUSED, "{a:?}");
    assert!(a.message.contains(what), "{a:?}");
    assert!(
        a.stderr.contains(what) && a.stderr.lines().count() == 1,
        "{a:?}"
    );
    assert_ne!(a.result.exit_code, 0, "{a:?}");
    assert!(a.result.output_files.is_empty(), "{a:?}");
    assert!(!h.cached(&a.action), "{a:?}");
}

#[test]
fn a_hostile_client_cannot_escape_poison_or_stall_a_worker() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/usr/bin/bwrap").exists() {
        eprintln!("SKIPPED: needs root and bwrap (the worker's sandbox switches uid)");
        return;
    }
    let t = sample_tree();
    let m = thin_link(t.path());
    let cc = toolchain().cc.spelled.clone();
    let (identity, _) =
        thinlto_backend::cache::identity::program_identity(std::slice::from_ref(&cc)).unwrap();
    // A job that imports from another module (not config_blob's asm,
    // which .incbin's a file no action carries).
    let job = m
        .bitcode()
        .filter(|o| !o.object.contains("config_blob"))
        .find(|o| {
            o.imports.as_ref().is_some_and(|i| {
                i.iter().any(|i| *i != o.object) && !i.iter().any(|i| i.contains("config_blob"))
            })
        })
        .expect("a job with imports in the sample tree");
    let object = job.object.clone();
    let summary = format!("{object}.thinlto.bc");
    let imports = job.imports.clone().unwrap();
    let native = format!("{}.thinlto-native.o", object.trim_end_matches(".o"));
    let object_bytes = read(t.path(), &object);
    let summary_bytes = read(t.path(), &summary);
    let import_bytes: Vec<(String, Vec<u8>)> = imports
        .iter()
        .filter(|i| **i != object)
        .map(|i| (i.clone(), read(t.path(), i)))
        .collect();
    let honest_files = |with_imports: bool| -> Vec<(String, Vec<u8>)> {
        let mut v = vec![
            (object.clone(), object_bytes.clone()),
            (summary.clone(), summary_bytes.clone()),
        ];
        if with_imports {
            v.extend(import_bytes.iter().cloned());
        }
        v
    };
    // The reference: the same compile here.
    let argv = backend_argv(&cc, &object, &native, &[]);
    run_ok(
        std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(t.path()),
    );
    let local = read(t.path(), &native);

    let bgd = buildgrid::bgd();
    let mut farm = Farm::start(&bgd, &bin("thinlto-backend")).unwrap_or_else(|e| panic!("{e:#}"));
    farm.add_worker("w1", &[], &[]).unwrap();
    let mut h = Hostile::connect(&farm.url);
    let root_of = |h: &mut Hostile, files: &[(String, Vec<u8>)]| {
        let refs: Vec<(&str, &[u8])> = files.iter().map(|(p, d)| (p.as_str(), &d[..])).collect();
        h.tree(&refs)
    };
    let honest_root = root_of(&mut h, &honest_files(true));

    let honest = |h: &mut Hostile, why: &str| {
        let a = h.execute(
            command(&argv, &[&native], &[]),
            honest_root.clone(),
            &identity,
            None,
            true,
        );
        assert_eq!((a.code, a.result.exit_code), (0, 0), "{why}: {a:?}");
        let d = a.result.output_files[0].digest.clone().unwrap();
        assert_eq!(h.get(&d), local, "{why}: not the honest bytes");
    };
    honest(&mut h, "first");

    // 1. A program of the action's own through the compiler's flags.
    let marker = t.path().join("PWNED");
    let script = format!("#!/bin/sh\ntouch {}\n", marker.display());
    let mut files = honest_files(true);
    files.push(("script".into(), script.into_bytes()));
    let root = root_of(&mut h, &files);
    for flag in ["--ld-path=./script", "-fuse-ld=./script", "-B."] {
        let a = h.execute(
            command(
                &backend_argv(&cc, &object, &native, &[flag]),
                &[&native],
                &[],
            ),
            root.clone(),
            &identity,
            None,
            false,
        );
        assert_refused(&mut h, &a, flag.split('=').next().unwrap());
    }
    assert!(!marker.exists());

    // 2. A file written outside the root.
    let outside = t.path().join("outside.i");
    let pre = vec![
        cc.clone(),
        "-E".into(),
        "payload.c".into(),
        "-o".into(),
        outside.display().to_string(),
    ];
    let root = root_of(&mut h, &[("payload.c".into(), b"int x;\n".to_vec())]);
    let a = h.execute(
        command(&pre, &["payload.i"], &[]),
        root,
        &identity,
        None,
        false,
    );
    assert_refused(&mut h, &a, "refused");
    assert!(!outside.exists());
    let a = h.execute(
        command(
            &backend_argv(&cc, &object, &native, &["-MF", "/tmp/x.d"]),
            &[&native],
            &[],
        ),
        honest_root.clone(),
        &identity,
        None,
        false,
    );
    assert_refused(&mut h, &a, "-MF");

    // 3. The loader's variables.
    for var in ["LD_AUDIT", "LD_LIBRARY_PATH", "LD_PRELOAD"] {
        let a = h.execute(
            command(&argv, &[&native], &[(var, "./x.so")]),
            honest_root.clone(),
            &identity,
            None,
            false,
        );
        assert_refused(&mut h, &a, var);
    }

    // 4. Poisoning the store: writing to ../../blobs, two FileNodes with
    // one name, the output over an input (a link into the store), a
    // time trace written over the object. Each refused or contained: the
    // honest action still gives the honest bytes.
    let blob = Digest::of_bytes(&object_bytes);
    let a = h.execute(
        command(
            &backend_argv(
                &cc,
                &object,
                &format!("../../blobs/{}-{}", blob.hash, blob.size_bytes),
                &[],
            ),
            &[&native],
            &[],
        ),
        honest_root.clone(),
        &identity,
        None,
        false,
    );
    assert_refused(&mut h, &a, "../../blobs");
    honest(&mut h, "after ../../blobs");

    let twins = re::Directory {
        files: vec![
            re::FileNode {
                name: "a.o".into(),
                digest: Some(h.put(&object_bytes)),
                ..Default::default()
            },
            re::FileNode {
                name: "a.o".into(),
                digest: Some(h.put(b"poison")),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let twin_root = h.put(&twins.encode_to_vec());
    let a = h.execute(
        command(
            &backend_argv(&cc, "a.o", "a.native.o", &[]),
            &["a.native.o"],
            &[],
        ),
        twin_root,
        &identity,
        None,
        false,
    );
    assert_refused(&mut h, &a, "not sorted and unique");
    honest(&mut h, "after two FileNodes with one name");

    for (extra, outputs) in [
        (vec![format!("-ftime-trace={object}")], vec![native.clone()]),
        (
            vec![format!("-ftime-trace={summary}")],
            vec![native.clone()],
        ),
    ] {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let outs: Vec<&str> = outputs.iter().map(String::as_str).collect();
        let _ = h.execute(
            command(&backend_argv(&cc, &object, &native, &extra), &outs, &[]),
            honest_root.clone(),
            &identity,
            None,
            false,
        );
        honest(&mut h, "after a time trace over an input");
    }
    // The output over the object (declared as an output too).
    let over = backend_argv(&cc, &object, &object, &[]);
    let _ = h.execute(
        command(&over, &[&object], &[]),
        honest_root.clone(),
        &identity,
        None,
        false,
    );
    honest(&mut h, "after -o over an input");

    // 5. A DAG bomb: 5 blobs, 69,905 directories.
    let mut level = h.put(&re::Directory::default().encode_to_vec());
    for _ in 0..4 {
        let d = re::Directory {
            directories: (b'a'..=b'p')
                .map(|c| re::DirectoryNode {
                    name: (c as char).to_string(),
                    digest: Some(level.clone()),
                })
                .collect(),
            ..Default::default()
        };
        level = h.put(&d.encode_to_vec());
    }
    let a = h.execute(
        command(&argv, &[&native], &[]),
        level,
        &identity,
        None,
        false,
    );
    assert_refused(&mut h, &a, "more than");

    // 6. Past its deadline: killed, DEADLINE_EXCEEDED, never cached.
    let a = h.execute(
        command(&argv, &[&native], &[]),
        honest_root.clone(),
        &identity,
        Some(prost_types_duration::Duration(0, 1)),
        false,
    );
    assert_eq!(a.code, tonic::Code::DeadlineExceeded as i32, "{a:?}");
    assert!(a.stderr.contains("deadline"), "{a:?}");
    assert!(!h.cached(&a.action));

    // 7. Never an empty success: a declared output the compile does not
    // write, and the imports missing from the root (clang-19 then exits
    // 0 with an empty object). Neither is exit 0; neither is cached.
    let a = h.execute(
        command(&argv, &[&native, "kernel/never.dwo"], &[]),
        honest_root.clone(),
        &identity,
        None,
        false,
    );
    assert_eq!(a.code, tonic::Code::FailedPrecondition as i32, "{a:?}");
    assert_ne!(a.result.exit_code, 0);
    assert!(a.stderr.contains("kernel/never.dwo"), "{a:?}");
    assert!(a.result.output_files.is_empty());
    assert!(!h.cached(&a.action));
    let bare = root_of(&mut h, &honest_files(false));
    let a = h.execute(
        command(&argv, &[&native], &[]),
        bare,
        &identity,
        None,
        false,
    );
    assert_ne!(a.result.exit_code, 0, "{a:?}");
    assert!(a.result.output_files.is_empty(), "{a:?}");
    assert!(!h.cached(&a.action), "{a:?}");
    if a.code == tonic::Code::FailedPrecondition as i32 {
        // The compiler's own word on it reaches the client.
        assert!(
            a.stderr.contains("wrote no output") || a.stderr.contains("is empty"),
            "{a:?}"
        );
    }

    // The worker is still serving, honestly.
    honest(&mut h, "at the end");
}
