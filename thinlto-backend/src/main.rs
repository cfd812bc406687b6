use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use thinlto_backend::cache::local::Sharing;
use thinlto_backend::cache::CacheOptions;
use thinlto_backend::config::{self, Config, Mode, Warm};
use thinlto_backend::engine::job::{inputs_from_index, inputs_from_manifest, JobInput};
use thinlto_backend::engine::plan::read_front_ends;
use thinlto_backend::engine::scheduler;
use thinlto_backend::engine::{self, stdout_error, Outcome};
use thinlto_backend::signals;
use thinlto_index::toolchain::ToolEnv;
use thinlto_index::{Manifest, Toolchain, ToolchainArgs};

/// Stage 3 of kbuild's distributed ThinLTO: every backend compile
/// (`$CC <flags> -x ir -fno-lto -Wno-unused-command-line-argument
/// -fthinlto-index=dir/foo.o.thinlto.bc -c -o dir/foo.thinlto-native.o
/// dir/foo.o`), in parallel and incrementally; and (`archive`) stage 4's
/// thin archive.
///
/// Input: the manifest of `thinlto-index link` on stdin, or --index with
/// the plain index file lld wrote. Flags come from each object's
/// `dir/.foo.o.cmd` (saved_c_flags_, else derived from savedcmd_).
///
/// A job runs when its native object is missing, its command changed, the
/// content of foo.o, foo.o.thinlto.bc or an imported module changed, or
/// make rebuilt foo.o (for inputs such as .incbin files that no digest
/// sees). Records go to dir/.foo.thinlto-native.o.cmd in kbuild's format.
///
/// With --cache (THINLTO_CACHE=1), a job that must run is first looked up
/// in the backend cache (local, then --remote-cache): a hit puts the stored
/// native in place ("HIT" instead of "CC").
///
/// With --remote-exec URL, the jobs that must compile run on a Remote
/// Execution API farm (workers: `thinlto-backend worker`); what the farm
/// cannot take compiles here ("RCC" lines for the farm's); with --explain,
/// each job that would compile says "on the farm" or "here: WHY". A signal
/// cancels the farm's operations in flight.
///
/// stdout: one JSON record per job, {"object","native","status","reason","seconds"},
/// status "built", "up-to-date", "cache-hit" (plus "cache": local|remote,
/// "key") or "failed"; a build also says "where": local|remote (and the
/// farm's "worker").
/// stderr: kbuild-style "  CC  dir/foo.thinlto-native.o" lines (-v or V=1:
/// full commands; -q: none), a progress bar on a terminal, a summary, and
/// always the compilers' warnings and errors.
///
/// A signal (INT, TERM, HUP) stops the running compilers, then the tool
/// dies by it. A closed stdout is an error (exit 1).
///
/// Examples (from the tree root):
///
///   thinlto-index link --imports builtin.order | thinlto-backend -j8
///   thinlto-backend --index vmlinux.thinlto-index --explain
///   thinlto-backend --index vmlinux.thinlto-index --only kernel/fork.o -v
///   THINLTO_CACHE=1 thinlto-backend --index vmlinux.thinlto-index
///   thinlto-backend --index vmlinux.thinlto-index --remote-cache grpc://cache:8980
///   thinlto-backend --index vmlinux.thinlto-index --remote-exec grpc://farm:8980 --cache
///   thinlto-backend worker --server grpc://farm:8980 -j 8     (on each farm machine)
///   thinlto-backend archive --order builtin.order --index vmlinux.thinlto-index -o vmlinux.a
///
/// In a Makefile, mark the recipe with `+` so that the tool shares make's
/// job slots:   +thinlto-backend --index vmlinux.thinlto-index
#[derive(Parser)]
#[command(version, verbatim_doc_comment, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    verb: Option<Verb>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Verb {
    /// Write the final thin archive: builtin.order with every object of the
    /// index replaced by its .thinlto-native.o (exact path match), byte
    /// for byte what `llvm-ar cDPrS --thin` writes
    Archive {
        /// builtin.order (`-`: from stdin)
        #[arg(long, value_name = "FILE")]
        order: PathBuf,
        /// The index file (`-`: from stdin)
        #[arg(long, value_name = "FILE")]
        index: PathBuf,
        #[arg(short, value_name = "ARCHIVE")]
        o: PathBuf,
    },
    /// A compiler wrapper for kbuild's own rules, as kbuild's CC:
    /// `make LLVM=-19 CC="thinlto-backend wrap clang-19" vmlinux`. A ThinLTO
    /// backend command is skipped when its native object is up to date by
    /// content (the rules above; record in dir/.N.digests.cmd); every other
    /// command is exec'd unchanged. THINLTO_WRAP_EXPLAIN=1 says why each
    /// backend command runs or not.
    Wrap {
        /// The compiler and its arguments
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// A REAPI farm worker: runs compile actions leased by a Remote Workers
    /// API server (BuildGrid's Bots service), hermetic or failed
    #[cfg(feature = "remote")]
    Worker(thinlto_backend::worker::WorkerArgs),
    /// A DTLTO distributor for lld (≥ 21): `ld.lld
    /// --thinlto-distributor=thinlto-backend --thinlto-distributor-arg=dtlto`
    /// (each further `--thinlto-distributor-arg=` is one of the options
    /// below). Runs the jobs of lld's JSON file on the engine: every
    /// output is what `common.args + job.args` writes, byte for byte.
    /// Quiet unless -v (lld's stdout and stderr are the user's terminal);
    /// the cache only with --cache or --cache-dir (or THINLTO_CACHE=1)
    Dtlto(DtltoArgs),
    /// The backend cache: what it holds, and its upkeep
    Cache {
        #[command(subcommand)]
        action: CacheAction,
        /// The cache directory [default: $THINLTO_CACHE_DIR, else
        /// $XDG_CACHE_HOME/thinlto-dist, else ~/.cache/thinlto-dist]
        #[arg(long, value_name = "DIR", global = true)]
        cache_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CacheAction {
    /// Print the directory, its entries and size, and the hit/miss counters
    /// of every run since the last clear (as JSON with --json)
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Remove the least recently used entries until the cache holds at most
    /// --max-size (builds do this themselves after storing)
    Prune {
        /// The limit [default: $THINLTO_CACHE_SIZE, else 5G]
        #[arg(long, value_name = "SIZE", env = "THINLTO_CACHE_SIZE", value_parser = parse_size)]
        max_size: Option<u64>,
    },
    /// Remove every entry and the counters
    Clear,
}

fn parse_size(s: &str) -> Result<u64, String> {
    thinlto_backend::cache::local::parse_size(s)
}

/// kbuild's front end: the engine's options and what picks the jobs.
#[derive(Args)]
struct RunArgs {
    /// The index file (one bitcode object per line; `-`: from stdin)
    /// instead of a manifest on stdin
    #[arg(long, value_name = "FILE")]
    index: Option<PathBuf>,
    /// Print the commands that would run, run nothing
    #[arg(long)]
    dry_run: bool,
    /// Say for every job why it would run or why it is up to date, run nothing
    #[arg(long)]
    explain: bool,
    /// Only this job (an object, its native object, or its summary)
    #[arg(long, value_name = "OBJECT")]
    only: Vec<String>,
    /// Run every job, up to date or not
    #[arg(short = 'B', long)]
    always_make: bool,
    #[command(flatten)]
    toolchain: ToolchainArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// The engine's options, shared by kbuild's front end and `dtlto` (a new
/// engine option goes here, and both have it).
#[derive(Args)]
struct EngineArgs {
    /// Parallel jobs [default: available cores; under make, make's jobserver]
    #[arg(short, long, value_name = "N")]
    jobs: Option<usize>,
    /// Keep starting jobs after one fails
    #[arg(short, long)]
    keep_going: bool,
    /// Print full commands (also V=1 in the environment)
    #[arg(short, long)]
    verbose: bool,
    /// Print nothing on stderr but errors and the compilers' warnings
    #[arg(short, long)]
    quiet: bool,
    /// No closing summary line (as in kbuild, where only each compile's
    /// `CC` line is printed)
    #[arg(long)]
    no_summary: bool,
    /// Compile in a warm compiler (the default): one compiler process,
    /// started once, forks a child per job (no start-up cost per job; the
    /// same objects). Plain spawns when it cannot (a static compiler, a
    /// wrapper script, ccache), with one line saying why (unless -q)
    #[arg(long, overrides_with = "no_warm")]
    warm: bool,
    /// Plain spawns: a fresh compiler process per job (also THINLTO_WARM=0)
    #[arg(long, overrides_with = "warm")]
    no_warm: bool,
    /// Take natives from the backend cache, and store what compiles (also
    /// THINLTO_CACHE=1). The key is the compiler's identity, the command,
    /// the object, its shard, its imports and every file the compile read
    /// (an .incbin'd file included); see README, "The backend cache"
    #[arg(long)]
    cache: bool,
    /// The cache directory (implies --cache) [default: $THINLTO_CACHE_DIR,
    /// else $XDG_CACHE_HOME/thinlto-dist, else ~/.cache/thinlto-dist]
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// A cache shared with other users (also THINLTO_CACHE_SHARED=1): its
    /// new directories get the umask's modes (umask 002 and a setgid
    /// directory of a trusted group: see README, "Who is trusted"), and no
    /// warning that others can write it. Otherwise they are created 0700
    #[arg(long)]
    cache_shared: bool,
    /// The cache's size limit; least recently used entries go first
    #[arg(long, value_name = "SIZE", env = "THINLTO_CACHE_SIZE", value_parser = parse_size)]
    cache_size: Option<u64>,
    /// No cache, whatever the environment and the other flags say
    #[arg(long)]
    no_cache: bool,
    /// A Remote Execution API (v2) cache shared with other machines:
    /// grpc://HOST:PORT, or grpcs://HOST:PORT with TLS (implies --cache;
    /// also THINLTO_REMOTE_CACHE). Hits are copied to the local cache
    #[arg(long, value_name = "URL", env = "THINLTO_REMOTE_CACHE")]
    remote_cache: Option<String>,
    /// The REAPI instance name
    #[arg(
        long,
        value_name = "NAME",
        env = "THINLTO_REMOTE_INSTANCE",
        default_value = ""
    )]
    remote_instance: String,
    /// gRPC metadata sent with every remote call, e.g. 'x-team=kernel'
    /// (repeatable). Every user can read a command line: put a token in
    /// --remote-header-file or $THINLTO_REMOTE_HEADERS instead
    #[arg(long, value_name = "NAME=VALUE", value_parser = thinlto_backend::remote_headers::parse_header)]
    remote_header: Vec<(String, String)>,
    /// Headers from a file readable only by you, one `NAME: VALUE` or
    /// `NAME=VALUE` per line (# comments; also THINLTO_REMOTE_HEADER_FILE).
    /// $THINLTO_REMOTE_HEADERS holds lines of the same form. The flags win
    /// over the file, the file over the environment
    #[arg(long, value_name = "FILE", env = "THINLTO_REMOTE_HEADER_FILE")]
    remote_header_file: Option<PathBuf>,
    /// Run the jobs that must compile on a Remote Execution API farm:
    /// grpc://HOST:PORT or grpcs://HOST:PORT (also THINLTO_REMOTE_EXEC;
    /// --remote-instance, the headers and --remote-tls-ca apply). A job the
    /// farm cannot take (debug information, a plugin, a file its input
    /// root lacks, a farm that is down) compiles here; see README, "A
    /// local farm"
    #[arg(long, value_name = "URL", env = "THINLTO_REMOTE_EXEC")]
    remote_exec: Option<String>,
    /// Jobs on the farm at once [default: 64]; make's job slots bound only
    /// the jobs that compile here
    #[arg(long, value_name = "N")]
    remote_jobs: Option<usize>,
    /// Jobs packed into one farm action: auto (sized from the jobs'
    /// expected times, the longest alone) or at most N (1: one action a
    /// job). Each job keeps its own result and cache entry
    #[arg(long, value_name = "auto|N", default_value = "auto")]
    remote_batch: config::BatchSize,
    /// A CA certificate (PEM) to trust for grpcs:// (default: the system's)
    #[arg(long, value_name = "FILE")]
    remote_tls_ca: Option<PathBuf>,
}

#[derive(Args)]
struct DtltoArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Also write one JSON record per job to FILE (none by default: lld's
    /// stdout is the user's terminal)
    #[arg(long, value_name = "FILE")]
    records: Option<PathBuf>,
    /// The JSON file lld wrote (its last argument)
    json: PathBuf,
}

fn main() -> ExitCode {
    // Still single-threaded: the header secret leaves the environment
    // before any compiler could inherit it.
    let header_env = thinlto_backend::remote_headers::take_env();
    // Before any parsing: every word after `wrap` belongs to the compiler.
    if let Some(argv) = thinlto_backend::wrap::wrap_argv() {
        thinlto_backend::wrap::main(argv)
    }
    if let Err(e) = signals::install_signal_handlers() {
        eprintln!("thinlto-backend: error: cannot handle signals: {e}");
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
        Some(Verb::Worker(args)) => thinlto_backend::worker::main(args).map(|()| ExitCode::SUCCESS),
        None => backend(cli.run, header_env.as_deref()),
    };
    // A signal that came while cleanup was deferred: the cleanup is done,
    // die by it (whatever the result says, e.g. a job failed by it).
    signals::die_if_signalled();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("thinlto-backend: error: {e:#}");
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
            eprintln!("thinlto-backend: cache: {e:#}; building without the cache");
            None
        }
        Some(Ok(dir)) => Some(dir),
        None => None,
    };
    // The same server settings (instance, headers, TLS) for the cache and
    // the executor; the headers are read only when a URL needs them.
    let remote_options = |url: String| -> Result<config::RemoteOptions> {
        Ok(config::RemoteOptions {
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
