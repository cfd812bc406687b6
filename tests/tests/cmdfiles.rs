//! `.cmd` file hardening across the tools: a `#SYMVER` line that modpost
//! skips must not cost the backend anything.

use modpost_ir::CrcRecord;
use thinlto_cmdparse::CmdRecord;
use thinlto_dist_tests::*;

/// One malformed `#SYMVER` line (modpost skips it, the reference's `sed`
/// never reads it) used to stop `thinlto-backend` before any job ran.
#[test]
fn a_malformed_symver_line_stops_no_backend_job() {
    let t = sample_tree();
    let cmd = t.path().join("lib/.crc_util.o.cmd");
    let mut text = std::fs::read_to_string(&cmd).unwrap();
    assert!(text.contains("\n#SYMVER "), "the file has CRCs to keep");
    text.push_str("#SYMVER bogus notanumber\n");
    std::fs::write(&cmd, text).unwrap();

    // thinlto-cmdparse: the flags, the good CRCs, a warning naming the line.
    let out = run_ok(tool("thinlto-cmdparse", t.path()).arg("lib/crc_util.o"));
    let rec: CmdRecord = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rec.error, None);
    assert!(rec.c_flags.is_some_and(|f| f.iter().any(|w| w == "-O2")));
    let symbols: Vec<String> = rec.symvers.unwrap().into_iter().map(|s| s.symbol).collect();
    assert!(symbols.contains(&"sample_crc8".to_string()), "{symbols:?}");
    assert!(!symbols.contains(&"bogus".to_string()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: lib/.crc_util.o.cmd:") && err.contains("#SYMVER bogus notanumber"),
        "{err}"
    );

    let m = thin_link(t.path());
    let (out, recs) = backend(t.path(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        with_status(&recs, JobStatus::Built).len(),
        m.bitcode().count(),
        "{err}"
    );
    assert!(t.path().join("lib/crc_util.thinlto-native.o").is_file());

    // modpost-ir reads the same file as modpost does: the bad line is
    // skipped silently, every other CRC of the tree is still found.
    stage4(t.path());
    let out = run_ok(tool("modpost-ir", t.path()).args(["crcs", "--archive", "out/vmlinux.a"]));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let crcs: Vec<CrcRecord> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(crcs.len(), 18);
    assert!(crcs.iter().all(|c| c.symbol != "bogus"));
    assert!(crcs
        .iter()
        .any(|c| c.cmd_file == "out/../lib/.crc_util.o.cmd" && c.symbol == "sample_crc8"));
}
