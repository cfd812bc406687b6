use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use thinlto_backend::plan::{inputs_from_index, inputs_from_manifest, plan, Decision};
use thinlto_backend::run::{self, round3, JobRecord, JobStatus, RunOptions, Verbosity};
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
/// stdout: one JSON record per job, {"object","native","status","reason","seconds"},
/// status "built", "up-to-date", "cache-hit" (plus "cache": local|remote,
/// "key") or "failed".
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
    Worker(thinlto_backend::worker::WorkerArgs),
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

/// An on/off setting from the environment (THINLTO_CACHE): empty is off, as
/// make's unset-but-exported variables are.
fn parse_switch(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" | "off" => Ok(false),
        "1" | "true" | "yes" | "on" => Ok(true),
        _ => Err(format!(
            "{s:?}: expected 1 or 0 (also yes/no, true/false, on/off; empty is off)"
        )),
    }
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected NAME=VALUE")),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    thinlto_backend::cache::local::parse_size(s)
}

#[derive(Args)]
struct RunArgs {
    /// The index file (one bitcode object per line; `-`: from stdin)
    /// instead of a manifest on stdin
    #[arg(long, value_name = "FILE")]
    index: Option<PathBuf>,
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
    #[arg(long, env = "THINLTO_CACHE", value_parser = parse_switch)]
    cache: bool,
    /// The cache directory (implies --cache) [default: $THINLTO_CACHE_DIR,
    /// else $XDG_CACHE_HOME/thinlto-dist, else ~/.cache/thinlto-dist]
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// The cache's size limit; least recently used entries go first
    #[arg(long, value_name = "SIZE", env = "THINLTO_CACHE_SIZE", value_parser = parse_size, default_value = "5G")]
    cache_size: u64,
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
    /// gRPC metadata sent with every remote call, e.g.
    /// 'authorization=Bearer TOKEN' (repeatable)
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_header)]
    remote_header: Vec<(String, String)>,
    /// A CA certificate (PEM) to trust for grpcs:// (default: the system's)
    #[arg(long, value_name = "FILE")]
    remote_tls_ca: Option<PathBuf>,
    #[command(flatten)]
    toolchain: ToolchainArgs,
}

fn main() -> ExitCode {
    // Before any parsing: every word after `wrap` belongs to the compiler.
    if let Some(argv) = thinlto_backend::wrap::wrap_argv() {
        thinlto_backend::wrap::main(argv)
    }
    if let Err(e) = run::install_signal_handlers() {
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
        Some(Verb::Worker(args)) => thinlto_backend::worker::main(args).map(|()| ExitCode::SUCCESS),
        None => backend(cli.run),
    };
    // A signal that came while cleanup was deferred: the cleanup is done,
    // die by it (whatever the result says, e.g. a job failed by it).
    run::die_if_signalled();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("thinlto-backend: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cache_dir(explicit: Option<PathBuf>) -> Result<PathBuf> {
    explicit
        .or_else(thinlto_backend::cache::default_dir)
        .context("no cache directory: give --cache-dir (neither THINLTO_CACHE_DIR, XDG_CACHE_HOME nor HOME is set)")
}

fn cache_verb(action: CacheAction, dir: Option<PathBuf>) -> Result<ExitCode> {
    let dir = cache_dir(dir)?;
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
            let max = max_size.unwrap_or(thinlto_backend::cache::DEFAULT_MAX_SIZE);
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
    let _deferred = run::defer_signals();
    thinlto_backend::archive::write_final_archive(out, &order, &index, &cwd)?;
    Ok(())
}

/// An error writing to stdout (a closed pipe included: the tool exits 1
/// saying so, rather than die silently by SIGPIPE, as the records of the
/// jobs that ran are lost to the reader).
fn stdout_error(e: impl std::borrow::Borrow<std::io::Error>) -> anyhow::Error {
    let e = e.borrow();
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        anyhow::anyhow!("writing to stdout: {e} (the reader closed it)")
    } else {
        anyhow::anyhow!("writing to stdout: {e}")
    }
}

fn backend(args: RunArgs) -> Result<ExitCode> {
    let start = Instant::now();
    let jobserver = run::jobserver_from_env();
    if args.toolchain.print_toolchain {
        let mut tc = Toolchain::resolve(&args.toolchain)?;
        tc.probe()?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string_pretty(&tc)?)
            .and_then(|_| out.flush())
            .map_err(stdout_error)?;
        return Ok(ExitCode::SUCCESS);
    }
    let inputs = match &args.index {
        // The index from stdin: the same reader, on the same bytes.
        Some(p) if p == Path::new("-") => inputs_from_index(Path::new("/dev/stdin"))?,
        Some(p) => inputs_from_index(p)?,
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
            inputs_from_manifest(&m)
        }
    };
    let mut inputs = inputs;
    if !args.only.is_empty() {
        inputs.retain(|i| {
            let native = thinlto_backend::plan::native_of(&i.object);
            args.only
                .iter()
                .any(|o| *o == i.object || *o == native || *o == i.summary)
        });
        if inputs.is_empty() {
            bail!("--only {:?}: no such job", args.only);
        }
    }
    let cc = Toolchain::resolve_cc(&args.toolchain)?;
    let mut planned = plan(inputs, &cc.spelled)?;
    // The plan spells `$(CC)` as one word; a CC with a launcher
    // (`ccache clang-19`) runs as its words.
    if cc.argv.len() > 1 {
        for (job, _, _) in &mut planned {
            job.argv.splice(0..1, cc.argv.iter().cloned());
        }
    }
    if args.always_make {
        for p in &mut planned {
            if matches!(p.1, Decision::UpToDate | Decision::Adopt) {
                p.1 = Decision::Run("forced (-B)".into());
            }
        }
    }
    let verbosity = if args.quiet {
        Verbosity::Quiet
    } else if args.verbose
        || std::env::var("V").is_ok_and(|v| v == "1")
        || std::env::var("MAKEFLAGS").is_ok_and(|m| m.split_whitespace().any(|w| w == "V=1"))
    {
        Verbosity::Commands
    } else {
        Verbosity::Normal
    };
    let remote_url = args.remote_cache.clone().filter(|u| !u.is_empty());
    let use_cache =
        !args.no_cache && (args.cache || args.cache_dir.is_some() || remote_url.is_some());
    let needs_run = planned
        .iter()
        .any(|(_, d, _)| matches!(d, Decision::Run(_)));
    let cache = if use_cache && needs_run {
        let opts = thinlto_backend::cache::CacheOptions {
            dir: cache_dir(args.cache_dir.clone())?,
            max_size: args.cache_size,
            remote: remote_url.map(|url| thinlto_backend::cache::remote::RemoteOptions {
                url,
                instance: args.remote_instance.clone(),
                headers: args.remote_header.clone(),
                tls_ca: args.remote_tls_ca.clone(),
            }),
        };
        Some(thinlto_backend::cache::BackendCache::open(&opts, &cc.argv)?)
    } else {
        None
    };
    if args.explain || args.dry_run {
        let mut out = std::io::stdout().lock();
        for (job, d, rec) in &planned {
            let cached = match (&cache, d, args.explain) {
                (Some(c), Decision::Run(_), true) => c.probe(job, rec),
                _ => None,
            };
            match (d, args.explain) {
                (Decision::UpToDate, true) => writeln!(out, "{}: up to date", job.native),
                (Decision::Adopt, true) => writeln!(
                    out,
                    "{}: up to date (make's record, the native newer than every input)",
                    job.native
                ),
                (Decision::Run(why), true) => match cached {
                    Some((tier, key)) => writeln!(
                        out,
                        "{}: would run: {why}; cache-hit ({}) {key}",
                        job.native,
                        tier.as_str()
                    ),
                    None => writeln!(out, "{}: would run: {why}", job.native),
                },
                (Decision::Run(_), false) => writeln!(out, "{}", job.command_text),
                (Decision::UpToDate | Decision::Adopt, false) => Ok(()),
            }
            .map_err(stdout_error)?;
        }
        out.flush().map_err(stdout_error)?;
        return Ok(ExitCode::SUCCESS);
    }
    // From here on records are written and children run: a signal is
    // recorded, the run stops its children and cleans up, and main dies
    // by the signal afterwards.
    let _deferred = run::defer_signals();
    let stdout = Mutex::new(std::io::stdout());
    let print = |rec: &JobRecord| -> std::io::Result<()> {
        let mut o = stdout.lock().unwrap();
        serde_json::to_writer(&mut *o, rec)?;
        o.write_all(b"\n")?;
        o.flush()
    };
    let mut to_run = Vec::new();
    let mut up_to_date = 0;
    for (job, d, rec) in planned {
        match d {
            Decision::UpToDate => {
                up_to_date += 1;
                print(&JobRecord {
                    object: job.input.object.clone(),
                    native: job.native.clone(),
                    status: JobStatus::UpToDate,
                    reason: "command and inputs unchanged".into(),
                    seconds: 0.0,
                    cache: None,
                    key: None,
                })
                .map_err(stdout_error)?;
            }
            Decision::Adopt => {
                up_to_date += 1;
                // The digests of today's inputs, which make's rule says
                // the native was built from.
                let reason = match run::write_record(&job.record_path, &rec.render(&job.native)) {
                    Ok(()) => "make's record adopted: command equal, native newer than every input",
                    Err(_) => "make's record: command equal, native newer than every input",
                };
                print(&JobRecord {
                    object: job.input.object.clone(),
                    native: job.native.clone(),
                    status: JobStatus::UpToDate,
                    reason: reason.into(),
                    seconds: 0.0,
                    cache: None,
                    key: None,
                })
                .map_err(stdout_error)?;
            }
            Decision::Run(why) => to_run.push((job, why, rec)),
        }
    }
    // Longest expected first: the last recorded duration, else the bitcode
    // size scaled to seconds (only the order matters, and it puts the big
    // unknown objects first).
    let cost: Vec<f64> = to_run
        .iter()
        .map(|(j, _, rec)| {
            rec.seconds.unwrap_or_else(|| {
                std::fs::metadata(&j.input.object)
                    .map(|m| m.len() as f64 * 2e-5)
                    .unwrap_or(0.0)
            })
        })
        .collect();
    let mut order: Vec<usize> = (0..to_run.len()).collect();
    order.sort_by(|a, b| cost[*b].total_cmp(&cost[*a]).then(a.cmp(b)));
    let progress =
        verbosity == Verbosity::Normal && std::io::stderr().is_terminal() && to_run.len() > 1;
    let bar = progress.then(|| {
        let pb = indicatif::ProgressBar::new(to_run.len() as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "  BE      [{bar:40}] {pos}/{len} {msg} (eta {eta})",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        pb
    });
    let opts = RunOptions {
        jobs: args.jobs.unwrap_or_else(|| match jobserver {
            run::MakeJobserver::Unusable => 1,
            _ => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }),
        jobs_explicit: args.jobs.is_some(),
        keep_going: args.keep_going,
        verbosity: if progress {
            Verbosity::Quiet
        } else {
            verbosity
        },
        progress,
    };
    // Everything a job printed goes through here, on one thread: above the
    // progress bar when there is one (a worker's eprint would tear it).
    let mut emit = |rec: JobRecord, output: Option<String>| {
        let msg = match (rec.status, output) {
            (JobStatus::Failed, output) => Some(format!(
                "thinlto-backend: error: {}: {}\n{}",
                rec.native,
                rec.reason,
                output.unwrap_or_default()
            )),
            // A successful job's warnings, shown at every verbosity.
            (_, output) => output,
        };
        if let Some(msg) = msg {
            match &bar {
                Some(b) => b.println(msg.trim_end()),
                None => eprint!("{msg}"),
            }
        }
        if let Some(b) = &bar {
            b.set_message(rec.native.clone());
            b.inc(1);
        }
        print(&rec)
    };
    let client = match jobserver {
        run::MakeJobserver::Usable(c) => Some(c),
        _ => None,
    };
    let warm_off = args.no_warm
        || (!args.warm
            && std::env::var("THINLTO_WARM")
                .is_ok_and(|v| ["0", "false", "no", "off"].contains(&v.as_str())));
    // Asked for, it says why it cannot serve at every verbosity; as the
    // default, -q keeps it quiet.
    let announce = args.warm || verbosity != Verbosity::Quiet;
    let warm = (!warm_off && !to_run.is_empty())
        .then(|| thinlto_backend::warm::Warm::start(&cc.argv[0], announce));
    let summary = std::thread::scope(|scope| {
        // The cache's lookups run ahead of the jobs, in their order.
        let prefetch = cache.as_ref().map(|c| c.prefetch(scope, &to_run, &order));
        let summary = run::run_jobs(
            &to_run,
            order,
            &opts,
            client,
            cache.as_ref(),
            prefetch.as_deref(),
            &mut emit,
        );
        if let Some(p) = &prefetch {
            p.cancel();
        }
        summary
    });
    drop(warm);
    let cache_summary = cache.as_ref().map(|c| c.finish());
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if (verbosity != Verbosity::Quiet && !args.no_summary) || summary.failed > 0 {
        let cached = match &cache_summary {
            Some(c) => format!(
                ", {} from the cache ({} local, {} remote; {} misses)",
                summary.cache_hits, c.hits_local, c.hits_remote, c.misses
            ),
            None => String::new(),
        };
        eprintln!(
            "thinlto-backend: {} built, {} up to date{cached}, {} failed{}; wall {:.2} s, CPU {:.2} s",
            summary.built,
            up_to_date,
            summary.failed,
            if summary.not_started > 0 {
                format!(", {} not started", summary.not_started)
            } else {
                String::new()
            },
            round3(start.elapsed().as_secs_f64()),
            run::children_cpu_seconds(),
        );
    }
    if let Some(sig) = summary.signal {
        // main dies by the signal once this returns.
        eprintln!("thinlto-backend: interrupted by signal {sig}; outputs in place are complete, a re-run finishes the rest");
        return Ok(ExitCode::FAILURE);
    }
    if let Some(e) = summary.output_error {
        bail!(
            "{:#}; no job started after it (the jobs that ran are recorded for the next run)",
            stdout_error(&*e)
        );
    }
    Ok(if summary.failed > 0 || summary.not_started > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
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
