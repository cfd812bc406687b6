//! `cargo xtask bench --cache`: the backend cache (`thinlto-backend
//! --cache`), on the generated tree and on a real kernel: stages 2–4 from
//! scratch with an empty cache (its overhead), a clean rebuild with a warm
//! local cache, a second checkout of the tree (another directory) with a
//! warm local cache, and a "second machine" (a fresh copy, an empty local
//! cache) with a warm Remote Execution API cache. Each against stages 2–4
//! from scratch without the cache, in the same run; every cached build's
//! natives are compared with a cold build's, byte for byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use thinlto_backend::JobStatus;
use thinlto_index::Toolchain;

use crate::bench::measure::Sample;
use crate::bench::ScenarioResult;
use crate::flow::{self, Bins, LinkPlan};

/// A tree whose front end is built, with its stage-2–4 plan.
pub struct CacheTree {
    pub tree: PathBuf,
    pub out: String,
    pub plan: LinkPlan,
}

/// Everything one series of scenarios needs.
pub struct CacheBench<'a> {
    /// "C" for the generated tree, "KC" for the kernel.
    pub label: &'a str,
    pub bins: &'a Bins,
    pub tc: &'a Toolchain,
    pub jobs: usize,
    pub runs: usize,
    /// Where the cache directories go.
    pub workdir: PathBuf,
    /// A running REAPI cache (`grpc://…`) for the second-machine scenario.
    pub remote: Option<String>,
}

/// One from-scratch run of stages 2–4: its time (modpost left out), the
/// jobs compiled and taken from the cache, and the natives' digests.
struct Run {
    sample: Sample,
    built: usize,
    hits: usize,
    natives: BTreeMap<String, Vec<u8>>,
}

impl CacheBench<'_> {
    fn stages(&self, t: &CacheTree, backend_args: &[String]) -> Result<Run> {
        crate::bench::clean_natives(&t.tree)?;
        let mut plan = t.plan.forced();
        plan.backend_args = backend_args.to_vec();
        let start = std::time::Instant::now();
        let run = flow::run_stages(self.bins, self.tc, &t.tree, &t.out, self.jobs, &plan)?;
        let modpost: f64 = run
            .stages
            .iter()
            .filter(|s| s.name.starts_with("modpost"))
            .map(|s| s.seconds)
            .sum();
        let mut natives = BTreeMap::new();
        for j in &run.jobs {
            let bytes = std::fs::read(t.tree.join(&j.native))?;
            natives.insert(j.native.clone(), bytes);
        }
        Ok(Run {
            sample: Sample {
                wall: start.elapsed().as_secs_f64() - modpost,
                cpu: 0.0,
                rss_kib: 0,
            },
            built: run.count(JobStatus::Built),
            hits: run.count(JobStatus::CacheHit),
            natives,
        })
    }

    fn say(&self, what: &str) {
        eprintln!("bench ({}): {what}", self.label);
    }

    /// The scenarios on `first` and its copy `second` (another directory).
    pub fn run(&self, first: &CacheTree, second: &CacheTree) -> Result<Vec<ScenarioResult>> {
        let local = self.workdir.join(format!("{}-cache", self.label));
        let dir_arg = |d: &Path| vec!["--cache-dir".to_string(), d.display().to_string()];
        let clear = |d: &Path| -> Result<()> {
            if d.exists() {
                std::fs::remove_dir_all(d)?;
            }
            Ok(())
        };
        let l = self.label;
        let mut cold = ScenarioResult::new(
            &format!("{l}1. Cache overhead: stages 2–4 from scratch with an empty local cache"),
            "ours: --cache-dir (emptied before each run)",
            "no cache",
        );
        let mut reference: Option<BTreeMap<String, Vec<u8>>> = None;
        let same = |what: &str, a: &BTreeMap<String, Vec<u8>>, b: &BTreeMap<String, Vec<u8>>| {
            if a != b {
                bail!("{what}: natives differ from the cold build's");
            }
            Ok(())
        };
        self.say("1. cold, with and without the cache");
        for _ in 0..self.runs {
            clear(&local)?;
            let r = self.stages(first, &dir_arg(&local))?;
            if r.hits != 0 {
                bail!("an empty cache had hits");
            }
            cold.ours.push(r.sample);
            let n = self.stages(first, &[])?;
            same("cold with the cache", &r.natives, &n.natives)?;
            cold.reference.push(n.sample);
            reference = Some(n.natives);
        }
        let reference = reference.expect("runs >= 1");
        let jobs = reference.len();
        cold.ours_wall_only = true;
        cold.reference_wall_only = true;
        cold.notes.push(format!("{jobs} backend jobs; natives byte-identical with and without the cache; target: overhead ≤ 5 % (ratio ≤ 1.05)"));

        self.say("2. clean rebuild, warm local cache");
        let mut rebuild = ScenarioResult::new(
            &format!("{l}2. Clean rebuild (natives and records removed), warm local cache"),
            "ours: --cache-dir (warm)",
            "no cache (the runs of the row above)",
        );
        rebuild.reference = cold.reference.clone();
        for _ in 0..self.runs {
            let r = self.stages(first, &dir_arg(&local))?;
            same("clean rebuild", &r.natives, &reference)?;
            rebuild.ours.push(r.sample);
            rebuild.notes = vec![format!(
                "{} of {jobs} jobs from the cache, {} compiled; natives byte-identical to the cold build; target: ≥ 10× faster, 0 compiles",
                r.hits, r.built
            )];
        }
        rebuild.ours_wall_only = true;
        rebuild.reference_wall_only = true;

        self.say("3. second checkout, warm local cache");
        let mut checkout = ScenarioResult::new(
            &format!("{l}3. A second checkout of the tree (another directory), warm local cache"),
            "ours: --cache-dir (warm, filled by the first tree)",
            "no cache, the second checkout from scratch",
        );
        let mut second_ref = None;
        for _ in 0..self.runs {
            let n = self.stages(second, &[])?;
            checkout.reference.push(n.sample);
            second_ref = Some(n.natives);
            let r = self.stages(second, &dir_arg(&local))?;
            same("second checkout", &r.natives, second_ref.as_ref().unwrap())?;
            checkout.ours.push(r.sample);
            checkout.notes = vec![format!(
                "{} of {jobs} jobs from the cache, {} compiled; natives byte-identical to a cold build of the second checkout",
                r.hits, r.built
            )];
        }
        checkout.ours_wall_only = true;
        checkout.reference_wall_only = true;
        let mut results = vec![cold, rebuild, checkout];

        if let Some(url) = &self.remote {
            self.say("4. second machine: empty local cache, warm remote cache");
            let remote_args = |d: &Path| {
                let mut v = dir_arg(d);
                v.extend(["--remote-cache".to_string(), url.clone()]);
                v
            };
            let mut upload = ScenarioResult::new(
                &format!("{l}4a. Filling the remote cache: stages 2–4 from scratch, empty local and remote caches"),
                "ours: --cache-dir (empty) --remote-cache (empty)",
                "no cache (the runs of row 1)",
            );
            upload.reference = results[0].reference.clone();
            let first_local = self.workdir.join(format!("{}-cache-a", self.label));
            clear(&first_local)?;
            let r = self.stages(first, &remote_args(&first_local))?;
            same("remote fill", &r.natives, &reference)?;
            upload.ours.push(r.sample);
            upload.ours_wall_only = true;
            upload.reference_wall_only = true;
            upload
                .notes
                .push("one run: the remote cache is filled once".into());
            let mut machine = ScenarioResult::new(
                &format!("{l}4. A second machine: a fresh copy of the tree, empty local cache, warm remote cache (BuildGrid on 127.0.0.1)"),
                "ours: --cache-dir (empty) --remote-cache (warm)",
                "no cache, the copy from scratch (the runs of row 3)",
            );
            machine.reference = results[2].reference.clone();
            let second_ref = second_ref.expect("runs >= 1");
            for i in 0..self.runs {
                let empty = self.workdir.join(format!("{}-cache-b{i}", self.label));
                clear(&empty)?;
                let r = self.stages(second, &remote_args(&empty))?;
                same("second machine", &r.natives, &second_ref)?;
                machine.ours.push(r.sample);
                machine.notes = vec![format!(
                    "{} of {jobs} jobs from the cache, {} compiled; natives byte-identical to a cold build",
                    r.hits, r.built
                )];
                clear(&empty)?;
            }
            machine.ours_wall_only = true;
            machine.reference_wall_only = true;
            results.push(upload);
            results.push(machine);
        }
        Ok(results)
    }
}
