//! The backend cache (`thinlto-backend --cache`) with the real toolchain:
//! a warm cache rebuilds a tree, or another checkout of it, without a
//! compile and with the same bytes; an `.incbin`'d file that changed is
//! never served stale; corrupt, truncated and foreign entries are misses;
//! untraceable compiles are not stored; concurrent builds share one cache;
//! the upkeep verbs.

use std::path::{Path, PathBuf};
use std::process::Command;

use thinlto_dist_tests::buildgrid::BuildGrid;
use thinlto_dist_tests::*;

/// thinlto-backend with the cache in `cache`, plus `args`; asserts success.
fn cached(tree: &Path, cache: &Path, args: &[&str]) -> (String, Vec<JobRecord>) {
    let mut a = vec!["--cache-dir", cache.to_str().unwrap()];
    a.extend_from_slice(args);
    // Not -q: the summary line is part of what is checked.
    let out = run_ok(
        tool("thinlto-backend", tree)
            .args(["--index", "out/vmlinux.thinlto-index"])
            .args(&a),
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (err, job_records(&out.stdout))
}

/// `cached` with more environment variables for thinlto-backend (and so
/// for its compiles).
fn cached_env(
    tree: &Path,
    cache: &Path,
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> (String, Vec<JobRecord>) {
    let mut cmd = tool("thinlto-backend", tree);
    cmd.args(["--index", "out/vmlinux.thinlto-index", "--cache-dir"])
        .arg(cache)
        .args(args)
        .envs(env.iter().copied());
    let out = run_ok(&mut cmd);
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        job_records(&out.stdout),
    )
}

/// The status of one job of a run.
fn status_of(recs: &[JobRecord], object: &str) -> JobStatus {
    recs.iter()
        .find(|r| r.object == object)
        .unwrap_or_else(|| panic!("no job for {object}: {recs:?}"))
        .status
}

fn all(m: &thinlto_index::Manifest) -> Vec<String> {
    let mut v: Vec<String> = m.bitcode().map(|o| o.object.clone()).collect();
    v.sort();
    v
}

fn stats(cache: &Path) -> serde_json::Value {
    let out = run_ok(
        Command::new(bin("thinlto-backend"))
            .args(["cache", "stats", "--json", "--cache-dir"])
            .arg(cache),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_warm_cache_rebuilds_a_tree_and_another_checkout_without_compiling() {
    let t = sample_tree();
    let cache = tempfile::tempdir().unwrap();
    let m = thin_link(t.path());
    let (_, recs) = cached(t.path(), cache.path(), &[]);
    assert_eq!(with_status(&recs, JobStatus::Built), all(&m));
    let cold = native_files(t.path(), &m);

    // The same tree, every job forced: all from the cache, same bytes.
    let (err, recs) = cached(t.path(), cache.path(), &["-B"]);
    assert_eq!(with_status(&recs, JobStatus::CacheHit), all(&m), "{err}");
    for r in &recs {
        assert_eq!(r.cache, Some(thinlto_backend::cache::Tier::Local), "{r:?}");
        assert_eq!(r.key.as_ref().map(String::len), Some(64), "{r:?}");
    }
    let n = m.bitcode().count();
    assert!(
        err.contains(&format!(
            "{n} from the cache ({n} local, 0 remote; 0 misses)"
        )),
        "{err}"
    );
    assert!(!err.contains("  CC "), "something compiled:\n{err}");
    assert_eq!(native_files(t.path(), &m), cold);
    // A hit writes the record: the next run finds everything up to date.
    let (_, recs) = cached(t.path(), cache.path(), &[]);
    assert_eq!(with_status(&recs, JobStatus::UpToDate), all(&m));

    // Another checkout of the tree, at a path with a space and a quote:
    // no compile, and the bytes a cold build gives there.
    let other_dir = tempfile::tempdir().unwrap();
    let other = other_dir.path().join("second 'checkout'");
    xtask::flow::copy_fe_tree(t.path(), &other).unwrap();
    for (n, _) in &cold {
        let _ = std::fs::remove_file(other.join(n));
    }
    thin_link(&other);
    let (err, recs) = cached(&other, cache.path(), &[]);
    assert_eq!(with_status(&recs, JobStatus::CacheHit), all(&m), "{err}");
    let hit = native_files(&other, &m);
    let (_, recs) = cached(&other, cache.path(), &["-B", "--no-cache"]);
    assert_eq!(with_status(&recs, JobStatus::Built), all(&m));
    assert_eq!(hit, native_files(&other, &m));
    assert_eq!(hit, cold);
}

/// Writes the `.incbin`'d file and rebuilds the front end: the bitcode of
/// kernel/config_blob.o does not change, only the file does.
fn set_config_data(tree: &Path, text: &str) {
    let before = std::fs::read(tree.join("kernel/config_blob.o")).unwrap();
    std::fs::write(tree.join("kernel/config_data.txt"), text).unwrap();
    rebuild_fe(tree);
    assert_eq!(
        before,
        std::fs::read(tree.join("kernel/config_blob.o")).unwrap()
    );
    thin_link(tree);
}

fn incbin_is_never_served_stale(extra: &[&str]) {
    let t = sample_tree();
    let cache = tempfile::tempdir().unwrap();
    let m = thin_link(t.path());
    let original = std::fs::read_to_string(t.path().join("kernel/config_data.txt")).unwrap();
    cached(t.path(), cache.path(), extra);
    let blob = "kernel/config_blob.thinlto-native.o";
    let first = std::fs::read(t.path().join(blob)).unwrap();

    set_config_data(t.path(), "CONFIG_CHANGED=y\n");
    let mut args = vec!["-B"];
    args.extend_from_slice(extra);
    let (err, recs) = cached(t.path(), cache.path(), &args);
    // The jobs that read the file compile (config_blob.o, and any module
    // that imports from it and assembled its asm); every other job hits.
    let built = with_status(&recs, JobStatus::Built);
    assert!(
        built.contains(&"kernel/config_blob.o".to_string()),
        "{recs:?}\n{err}"
    );
    let hits = with_status(&recs, JobStatus::CacheHit);
    assert_eq!(built.len() + hits.len(), m.bitcode().count());
    assert!(!hits.is_empty(), "{recs:?}");
    let changed = std::fs::read(t.path().join(blob)).unwrap();
    assert_ne!(changed, first, "the native must carry the new file");
    // What a build without the cache gives now.
    cached(t.path(), cache.path(), &["-B", "--no-cache"]);
    assert_eq!(std::fs::read(t.path().join(blob)).unwrap(), changed);
    let o = stage4(t.path());
    let out =
        xtask::sample::reference::run_harness(toolchain(), t.path(), &o, &t.path().join("out/h"))
            .unwrap();
    assert!(out.contains("blob: size=17 "), "{out}");

    // Back to the old content: both variants are kept, all hits.
    set_config_data(t.path(), &original);
    let (err, recs) = cached(t.path(), cache.path(), &args);
    assert_eq!(with_status(&recs, JobStatus::CacheHit), all(&m), "{err}");
    assert_eq!(std::fs::read(t.path().join(blob)).unwrap(), first);
}

#[test]
fn an_incbin_change_is_never_served_stale() {
    incbin_is_never_served_stale(&[]);
}

#[test]
fn an_incbin_change_is_never_served_stale_with_the_warm_compiler() {
    incbin_is_never_served_stale(&["--warm"]);
}

fn store_file(cache: &Path, dir: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for fan in std::fs::read_dir(cache.join("backend-v1").join(dir)).unwrap() {
        for f in std::fs::read_dir(fan.unwrap().path()).unwrap() {
            v.push(f.unwrap().path());
        }
    }
    v.sort();
    v
}

/// The blob that holds `bytes`.
fn blob_of(cache: &Path, bytes: &[u8]) -> PathBuf {
    let d = blake3::hash(bytes).to_hex().to_string();
    cache.join("backend-v1/blobs").join(&d[..2]).join(&d)
}

#[test]
fn corrupt_truncated_and_foreign_entries_are_misses() {
    let t = sample_tree();
    let cache = tempfile::tempdir().unwrap();
    let m = thin_link(t.path());
    cached(t.path(), cache.path(), &[]);
    let cold = native_files(t.path(), &m);
    let get = |n: &str| cold.iter().find(|(p, _)| p == n).unwrap().1.clone();
    let core = get("kernel/core.thinlto-native.o");
    let printk = get("kernel/printk_lite.thinlto-native.o");
    // One byte flipped in one blob; another blob cut short.
    let p = blob_of(cache.path(), &core);
    let mut bad = core.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    std::fs::write(&p, &bad).unwrap();
    let p = blob_of(cache.path(), &printk);
    std::fs::write(&p, &printk[..printk.len() / 2]).unwrap();
    // A foreign manifest: string-helpers' entry copied under lib/crc_util's
    // key (the key as the last run reported it).
    let (_, recs) = cached(t.path(), cache.path(), &["-B", "--only", "lib/crc_util.o"]);
    assert_eq!(recs[0].status, JobStatus::CacheHit);
    let crc_key = recs[0].key.clone().unwrap();
    let (_, recs) = cached(
        t.path(),
        cache.path(),
        &["-B", "--only", "lib/string-helpers.o"],
    );
    let sh_key = recs[0].key.clone().unwrap();
    let mpath = |k: &str| {
        cache
            .path()
            .join("backend-v1/manifests")
            .join(&k[..2])
            .join(k)
    };
    std::fs::copy(mpath(&sh_key), mpath(&crc_key)).unwrap();

    let (err, recs) = cached(t.path(), cache.path(), &["-B"]);
    let mut built = with_status(&recs, JobStatus::Built);
    built.sort();
    assert_eq!(
        built,
        ["kernel/core.o", "kernel/printk_lite.o", "lib/crc_util.o"],
        "{err}"
    );
    // Nothing wrong was put in place: the bytes of the cold build.
    assert_eq!(native_files(t.path(), &m), cold);
    // The bad entries were replaced by good ones: all hits now.
    let (_, recs) = cached(t.path(), cache.path(), &["-B"]);
    assert_eq!(with_status(&recs, JobStatus::CacheHit), all(&m));
}

#[test]
fn compiles_that_cannot_be_traced_are_not_stored() {
    let t = sample_tree();
    let cache = tempfile::tempdir().unwrap();
    let m = thin_link(t.path());
    // A wrapper that drops LD_PRELOAD: the compile's reads are unknown.
    let cc = t.path().join("scrub-cc");
    script(
        &cc,
        &format!(
            "#!/bin/sh\nexec env -u LD_PRELOAD {} \"$@\"\n",
            toolchain().cc.spelled
        ),
    );
    let cc_arg = format!("--cc={}", cc.display());
    let (err, recs) = cached(t.path(), cache.path(), &[&cc_arg]);
    assert_eq!(with_status(&recs, JobStatus::Built), all(&m));
    assert_eq!(
        err.matches("results not stored").count(),
        1,
        "said once:\n{err}"
    );
    let (_, recs) = cached(t.path(), cache.path(), &[&cc_arg, "-B"]);
    assert_eq!(with_status(&recs, JobStatus::Built), all(&m));
    let s = stats(cache.path());
    assert_eq!(s["usage"]["manifests"], 0, "{s}");
    assert_eq!(
        s["counters"]["uncacheable"],
        2 * m.bitcode().count() as u64,
        "{s}"
    );
}

#[test]
fn the_compiler_is_part_of_the_key() {
    // Build ids of clang and of the libraries it loads, its version.
    let (id, text) =
        thinlto_backend::cache::identity::compiler_identity(&[toolchain().cc.spelled.clone()])
            .unwrap();
    assert_eq!(id.len(), 64);
    assert!(text.contains("build-id "), "{text}");
    assert!(
        text.contains("  lib ") && text.contains("libLLVM"),
        "{text}"
    );
    assert!(
        text.contains("version ") && text.contains("clang"),
        "{text}"
    );

    // The same path, another program: nothing is shared.
    let t = sample_tree();
    let cache = tempfile::tempdir().unwrap();
    let m = thin_link(t.path());
    let cc = t.path().join("cc");
    let cc_text = format!("#!/bin/sh\nexec {} \"$@\"\n", toolchain().cc.spelled);
    script(&cc, &cc_text);
    let cc_arg = format!("--cc={}", cc.display());
    let (stored_err, recs) = cached(t.path(), cache.path(), &[&cc_arg]);
    assert_eq!(with_status(&recs, JobStatus::Built), all(&m));
    let (err, recs) = cached(t.path(), cache.path(), &[&cc_arg, "-B"]);
    assert_eq!(
        with_status(&recs, JobStatus::CacheHit),
        all(&m),
        "{err}\nthe storing run:\n{stored_err}"
    );
    script(&cc, &format!("{cc_text}# another build\n"));
    let (_, recs) = cached(t.path(), cache.path(), &[&cc_arg, "-B"]);
    assert_eq!(with_status(&recs, JobStatus::Built), all(&m));
}

#[test]
fn concurrent_builds_share_one_cache() {
    let a = sample_tree();
    let cache = tempfile::tempdir().unwrap();
    let m = thin_link(a.path());
    let b_dir = tempfile::tempdir().unwrap();
    let b = b_dir.path().join("b");
    xtask::flow::copy_fe_tree(a.path(), &b).unwrap();
    thin_link(&b);
    let start = |tree: &Path| {
        tool("thinlto-backend", tree)
            .args([
                "-q",
                "-j2",
                "--index",
                "out/vmlinux.thinlto-index",
                "--cache-dir",
            ])
            .arg(cache.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (pa, pb) = (start(a.path()), start(&b));
    for p in [pa, pb] {
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let na = native_files(a.path(), &m);
    assert_eq!(na, native_files(&b, &m));
    let (_, recs) = cached(a.path(), cache.path(), &["-B"]);
    assert_eq!(with_status(&recs, JobStatus::CacheHit), all(&m));
    assert_eq!(native_files(a.path(), &m), na);
    // No temporaries left in the store.
    for dir in ["blobs", "manifests"] {
        for f in store_file(cache.path(), dir) {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            assert!(!name.ends_with(".tmp"), "{}", f.display());
        }
    }
}

#[test]
fn explain_stats_prune_clear_and_the_default_off() {
    let t = sample_tree();
    let home = tempfile::tempdir().unwrap();
    let m = thin_link(t.path());
    let n = m.bitcode().count() as u64;
    // Off unless asked for: nothing appears under XDG_CACHE_HOME.
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let out = run_ok(
            tool("thinlto-backend", t.path())
                .args(["-q", "--index", "out/vmlinux.thinlto-index"])
                .args(args)
                .env("XDG_CACHE_HOME", home.path())
                .envs(env.iter().copied()),
        );
        job_records(&out.stdout)
    };
    run(&[], &["-B"]);
    // An empty THINLTO_CACHE (a make variable exported unset) is off too.
    run(&[("THINLTO_CACHE", "")], &["-B"]);
    let dir = home.path().join("thinlto-dist");
    assert!(!dir.join("backend-v1").exists());
    // THINLTO_CACHE=1: the default directory.
    run(&[("THINLTO_CACHE", "1")], &["-B"]);
    let s = stats(&dir);
    assert_eq!(s["usage"]["manifests"], n, "{s}");
    assert_eq!(s["counters"]["misses"], n, "{s}");
    assert_eq!(s["counters"]["stored"], n, "{s}");
    // --explain says which jobs the cache has, with the key; runs nothing.
    let out = tool("thinlto-backend", t.path())
        .args([
            "--index",
            "out/vmlinux.thinlto-index",
            "-B",
            "--explain",
            "--cache-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("cache-hit (local) ").count() as u64,
        n,
        "{text}"
    );
    assert_eq!(stats(&dir)["counters"]["hits_local"], 0);
    let recs = run(&[("THINLTO_CACHE", "1")], &["-B"]);
    assert_eq!(with_status(&recs, JobStatus::CacheHit), all(&m));
    assert_eq!(stats(&dir)["counters"]["hits_local"], n);
    // --no-cache wins over the environment.
    let recs = run(&[("THINLTO_CACHE", "1")], &["-B", "--no-cache"]);
    assert_eq!(with_status(&recs, JobStatus::Built), all(&m));

    // prune to a tiny size: the oldest go; what is left is still valid.
    let cache_cmd = |args: &[&str]| {
        let out = run_ok(
            Command::new(bin("thinlto-backend"))
                .arg("cache")
                .args(args)
                .arg("--cache-dir")
                .arg(&dir),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = stats(&dir)["usage"]["bytes"].as_u64().unwrap();
    let said = cache_cmd(&["prune", "--max-size", &(before / 2).to_string()]);
    assert!(said.starts_with("removed "), "{said}");
    let after = stats(&dir)["usage"]["bytes"].as_u64().unwrap();
    assert!(after <= before / 2 && after > 0, "{before} -> {after}");
    let recs = run(&[("THINLTO_CACHE", "1")], &["-B"]);
    assert!(!with_status(&recs, JobStatus::Built).is_empty());
    let text = cache_cmd(&["stats"]);
    assert!(text.contains("hits ") && text.contains("misses"), "{text}");
    cache_cmd(&["clear"]);
    let s = stats(&dir);
    assert_eq!(s["usage"]["bytes"], 0, "{s}");
    assert_eq!(s["counters"]["misses"], 0, "{s}");
    // A bad size is an error that says what is expected.
    let out = Command::new(bin("thinlto-backend"))
        .args(["cache", "prune", "--max-size", "lots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("5G"));
}

#[test]
fn split_dwarf_files_come_back_with_their_object() {
    let t = sample_tree();
    append_line(
        &t.path().join("kernel/Kbuild"),
        "CFLAGS_core.o += -g -gsplit-dwarf",
    );
    rebuild_fe(t.path());
    thin_link(t.path());
    let cache = tempfile::tempdir().unwrap();
    let only = ["--only", "kernel/core.o"];
    cached(t.path(), cache.path(), &only);
    let files = [
        "kernel/core.thinlto-native.o",
        "kernel/core.thinlto-native.dwo",
    ];
    let cold: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(t.path().join(f)).unwrap())
        .collect();
    for f in files {
        std::fs::remove_file(t.path().join(f)).unwrap();
    }
    let (_, recs) = cached(t.path(), cache.path(), &only);
    assert_eq!(recs[0].status, JobStatus::CacheHit, "{recs:?}");
    for (f, bytes) in files.iter().zip(&cold) {
        assert_eq!(&std::fs::read(t.path().join(f)).unwrap(), bytes, "{f}");
    }
}

#[test]
fn a_second_machine_gets_the_natives_from_a_remote_cache() {
    let bg = BuildGrid::start();
    let a = sample_tree();
    let m = thin_link(a.path());
    let (local_a, local_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let remote = format!("--remote-cache={}", bg.url);
    let (_, recs) = cached(a.path(), local_a.path(), &[&remote]);
    assert_eq!(with_status(&recs, JobStatus::Built), all(&m));
    let cold = native_files(a.path(), &m);

    // "Another machine": a copy of the tree elsewhere, an empty local cache.
    let b_dir = tempfile::tempdir().unwrap();
    let b = b_dir.path().join("tree b");
    xtask::flow::copy_fe_tree(a.path(), &b).unwrap();
    thin_link(&b);
    let (err, recs) = cached(&b, local_b.path(), &["-B", &remote]);
    assert_eq!(with_status(&recs, JobStatus::CacheHit), all(&m), "{err}");
    for r in &recs {
        assert_eq!(r.cache, Some(thinlto_backend::cache::Tier::Remote), "{r:?}");
    }
    let n = m.bitcode().count();
    assert!(
        err.contains(&format!("({n} remote")) || err.contains(&format!("0 local, {n} remote")),
        "{err}"
    );
    assert_eq!(native_files(&b, &m), cold);
    // The hits' records keep what the compiles read (the extras the
    // compile actions were keyed by, digested again here): a front-end
    // object rebuilt with the same bitcode costs nothing.
    touch_core(&b);
    let (err, recs) = cached(&b, local_b.path(), &[&remote]);
    assert_eq!(with_status(&recs, JobStatus::UpToDate), all(&m), "{err}");
    // The hits were copied to the local cache: the next run needs no server.
    let (_, recs) = cached(&b, local_b.path(), &["-B"]);
    assert_eq!(with_status(&recs, JobStatus::CacheHit), all(&m));

    // An .incbin'd file changes on that machine: never the stale object
    // from the remote cache either.
    let blob = "kernel/config_blob.thinlto-native.o";
    set_config_data(&b, "CONFIG_REMOTE=y\n");
    let local_c = tempfile::tempdir().unwrap();
    let (err, recs) = cached(&b, local_c.path(), &["-B", &remote]);
    assert!(
        with_status(&recs, JobStatus::Built).contains(&"kernel/config_blob.o".to_string()),
        "{recs:?}\n{err}"
    );
    let changed = std::fs::read(b.join(blob)).unwrap();
    assert_ne!(changed, std::fs::read(a.path().join(blob)).unwrap());
    // ...and the first machine, still at the old content, still hits.
    let local_d = tempfile::tempdir().unwrap();
    let (_, recs) = cached(a.path(), local_d.path(), &["-B", &remote]);
    assert_eq!(with_status(&recs, JobStatus::CacheHit), all(&m));
    assert_eq!(native_files(a.path(), &m), cold);

    // A server that is gone: said once, and the build goes on.
    drop(bg);
    let (err, recs) = cached(a.path(), local_d.path(), &["-B", &remote, "--no-summary"]);
    assert_eq!(with_status(&recs, JobStatus::CacheHit), all(&m), "{err}");
    let e = tempfile::tempdir().unwrap();
    let (err, recs) = cached(a.path(), e.path(), &["-B", &remote]);
    assert_eq!(with_status(&recs, JobStatus::Built), all(&m), "{err}");
    assert!(err.contains("remote cache"), "{err}");
}

/// The store's upkeep (`cache prune`, `cache clear`, `cache stats`, and
/// the prune every build does) never follows a link out of the store and
/// never removes a file the store did not write.
#[test]
fn upkeep_leaves_what_links_point_to_and_foreign_files_alone() {
    let t = sample_tree();
    let cache = tempfile::tempdir().unwrap();
    let m = thin_link(t.path());
    cached(t.path(), cache.path(), &[]);
    // Outside the store: files named as blobs are, reached through linked
    // fan directories (one named as the store names them, one not).
    let blobs = cache.path().join("backend-v1/blobs");
    let hex_fan = (0..=255)
        .map(|i| format!("{i:02x}"))
        .find(|f| !blobs.join(f).exists())
        .unwrap();
    let fans = [hex_fan.as_str(), "zz"];
    let outside = tempfile::tempdir().unwrap();
    let victims: Vec<PathBuf> = fans
        .iter()
        .map(|fan| {
            let name = format!("{fan}{}", "e".repeat(62));
            let p = outside.path().join(name);
            std::fs::write(&p, vec![1u8; 100_000]).unwrap();
            p
        })
        .collect();
    for fan in fans {
        std::os::unix::fs::symlink(outside.path(), blobs.join(fan)).unwrap();
    }
    // A foreign file in a fan directory of the store.
    let fan = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .find(|e| e.file_type().unwrap().is_dir())
        .unwrap()
        .path();
    let foreign = fan.join("README");
    std::fs::write(&foreign, b"not the cache's").unwrap();
    let intact = |when: &str| {
        for v in &victims {
            assert_eq!(std::fs::read(v).unwrap().len(), 100_000, "{when}: {v:?}");
        }
        assert!(foreign.exists(), "{when}");
    };

    let before = stats(cache.path())["usage"]["bytes"].as_u64().unwrap();
    let own: u64 = store_file(cache.path(), "manifests")
        .iter()
        .chain(&store_file(cache.path(), "blobs"))
        .filter(|p| {
            let fan = p.parent().unwrap().file_name().unwrap();
            !fans.iter().any(|f| fan == *f) && !p.ends_with("README")
        })
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    assert_eq!(before, own, "stats counts only the store's own files");
    // A build that stores something (one blob gone: one compile) with a
    // tiny size limit prunes at its end.
    std::fs::remove_file(blob_of(cache.path(), &native_files(t.path(), &m)[0].1)).unwrap();
    cached(t.path(), cache.path(), &["-B", "--cache-size", "1K"]);
    intact("after a build's prune");
    let out = run_ok(
        Command::new(bin("thinlto-backend"))
            .args(["cache", "prune", "--max-size", "1", "--cache-dir"])
            .arg(cache.path()),
    );
    intact(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(stats(cache.path())["usage"]["bytes"], 0);
    run_ok(
        Command::new(bin("thinlto-backend"))
            .args(["cache", "clear", "--cache-dir"])
            .arg(cache.path()),
    );
    intact("after clear");
}

/// Rewrites every manifest of the store with `edit`.
fn edit_manifests(cache: &Path, edit: impl Fn(&mut serde_json::Value)) {
    for p in store_file(cache, "manifests") {
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    }
}

#[test]
fn a_manifest_with_an_absurd_blob_size_is_a_miss() {
    let t = sample_tree();
    let cache = tempfile::tempdir().unwrap();
    let m = thin_link(t.path());
    cached(t.path(), cache.path(), &[]);
    let cold = native_files(t.path(), &m);
    // Sizes no file has, one a memory allocation cannot hold.
    edit_manifests(cache.path(), |v| {
        for variant in v["variants"].as_array_mut().unwrap() {
            variant["native"]["size"] = serde_json::json!(1u64 << 62);
        }
    });
    let (err, recs) = cached(t.path(), cache.path(), &["-B"]);
    assert_eq!(with_status(&recs, JobStatus::Built), all(&m), "{err}");
    assert_eq!(native_files(t.path(), &m), cold);
    // The entries were replaced by good ones.
    let (_, recs) = cached(t.path(), cache.path(), &["-B"]);
    assert_eq!(with_status(&recs, JobStatus::CacheHit), all(&m));
}

#[test]
fn an_unusable_cache_directory_is_said_once_and_the_build_goes_on() {
    let t = sample_tree();
    let m = thin_link(t.path());
    let (_, recs) = backend(t.path(), &["-B", "--no-cache"]);
    assert_eq!(with_status(&recs, JobStatus::Built), all(&m));
    let without = native_files(t.path(), &m);
    // Places even root cannot make a directory in: /proc, /sys, and a file
    // where the directory should be.
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    for dir in [
        PathBuf::from("/proc/thinlto-dist-cache"),
        PathBuf::from("/sys/thinlto-dist-cache"),
        file.clone(),
    ] {
        for n in native_files(t.path(), &m) {
            std::fs::remove_file(t.path().join(n.0)).unwrap();
        }
        let (err, recs) = cached(t.path(), &dir, &["-B"]);
        assert_eq!(with_status(&recs, JobStatus::Built), all(&m), "{err}");
        assert_eq!(native_files(t.path(), &m), without, "{dir:?}");
        let said: Vec<&str> = err.lines().filter(|l| l.contains("cache")).collect();
        assert_eq!(said.len(), 1, "{dir:?}: said once:\n{err}");
        assert!(
            said[0].contains(&dir.display().to_string()) && said[0].contains("without the cache"),
            "{}",
            said[0]
        );
    }
}

const BLOB: &str = "kernel/config_blob.o";
const BLOB_NATIVE: &str = "kernel/config_blob.thinlto-native.o";

/// The native of config_blob.o as a build without the cache makes it now.
fn uncached_blob(tree: &Path, cache: &Path) -> Vec<u8> {
    cached(tree, cache, &["-B", "--no-cache", "--only", BLOB]);
    std::fs::read(tree.join(BLOB_NATIVE)).unwrap()
}

/// The `.incbin`'d file reached through a symlink: retargeting the link
/// is a change (the key follows the path as the assembler opened it).
fn a_retargeted_incbin_link_is_a_miss(extra: &[&str]) {
    let t = sample_tree();
    let cache = tempfile::tempdir().unwrap();
    thin_link(t.path());
    let kernel = t.path().join("kernel");
    std::fs::rename(kernel.join("config_data.txt"), kernel.join("data-a.txt")).unwrap();
    std::fs::write(kernel.join("data-b.txt"), "CONFIG_THROUGH_B=y\n").unwrap();
    std::os::unix::fs::symlink("data-a.txt", kernel.join("config_data.txt")).unwrap();
    let mut args = vec!["-B", "--only", BLOB];
    args.extend_from_slice(extra);
    let (err, recs) = cached(t.path(), cache.path(), &args);
    assert_eq!(status_of(&recs, BLOB), JobStatus::Built, "{err}");
    let (err, recs) = cached(t.path(), cache.path(), &args);
    assert_eq!(
        status_of(&recs, BLOB),
        JobStatus::CacheHit,
        "stored:\n{err}"
    );
    let through_a = std::fs::read(t.path().join(BLOB_NATIVE)).unwrap();

    std::fs::remove_file(kernel.join("config_data.txt")).unwrap();
    std::os::unix::fs::symlink("data-b.txt", kernel.join("config_data.txt")).unwrap();
    let (err, recs) = cached(t.path(), cache.path(), &args);
    assert_eq!(status_of(&recs, BLOB), JobStatus::Built, "{err}");
    let through_b = std::fs::read(t.path().join(BLOB_NATIVE)).unwrap();
    assert_ne!(through_a, through_b);
    assert_eq!(through_b, uncached_blob(t.path(), cache.path()));
}

#[test]
fn a_retargeted_incbin_link_is_a_miss_plain() {
    a_retargeted_incbin_link_is_a_miss(&["--no-warm"]);
}

#[test]
fn a_retargeted_incbin_link_is_a_miss_warm() {
    a_retargeted_incbin_link_is_a_miss(&["--warm"]);
}

/// `-fno-integrated-as`: the driver spawns `as`, which reads the
/// `.incbin`'d file. The compile is stored (the `.s` it wrote itself is no
/// input), its entry has the file, and the `as` that PATH or
/// COMPILER_PATH pick is part of the key.
fn an_external_assembler_is_traced(extra: &[&str]) {
    let t = sample_tree();
    append_line(
        &t.path().join("kernel/Kbuild"),
        "CFLAGS_config_blob.o += -fno-integrated-as",
    );
    rebuild_fe(t.path());
    thin_link(t.path());
    let cache = tempfile::tempdir().unwrap();
    let mut args = vec!["-B", "--only", BLOB];
    args.extend_from_slice(extra);
    let (err, recs) = cached(t.path(), cache.path(), &args);
    assert_eq!(status_of(&recs, BLOB), JobStatus::Built, "{err}");
    assert!(!err.contains("not stored"), "{err}");
    let (err, recs) = cached(t.path(), cache.path(), &args);
    assert_eq!(
        status_of(&recs, BLOB),
        JobStatus::CacheHit,
        "stored:\n{err}"
    );

    set_config_data(t.path(), "CONFIG_ASSEMBLED_BY_AS=y\n");
    let (err, recs) = cached(t.path(), cache.path(), &args);
    assert_eq!(status_of(&recs, BLOB), JobStatus::Built, "{err}");
    let built = std::fs::read(t.path().join(BLOB_NATIVE)).unwrap();
    assert_eq!(built, uncached_blob(t.path(), cache.path()));

    // Another `as` first on PATH, or in COMPILER_PATH: not the entry of
    // the one the first runs used.
    let bin_dir = tempfile::tempdir().unwrap();
    script(
        &bin_dir.path().join("as"),
        "#!/bin/sh\n# another assembler\nexec /usr/bin/as \"$@\"\n",
    );
    let mut path = bin_dir.path().as_os_str().to_owned();
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap());
    let (err, recs) = cached_env(t.path(), cache.path(), &args, &[("PATH", &path)]);
    assert_eq!(status_of(&recs, BLOB), JobStatus::Built, "{err}");
    let dir = bin_dir.path().as_os_str();
    let (err, recs) = cached_env(t.path(), cache.path(), &args, &[("COMPILER_PATH", dir)]);
    assert_eq!(status_of(&recs, BLOB), JobStatus::Built, "{err}");
}

#[test]
fn an_external_assembler_is_traced_plain() {
    an_external_assembler_is_traced(&["--no-warm"]);
}

#[test]
fn an_external_assembler_is_traced_warm() {
    an_external_assembler_is_traced(&["--warm"]);
}

/// A file the compile read, changed after it read it (by the compiler
/// wrapper, after the compile): its digest now is not what the object was
/// made from, so the result is not stored.
#[test]
fn a_file_changed_during_its_compile_is_not_stored() {
    let t = sample_tree();
    thin_link(t.path());
    let cache = tempfile::tempdir().unwrap();
    let cc = t.path().join("mutating-cc");
    script(
        &cc,
        &format!(
            "#!/bin/sh\n{} \"$@\" || exit\nif [ -e mutate ]; then printf 'CONFIG_MUTATED=y\\n' > kernel/config_data.txt; fi\n",
            toolchain().cc.spelled
        ),
    );
    std::fs::write(t.path().join("mutate"), "").unwrap();
    let cc_arg = format!("--cc={}", cc.display());
    let args = ["-B", "--only", BLOB, &cc_arg];
    let (first_err, recs) = cached(t.path(), cache.path(), &args);
    assert_eq!(status_of(&recs, BLOB), JobStatus::Built, "{first_err}");
    std::fs::remove_file(t.path().join("mutate")).unwrap();
    let (err, recs) = cached(t.path(), cache.path(), &args);
    assert_eq!(status_of(&recs, BLOB), JobStatus::Built, "{err}");
    assert!(first_err.contains("changed while"), "{first_err}");
    assert_eq!(
        std::fs::read(t.path().join(BLOB_NATIVE)).unwrap(),
        uncached_blob(t.path(), cache.path())
    );
    // Unchanged during that compile: stored.
    let (stored_err, _) = (err, ());
    let (err, recs) = cached(t.path(), cache.path(), &args);
    assert_eq!(
        status_of(&recs, BLOB),
        JobStatus::CacheHit,
        "{err}\nthe storing run:\n{stored_err}"
    );
}

/// A compiler plugin (loaded by the dynamic loader, which no trace sees)
/// and `--debug` (clang's -g: the output records the working directory)
/// are in the key.
#[test]
fn plugins_and_debug_are_in_the_key() {
    let t = sample_tree();
    let plugin_c = t.path().join("plugin.c");
    let build_plugin = |text: &str| {
        std::fs::write(&plugin_c, text).unwrap();
        run_ok(
            Command::new(&toolchain().cc.spelled)
                .args(["-shared", "-fPIC", "-o"])
                .arg(t.path().join("plugin.so"))
                .arg(&plugin_c),
        );
    };
    build_plugin("int plugin_version = 1;\n");
    let kbuild = t.path().join("kernel/Kbuild");
    append_line(&kbuild, "CFLAGS_config_blob.o += -fplugin=./plugin.so");
    append_line(&kbuild, "CFLAGS_core.o += --debug");
    rebuild_fe(t.path());
    thin_link(t.path());
    let cache = tempfile::tempdir().unwrap();
    let args = ["-B", "--only", BLOB, "--only", "kernel/core.o"];
    let (err, recs) = cached(t.path(), cache.path(), &args);
    assert_eq!(status_of(&recs, BLOB), JobStatus::Built, "{err}");
    let (err, recs) = cached(t.path(), cache.path(), &args);
    assert_eq!(status_of(&recs, BLOB), JobStatus::CacheHit, "{err}");
    assert_eq!(
        status_of(&recs, "kernel/core.o"),
        JobStatus::CacheHit,
        "{err}"
    );

    build_plugin("int plugin_version = 2;\n");
    let (err, recs) = cached(t.path(), cache.path(), &args);
    assert_eq!(status_of(&recs, BLOB), JobStatus::Built, "{err}");

    // Another checkout: core.o's debug info names its directory.
    let other_dir = tempfile::tempdir().unwrap();
    let other = other_dir.path().join("checkout");
    xtask::flow::copy_fe_tree(t.path(), &other).unwrap();
    thin_link(&other);
    let (err, recs) = cached(&other, cache.path(), &args);
    assert_eq!(status_of(&recs, "kernel/core.o"), JobStatus::Built, "{err}");
}

/// The record of the job of `object`, as text.
fn record_of(tree: &Path, object: &str) -> String {
    let native = thinlto_backend::job::native_of(object);
    let (dir, name) = native.rsplit_once('/').unwrap();
    std::fs::read_to_string(tree.join(dir).join(format!(".{name}.cmd"))).unwrap()
}

/// make rebuilds kernel/core.c's object with the same bitcode (a touched
/// source): its bytes equal, its mtime new.
fn touch_core(tree: &Path) {
    std::thread::sleep(std::time::Duration::from_millis(20));
    let core_c = tree.join("kernel/core.c");
    let before = std::fs::read(tree.join("kernel/core.o")).unwrap();
    std::fs::write(&core_c, std::fs::read(&core_c).unwrap()).unwrap();
    rebuild_fe(tree);
    assert_eq!(before, std::fs::read(tree.join("kernel/core.o")).unwrap());
    thin_link(tree);
}

/// After a run whose natives all came from the local cache, a front-end
/// object rebuilt with the same bitcode costs nothing: each hit's record
/// keeps what its compile read (the variant's extras, checked against the
/// files), as a traced local compile's does. (Before, the record had no
/// reads, and the object's job and every importer's ran again.) An
/// `.incbin`'d file that changes is still caught after the hits.
#[test]
fn a_touch_after_cache_hits_reruns_nothing_and_an_incbin_change_still_reruns() {
    let t = sample_tree();
    let cache = tempfile::tempdir().unwrap();
    let m = thin_link(t.path());
    cached(t.path(), cache.path(), &[]);
    let (err, recs) = cached(t.path(), cache.path(), &["-B"]);
    assert_eq!(with_status(&recs, JobStatus::CacheHit), all(&m), "{err}");
    let blob = record_of(t.path(), "kernel/config_blob.o");
    assert!(
        blob.lines().any(|l| l == "# thinlto-dist: traced")
            && blob.contains("# thinlto-dist: read kernel/config_data.txt "),
        "{blob}"
    );

    touch_core(t.path());
    let (err, recs) = cached(t.path(), cache.path(), &[]);
    assert_eq!(
        with_status(&recs, JobStatus::UpToDate),
        all(&m),
        "{err}\n{recs:?}"
    );

    let first = std::fs::read(t.path().join("kernel/config_blob.thinlto-native.o")).unwrap();
    set_config_data(t.path(), "CONFIG_TOUCHED=y\n");
    let (err, recs) = cached(t.path(), cache.path(), &[]);
    let r = recs
        .iter()
        .find(|r| r.object == "kernel/config_blob.o")
        .unwrap();
    assert_eq!(r.status, JobStatus::Built, "{recs:?}\n{err}");
    assert!(
        r.reason
            .contains("a file its last compile read changed: kernel/config_data.txt"),
        "{r:?}"
    );
    assert_ne!(
        first,
        std::fs::read(t.path().join("kernel/config_blob.thinlto-native.o")).unwrap()
    );
    let o = stage4(t.path());
    let out =
        xtask::sample::reference::run_harness(toolchain(), t.path(), &o, &t.path().join("out/h"))
            .unwrap();
    assert!(out.contains("blob: size=17 "), "{out}");
}
