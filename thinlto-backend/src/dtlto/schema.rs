//! The JSON file lld's DTLTO writes for its distributor (lld ≥ 21,
//! `--thinlto-distributor=`), as serde types, and its checks.
//!
//! ```json
//! {"common": {"linker_output": "out.o",
//!             "args": ["clang", "-c", "--target=…", "-O2", …],
//!             "inputs": []},
//!  "jobs": [{"args": ["a.o", "-fthinlto-index=a.1.123.native.o.thinlto.bc",
//!                     "-o", "a.1.123.native.o"],
//!            "inputs": ["a.o", "a.1.123.native.o.thinlto.bc", "b.o"],
//!            "outputs": ["a.1.123.native.o"]}]}
//! ```
//!
//! A job's command is `common.args + job.args`; its `inputs` are the
//! bitcode object first, its shard and the modules it imports; its
//! `outputs` the native object first. Fields not listed here are
//! tolerated (a later lld may add some); a listed field of the wrong type
//! is an error naming it (`jobs[3].args[1]: …`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct DistFile {
    pub common: Common,
    pub jobs: Vec<Job>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Common {
    /// The link's output (only informative).
    #[serde(default)]
    pub linker_output: Option<String>,
    /// The compiler, then the options every job shares.
    pub args: Vec<String>,
    /// Files every job reads.
    #[serde(default)]
    pub inputs: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Job {
    pub args: Vec<String>,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

/// One job as the engine needs it: what `Job` says, checked.
#[derive(Debug, Clone)]
pub struct CheckedJob {
    /// The bitcode object (`inputs[0]`).
    pub object: String,
    /// The `-fthinlto-index=` shard (one of `inputs`).
    pub shard: String,
    /// The native object (`outputs[0]`, the `-o` of `args`).
    pub native: String,
}

impl DistFile {
    /// Reads and checks `path`.
    pub fn read(path: &Path) -> Result<DistFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        Self::parse(&text).with_context(|| format!("{}: not a DTLTO job file", path.display()))
    }

    pub fn parse(text: &str) -> Result<DistFile> {
        let v: serde_json::Value =
            serde_json::from_str(text).context("not JSON (expected lld's DTLTO job file)")?;
        if !v.is_object() {
            bail!("expected a JSON object with \"common\" and \"jobs\"");
        }
        let common = v.get("common").context("no field \"common\"")?;
        let common = Common::deserialize(common).map_err(|e| field_error("common", common, &e))?;
        let jobs_v = v.get("jobs").context("no field \"jobs\"")?;
        let jobs_a = jobs_v
            .as_array()
            .context("\"jobs\": expected an array of jobs")?;
        let mut jobs = Vec::with_capacity(jobs_a.len());
        for (i, j) in jobs_a.iter().enumerate() {
            let name = format!("jobs[{i}]");
            jobs.push(Job::deserialize(j).map_err(|e| field_error(&name, j, &e))?);
        }
        let file = DistFile { common, jobs };
        if file.common.args.is_empty() {
            bail!("common.args: empty (expected the compiler first)");
        }
        Ok(file)
    }

    /// Checks job `i` (its object, shard and native, where the engine
    /// expects them).
    pub fn check(&self, i: usize) -> Result<CheckedJob> {
        let j = &self.jobs[i];
        let at = |f: &str| format!("jobs[{i}].{f}");
        let object = j
            .inputs
            .first()
            .with_context(|| {
                format!(
                    "{}: empty (expected the bitcode object first)",
                    at("inputs")
                )
            })?
            .clone();
        if !j.args.contains(&object) {
            bail!(
                "{}: does not name {object:?}, the first of {}",
                at("args"),
                at("inputs")
            );
        }
        let shard = j
            .args
            .iter()
            .find_map(|a| a.strip_prefix("-fthinlto-index="))
            .with_context(|| format!("{}: no -fthinlto-index=SHARD", at("args")))?
            .to_string();
        if !j.inputs.contains(&shard) {
            bail!("{}: does not list the shard {shard:?}", at("inputs"));
        }
        let native = j
            .outputs
            .first()
            .with_context(|| format!("{}: empty (expected the native object)", at("outputs")))?
            .clone();
        let o = j
            .args
            .windows(2)
            .rev()
            .find(|w| w[0] == "-o")
            .map(|w| &w[1]);
        if o != Some(&native) {
            bail!(
                "{}: its -o is {o:?}, not {native:?}, the first of {}",
                at("args"),
                at("outputs")
            );
        }
        // Further outputs: only what the compiler writes beside the
        // native (the split-DWARF file), which the engine knows.
        let mut argv = self.common.args.clone();
        argv.extend(j.args.iter().cloned());
        let dwo = crate::job::split_dwarf_file(&argv, Path::new(&native))
            .map(|p| p.to_string_lossy().into_owned());
        if let Some((k, o)) = j
            .outputs
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, o)| Some(*o) != dwo.as_ref())
        {
            bail!(
                "{}[{k}]: {o:?} is neither the native object nor its split-DWARF file",
                at("outputs")
            );
        }
        Ok(CheckedJob {
            object,
            shard,
            native,
        })
    }
}

/// serde's error for `value` (the part named `name`), with the field it
/// is about where serde's message does not say it.
fn field_error(name: &str, value: &serde_json::Value, e: &serde_json::Error) -> anyhow::Error {
    if !value.is_object() {
        return anyhow::anyhow!("{name}: expected an object");
    }
    // A field of the wrong type: name it, and the element.
    for field in ["args", "inputs", "outputs"] {
        let Some(v) = value.get(field) else { continue };
        let Some(items) = v.as_array() else {
            return anyhow::anyhow!("{name}.{field}: expected an array of strings");
        };
        if let Some(k) = items.iter().position(|x| !x.is_string()) {
            return anyhow::anyhow!("{name}.{field}[{k}]: expected a string, found {}", items[k]);
        }
    }
    if let Some(v) = value.get("linker_output") {
        if !v.is_string() && !v.is_null() {
            return anyhow::anyhow!("{name}.linker_output: expected a string");
        }
    }
    // A missing field: serde's message names it ("missing field `args`").
    anyhow::anyhow!("{name}: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"common":{"linker_output":"out.o","args":["clang-22","-c","-O2"],"inputs":[],"future":1},
      "jobs":[{"args":["a.o","-fthinlto-index=a.1.9.native.o.thinlto.bc","-o","a.1.9.native.o"],
               "inputs":["a.o","a.1.9.native.o.thinlto.bc","b.o"],"outputs":["a.1.9.native.o"],"extra":{}}],
      "version":7}"#;

    fn err(text: &str) -> String {
        match DistFile::parse(text).and_then(|f| f.check(0).map(|_| ())) {
            Ok(()) => panic!("{text}: accepted"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn reads_lld_s_file_and_tolerates_new_fields() {
        let f = DistFile::parse(GOOD).unwrap();
        let j = f.check(0).unwrap();
        assert_eq!(j.object, "a.o");
        assert_eq!(j.shard, "a.1.9.native.o.thinlto.bc");
        assert_eq!(j.native, "a.1.9.native.o");
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err("{").contains("not JSON"));
        assert!(err(r#"{"jobs":[]}"#).contains("\"common\""));
        assert!(err(r#"{"common":{"args":["cc"]}}"#).contains("\"jobs\""));
        assert!(
            err(r#"{"common":{"inputs":[]},"jobs":[]}"#).contains("common: missing field `args`")
        );
        assert!(err(&GOOD.replace(r#""-o","a"#, r#"3,"a"#))
            .contains("jobs[0].args[2]: expected a string"));
        assert!(
            err(&GOOD.replace(r#""outputs":["a.1.9.native.o"]"#, r#""outputs":"x""#))
                .contains("jobs[0].outputs: expected an array")
        );
        assert!(
            err(&GOOD.replace(r#""outputs":["a.1.9.native.o"]"#, r#""outputz":[]"#))
                .contains("jobs[0]: missing field `outputs`")
        );
        assert!(err(&GOOD.replace(r#""inputs":["a.o","#, r#""inputs":["#))
            .contains("jobs[0].args: does not name"));
        assert!(err(&GOOD.replace(
            r#""outputs":["a.1.9.native.o"]"#,
            r#""outputs":["a.1.9.native.o","x.o"]"#
        ))
        .contains("jobs[0].outputs[1]"));
        assert!(
            err(&GOOD.replace(r#""args":["clang-22","-c","-O2"]"#, r#""args":[]"#))
                .contains("common.args: empty")
        );
    }
}
