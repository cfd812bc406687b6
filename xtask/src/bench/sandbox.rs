//! `cargo xtask bench --sandbox-only`: what the farm worker's sandbox
//! costs a job (issue 25; goal: under 10 ms a job).
//!
//! The generated tree is built and thin-linked (with `--imports`); for its
//! first jobs, each compile runs as the worker runs it
//! (`thinlto_backend::worker::sandbox::run_compile`, in a fresh action
//! directory with its inputs copied in, not timed) four ways: on the warm
//! compiler or as a plain spawn, each sandboxed (the warm job entering
//! the view itself, the plain spawn under bwrap) and bare
//! (`--no-sandbox`). The four ways take turns job by job, so a machine
//! whose load drifts (this one is shared) weighs on each alike; the
//! report gives each way's median and mean wall time per job, and the
//! sandbox's cost as the difference of the means.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use thinlto_backend::worker::compilers;
use thinlto_backend::worker::policy::validate_compile;
use thinlto_backend::worker::sandbox::{run_compile, Limits, Sandbox, SandboxArgs};
use thinlto_backend::worker::stop::Stop;
use thinlto_index::Toolchain;

/// Runs the measurement; the report's markdown.
pub fn run(tc: &Toolchain, objects: usize, jobs_measured: usize, workdir: &Path) -> Result<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("--sandbox-only runs compiles as the worker does, as root (it switches uid)");
    }
    std::fs::create_dir_all(workdir)?;
    let workdir = std::path::absolute(workdir)?;
    let tree = workdir.join(format!("gen-{objects}"));
    crate::sample::fe::build(
        &crate::sample::fe::FeOptions {
            tree: tree.clone(),
            objects,
            jobs: crate::default_jobs(),
            saved_c_flags: false,
            quiet: true,
        },
        tc,
    )?;
    let bins = crate::flow::build_bins()?;
    let ldflags = crate::sample::tree::Tree::load(&tree)?.top.ldflags;
    std::fs::create_dir_all(tree.join("out"))?;
    crate::bench::measure::measure(
        bins.tool("thinlto-index", tc, &tree)
            .args(["order", "vmlinux.a"])
            .stdout(std::fs::File::create(tree.join("out/builtin.order"))?),
    )?;
    crate::bench::measure::measure(
        bins.tool("thinlto-index", tc, &tree)
            .args(["link", "--ldflags", &ldflags])
            .args(["-o", "out/vmlinux.thinlto-index", "--imports"])
            .arg("out/builtin.order")
            .stdout(std::fs::File::create(tree.join("out/manifest.json"))?),
    )?;
    let manifest: thinlto_index::Manifest =
        serde_json::from_slice(&std::fs::read(tree.join("out/manifest.json"))?)
            .context("out/manifest.json")?;

    // The compiler twice: as the warm compiler serves it (its word) and
    // by its path, which no zygote serves (a plain spawn).
    let word = tc.cc.spelled.clone();
    let by_path = tc.cc.path.display().to_string();
    let found = compilers::discover(&[word.clone(), by_path.clone()])?;
    let sandboxed = Sandbox::new(&args(false), &found)?;
    let bare = Sandbox::new(&args(true), &found)?;
    let _warm = thinlto_backend::warm::Warm::start(&word, true);
    let ways: [(&str, &str, &Sandbox); 4] = [
        ("warm compiler, sandboxed", &word, &sandboxed),
        ("warm compiler, no sandbox", &word, &bare),
        ("plain spawn, sandboxed (bwrap)", &by_path, &sandboxed),
        ("plain spawn, no sandbox", &by_path, &bare),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
    let actions = workdir.join("actions");
    let _ = std::fs::remove_dir_all(&actions);
    let mut n = 0;
    // Not the sample tree's config_blob nor what imports its asm: that
    // .incbin's a file an input root would have to carry besides.
    let plain_jobs = manifest.bitcode().filter(|o| {
        !o.object.contains("config_blob")
            && !o
                .imports
                .iter()
                .flatten()
                .any(|i| i.contains("config_blob"))
    });
    for job in plain_jobs.take(jobs_measured) {
        for (i, (_, cc, sandbox)) in ways.iter().enumerate() {
            n += 1;
            let dir = actions.join(format!("action-{n}"));
            let root = dir.join("root");
            let native = format!("{}.thinlto-native.o", job.object.trim_end_matches(".o"));
            let summary = job
                .summary
                .clone()
                .context("a bitcode job without a shard")?;
            let mut inputs = vec![job.object.clone(), summary.clone()];
            inputs.extend(job.imports.clone().unwrap_or_default());
            for p in &inputs {
                let to = root.join(p);
                std::fs::create_dir_all(to.parent().unwrap())?;
                if !to.exists() {
                    std::fs::copy(tree.join(p), &to).with_context(|| format!("copying {p}"))?;
                }
            }
            std::fs::create_dir_all(root.join(&native).parent().unwrap())?;
            sandbox.prepare(&dir, &root)?;
            let index = format!("-fthinlto-index={summary}");
            let argv: Vec<String> = [
                cc,
                "-x",
                "ir",
                "-fno-lto",
                "-Wno-unused-command-line-argument",
                &index,
                "-c",
                "-o",
                &native,
                &job.object,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let compile = validate_compile(&argv, &[], std::slice::from_ref(&native), &found)
                .map_err(|r| anyhow::anyhow!("{}: {r}", job.object))?;
            let limits = Limits::new(&args(false), None);
            let start = Instant::now();
            let out = run_compile(&compile, &root, sandbox, &limits, &Stop::default())?;
            times[i].push(start.elapsed().as_secs_f64() * 1000.0);
            if !out.status.success() || !root.join(&native).is_file() {
                bail!(
                    "{} ({}): {}\n{}",
                    job.object,
                    ways[i].0,
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            if (i < 2) != out.warm {
                bail!(
                    "{}: ran {} warm",
                    ways[i].0,
                    if out.warm { "" } else { "not" }
                );
            }
            std::fs::remove_dir_all(&dir)?;
        }
    }
    let stats = |v: &[f64]| -> (f64, f64) {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        (s[s.len() / 2], s.iter().sum::<f64>() / s.len() as f64)
    };
    let jobs = times[0].len();
    let mut text = format!(
        "{jobs} backend jobs of the generated tree ({objects} objects), each run four ways in turn by \
         `worker::sandbox::run_compile` as the worker runs it (inputs copied into a fresh root, not \
         timed; the four ways take turns job by job, so a change of the machine's load touches each alike):\n\n\
         | way | median ms/job | mean ms/job |\n|---|---:|---:|\n"
    );
    let mut means = Vec::new();
    for (i, (name, _, _)) in ways.iter().enumerate() {
        let (median, mean) = stats(&times[i]);
        means.push(mean);
        text.push_str(&format!("| {name} | {median:.1} | {mean:.1} |\n"));
    }
    text.push_str(&format!(
        "\nThe sandbox's cost per job (difference of the means): **{:.1} ms** on the warm compiler \
         (the job's unshare, binds, pivot_root, uid switch and fork into its pid namespace), \
         **{:.1} ms** for a plain spawn (bwrap). Goal: under 10 ms a job.\n",
        means[0] - means[1],
        means[2] - means[3]
    ));
    Ok(text)
}

fn args(no_sandbox: bool) -> SandboxArgs {
    SandboxArgs {
        no_sandbox,
        sandbox_id: thinlto_backend::worker::sandbox::DEFAULT_SANDBOX_ID,
        memory_limit: 16384,
    }
}
