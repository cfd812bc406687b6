//! Builds the warm compiler's LD_PRELOAD shim (`src/warm/zygote.c`) into a
//! shared object that `src/warm.rs` embeds. With no working C compiler
//! (or a cross build without one for the target) the embedded shim is
//! empty and `--warm` falls back to plain spawns, saying so.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "src/warm/zygote.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("zygote.so");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    // The target's C compiler: CC_<target>, else (native builds) CC, else cc.
    let mut candidates: Vec<String> = std::env::var(format!("CC_{}", target.replace('-', "_")))
        .into_iter()
        .collect();
    if target == host {
        candidates.extend(std::env::var("CC"));
        candidates.push("cc".into());
    }
    println!("cargo:rerun-if-env-changed=CC_{}", target.replace('-', "_"));
    let ok = target.contains("linux")
        && candidates.iter().any(|cc| {
            Command::new(cc)
                .args(["-shared", "-fPIC", "-O2", "-fvisibility=hidden", "-o"])
                .arg(&out)
                .arg(src)
                .arg("-ldl")
                .status()
                .is_ok_and(|s| s.success())
        });
    if !ok {
        println!("cargo:warning=cannot build {src} (C compilers tried: {candidates:?}): --warm will fall back to plain spawns");
        std::fs::write(&out, b"").expect("writing an empty shim");
    }
}
