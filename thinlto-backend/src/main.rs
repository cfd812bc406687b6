use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use thinlto_backend::cache::local::Sharing;
use thinlto_backend::cache::CacheOptions;
use thinlto_backend::cli::{CacheAction, Cli, DtltoArgs, EngineArgs, RunArgs, Verb};
use thinlto_backend::config::{self, Config, Mode, Warm};
use thinlto_backend::engine::plan::read_front_ends;
use thinlto_backend::engine::scheduler;
use thinlto_backend::engine::{self, stdout_error, Outcome};
use thinlto_backend::eprintln_one_write;
use thinlto_backend::job::{inputs_from_index, inputs_from_manifest, JobInput};
use thinlto_backend::reapi::RemoteOptions;
use thinlto_backend::signals;
use thinlto_index::toolchain::ToolEnv;
use thinlto_index::{Manifest, Toolchain, ToolchainArgs};

fn main() -> ExitCode {
    // Still single-threaded: the header secret leaves the environment
    // before any compiler could inherit it.
    let header_env = thinlto_backend::remote_headers::take_env();
    // Before any parsing: every word after `wrap` belongs to the compiler.
    if let Some(argv) = thinlto_backend::wrap::wrap_argv() {
        thinlto_backend::wrap::main(argv)
    }
    if let Err(e) = signals::install_signal_handlers() {
        eprintln_one_write!("thinlto-backend: error: cannot handle signals: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let result = match cli.verb {
        Some(Verb::Archive { order, index, o }) => {
            archive(&order, &index, &o).map(|_| ExitCode::SUCCESS)
        }
        Some(Verb::Wrap { command }) => thinlto_backend::wrap::main(command),
        Some(Verb::Cache { action, cache_dir }) => cache_verb(action, cache_dir),
        Some(Verb::Dtlto(args)) => dtlto(args, header_env.as_deref()),
        #[cfg(feature = "remote")]
        Some(Verb::Worker(args)) => {
            thinlto_backend::worker::main(args, header_env.as_deref()).map(|()| ExitCode::SUCCESS)
        }
        None => backend(cli.run, header_env.as_deref()),
    };
    // A signal that came while cleanup was deferred: the cleanup is done,
    // die by it (whatever the result says, e.g. a job failed by it).
    signals::die_if_signalled();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln_one_write!("thinlto-backend: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cache_verb(action: CacheAction, dir: Option<PathBuf>) -> Result<ExitCode> {
    let dir = config::cache_dir(dir)?;
    let store = thinlto_backend::cache::local::LocalStore::new(&dir);
    let mut out = std::io::stdout().lock();
    match action {
        CacheAction::Stats { json } => {
            let (u, c) = (store.usage(), store.counters());
            if json {
                let v = serde_json::json!({
                    "dir": store.root(),
                    "usage": u,
                    "counters": c,
                });
                writeln!(out, "{v}")
            } else {
                let lookups = c.hits_local + c.hits_remote + c.misses;
                writeln!(
                    out,
                    "cache directory  {}\nentries          {} ({} objects, {:.1} MiB)\nhits             {} local, {} remote ({:.1} % of {} lookups)\nmisses           {}\nstored           {} ({} compiles not stored: untraceable)",
                    store.root().display(),
                    u.manifests,
                    u.blobs,
                    u.bytes as f64 / (1u64 << 20) as f64,
                    c.hits_local,
                    c.hits_remote,
                    if lookups > 0 {
                        100.0 * (c.hits_local + c.hits_remote) as f64 / lookups as f64
                    } else {
                        0.0
                    },
                    lookups,
                    c.misses,
                    c.stored,
                    c.uncacheable,
                )
            }
        }
        CacheAction::Prune { max_size } => {
            let max = max_size.unwrap_or(config::DEFAULT_CACHE_SIZE);
            let (n, bytes) = store.prune(max);
            writeln!(
                out,
                "removed {n} files ({:.1} MiB); {:.1} MiB left",
                bytes as f64 / (1u64 << 20) as f64,
                store.usage().bytes as f64 / (1u64 << 20) as f64
            )
        }
        CacheAction::Clear => {
            store.clear()?;
            writeln!(out, "cleared {}", store.root().display())
        }
    }
    .and_then(|_| out.flush())
    .map_err(stdout_error)?;
    Ok(ExitCode::SUCCESS)
}

fn read_list(p: &Path) -> Result<Vec<String>> {
    let text = if p == Path::new("-") {
        let mut t = String::new();
        std::io::stdin()
            .read_to_string(&mut t)
            .context("stdin: cannot read")?;
        t
    } else {
        std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?
    };
    Ok(text
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

fn archive(order: &Path, index: &Path, out: &Path) -> Result<()> {
    if order == Path::new("-") && index == Path::new("-") {
        bail!("--order - and --index -: only one list can come from stdin");
    }
    let cwd = std::env::current_dir()?;
    let (order, index) = (read_list(order)?, read_list(index)?);
    // The write goes through a temporary that a signal must not leave
    // behind: the signal waits until the archive is renamed into place (or
    // the temporary removed), then main dies by it.
    let _deferred = signals::defer_signals();
    thinlto_backend::archive::write_final_archive(out, &order, &index, &cwd)?;
    Ok(())
}

/// kbuild's flags, as the engine's [`Config`]; every default comes from
/// [`thinlto_backend::config`].
/// `header_env`: the value $THINLTO_REMOTE_HEADERS had.
fn config(run: &RunArgs, header_env: Option<&std::ffi::OsStr>) -> Result<Config> {
    Ok(Config {
        toolchain: run.toolchain.clone(),
        mode: if run.explain {
            Mode::Explain
        } else if run.dry_run {
            Mode::DryRun
        } else {
            Mode::Build
        },
        only: run.only.clone(),
        always_make: run.always_make,
        ..engine_config(&run.engine, header_env)?
    })
}

/// The engine's flags, as a [`Config`] that builds every job it is given
/// with the compiler it is given (what kbuild's front end refines).
fn engine_config(args: &EngineArgs, header_env: Option<&std::ffi::OsStr>) -> Result<Config> {
    let remote_url = args.remote_cache.clone().filter(|u| !u.is_empty());
    let cache_on = args.cache || config::env_switch("THINLTO_CACHE")?.unwrap_or(false);
    let use_cache =
        !args.no_cache && (cache_on || args.cache_dir.is_some() || remote_url.is_some());
    // A cache that cannot be had (no directory; see engine::run for one
    // that cannot be opened) is said once, and the build goes on without
    // it: the cache only saves time, it never decides the result.
    let dir = match use_cache.then(|| config::cache_dir(args.cache_dir.clone())) {
        Some(Err(e)) => {
            eprintln_one_write!("thinlto-backend: cache: {e:#}; building without the cache");
            None
        }
        Some(Ok(dir)) => Some(dir),
        None => None,
    };
    // The same server settings (instance, headers, TLS) for the cache and
    // the executor; the headers are read only when a URL needs them.
    let remote_options = |url: String| -> Result<RemoteOptions> {
        Ok(RemoteOptions {
            url,
            instance: args.remote_instance.clone(),
            headers: thinlto_backend::remote_headers::gather(
                header_env,
                &args.remote_header,
                args.remote_header_file.as_slice(),
            )?,
            tls_ca: args.remote_tls_ca.clone(),
        })
    };
    let remote = remote_url.map(remote_options).transpose()?;
    let remote_exec = args
        .remote_exec
        .clone()
        .filter(|u| !u.is_empty())
        .map(|url| -> Result<config::RemoteExecOptions> {
            Ok(config::RemoteExecOptions {
                remote: remote_options(url)?,
                jobs: args
                    .remote_jobs
                    .unwrap_or(thinlto_backend::exec::DEFAULT_REMOTE_JOBS),
                batch: args.remote_batch,
                queued_notice: std::time::Duration::from_secs(args.remote_queued_notice),
            })
        })
        .transpose()?;
    let shared = args.cache_shared || config::env_switch("THINLTO_CACHE_SHARED")?.unwrap_or(false);
    let cache = dir.map(|dir| CacheOptions {
        dir,
        sharing: if shared {
            Sharing::Shared
        } else {
            Sharing::Private
        },
        max_size: args.cache_size.unwrap_or(config::DEFAULT_CACHE_SIZE),
        remote,
    });
    Ok(Config {
        toolchain: ToolchainArgs::default(),
        jobs: args.jobs,
        keep_going: args.keep_going,
        verbosity: config::verbosity(args.quiet, args.verbose),
        summary: !args.no_summary,
        mode: Mode::Build,
        only: Vec::new(),
        always_make: false,
        warm: Warm::from_flags(args.warm, args.no_warm)?,
        cache,
        remote_exec,
    })
}

/// The jobs' inputs: the index file of --index, else the manifest of
/// `thinlto-index link` on stdin.
fn read_inputs(index: Option<&Path>) -> Result<Vec<JobInput>> {
    match index {
        // The index from stdin: the same reader, on the same bytes.
        Some(p) if p == Path::new("-") => inputs_from_index(Path::new("/dev/stdin")),
        Some(p) => inputs_from_index(p),
        None => {
            if std::io::stdin().is_terminal() {
                bail!("no input: pipe the manifest of `thinlto-index link` to stdin, or give --index FILE");
            }
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the manifest from stdin")?;
            let m: Manifest =
                serde_json::from_str(&text).context("stdin is not a thinlto-index manifest")?;
            Ok(inputs_from_manifest(&m))
        }
    }
}

/// `thinlto-backend dtlto`. `header_env`: the value $THINLTO_REMOTE_HEADERS had.
fn dtlto(args: DtltoArgs, header_env: Option<&std::ffi::OsStr>) -> Result<ExitCode> {
    // Taken first: the descriptors MAKEFLAGS names must not be reused.
    let jobserver = scheduler::jobserver_from_env();
    let mut cfg = engine_config(&args.engine, header_env)?;
    (cfg.verbosity, cfg.summary) =
        config::dtlto_verbosity(args.engine.verbose, args.engine.no_summary);
    let mut records: Box<dyn Write + Send> = match &args.records {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("{}: cannot create", p.display()))?,
        )),
        None => Box::new(std::io::sink()),
    };
    Ok(
        match thinlto_backend::dtlto::run(&cfg, &args.json, jobserver, &mut records)? {
            Outcome::Success => ExitCode::SUCCESS,
            Outcome::Failed | Outcome::Interrupted(_) => ExitCode::FAILURE,
        },
    )
}

/// `header_env`: the value $THINLTO_REMOTE_HEADERS had.
fn backend(args: RunArgs, header_env: Option<&std::ffi::OsStr>) -> Result<ExitCode> {
    // Taken first: the descriptors MAKEFLAGS names must not be reused.
    let jobserver = scheduler::jobserver_from_env();
    if args.toolchain.print_toolchain {
        // With --index, CC may come from the records of the tree it names.
        let env = match &args.index {
            Some(index) => engine::cc_env(
                &args.toolchain,
                &read_front_ends(inputs_from_index(index)?)?,
            ),
            None => ToolEnv::from_process(),
        };
        let mut tc = Toolchain::resolve_in(&args.toolchain, &env)?;
        tc.probe()?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string_pretty(&tc)?)
            .and_then(|_| out.flush())
            .map_err(stdout_error)?;
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = config(&args, header_env)?;
    let inputs = read_inputs(args.index.as_deref())?;
    let mut stdout = std::io::stdout();
    Ok(match engine::run(&cfg, inputs, jobserver, &mut stdout)? {
        Outcome::Success => ExitCode::SUCCESS,
        // For Interrupted, main dies by the signal once this returns.
        Outcome::Failed | Outcome::Interrupted(_) => ExitCode::FAILURE,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
