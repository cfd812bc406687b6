//! The command line of `thinlto-backend`, as clap definitions: the binary parses
//! it, and `cargo xtask install` renders the same definitions as a man
//! page and shell completions (so they cannot drift from `--help`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use thinlto_index::ToolchainArgs;

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
pub struct Cli {
    #[command(subcommand)]
    pub verb: Option<Verb>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand)]
pub enum Verb {
    /// Write the final thin archive: builtin.order with every object of the
    /// index replaced by its .thinlto-native.o (exact path match), byte
    /// for byte what `llvm-ar cDPrS --thin` writes
    #[command(after_long_help = ARCHIVE_EXAMPLES)]
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
    #[command(after_long_help = WRAP_EXAMPLES)]
    Wrap {
        /// The compiler and its arguments
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// A REAPI farm worker: runs compile actions leased by a Remote Workers
    /// API server (BuildGrid's Bots service), hermetic or failed
    #[cfg(feature = "remote")]
    #[command(after_long_help = WORKER_EXAMPLES)]
    Worker(crate::worker::WorkerArgs),
    /// A DTLTO distributor for lld (≥ 21): `ld.lld
    /// --thinlto-distributor=thinlto-backend --thinlto-distributor-arg=dtlto`
    /// (each further `--thinlto-distributor-arg=` is one of the options
    /// below). Runs the jobs of lld's JSON file on the engine: every
    /// output is what `common.args + job.args` writes, byte for byte.
    /// Quiet unless -v (lld's stdout and stderr are the user's terminal);
    /// the cache only with --cache or --cache-dir (or THINLTO_CACHE=1)
    #[command(after_long_help = DTLTO_EXAMPLES)]
    Dtlto(DtltoArgs),
    /// The backend cache: what it holds, and its upkeep
    #[command(after_long_help = CACHE_EXAMPLES)]
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
pub enum CacheAction {
    /// Print the directory, its entries and size, and the hit/miss counters
    /// of every run since the last clear (as JSON with --json)
    #[command(after_long_help = CACHE_STATS_EXAMPLES)]
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Remove the least recently used entries until the cache holds at most
    /// --max-size (builds do this themselves after storing)
    #[command(after_long_help = CACHE_PRUNE_EXAMPLES)]
    Prune {
        /// The limit [default: $THINLTO_CACHE_SIZE, else 5G]
        #[arg(long, value_name = "SIZE", env = "THINLTO_CACHE_SIZE", value_parser = parse_size)]
        max_size: Option<u64>,
    },
    /// Remove every entry and the counters
    #[command(after_long_help = CACHE_CLEAR_EXAMPLES)]
    Clear,
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    crate::cache::local::parse_size(s)
}

/// kbuild's front end: the engine's options and what picks the jobs.
#[derive(Args)]
pub struct RunArgs {
    /// The index file (one bitcode object per line; `-`: from stdin)
    /// instead of a manifest on stdin
    #[arg(long, value_name = "FILE")]
    pub index: Option<PathBuf>,
    /// Print the commands that would run, run nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Say for every job why it would run or why it is up to date, run nothing
    #[arg(long)]
    pub explain: bool,
    /// Only this job (an object, its native object, or its summary)
    #[arg(long, value_name = "OBJECT")]
    pub only: Vec<String>,
    /// Run every job, up to date or not
    #[arg(short = 'B', long)]
    pub always_make: bool,
    #[command(flatten)]
    pub toolchain: ToolchainArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// The engine's options, shared by kbuild's front end and `dtlto` (a new
/// engine option goes here, and both have it).
#[derive(Args)]
pub struct EngineArgs {
    /// Parallel jobs [default: available cores; under make, make's jobserver]
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Keep starting jobs after one fails
    #[arg(short, long)]
    pub keep_going: bool,
    /// Print full commands (also V=1 in the environment); with
    /// --remote-exec, end with the run's calls to the farm by kind
    #[arg(short, long)]
    pub verbose: bool,
    /// Print nothing on stderr but errors and the compilers' warnings
    #[arg(short, long)]
    pub quiet: bool,
    /// No closing summary line (as in kbuild, where only each compile's
    /// `CC` line is printed)
    #[arg(long)]
    pub no_summary: bool,
    /// Compile in a warm compiler (the default): one compiler process,
    /// started once, forks a child per job (no start-up cost per job; the
    /// same objects). Plain spawns when it cannot (a static compiler, a
    /// wrapper script, ccache), with one line saying why (unless -q)
    #[arg(long, overrides_with = "no_warm")]
    pub warm: bool,
    /// Plain spawns: a fresh compiler process per job (also THINLTO_WARM=0)
    #[arg(long, overrides_with = "warm")]
    pub no_warm: bool,
    /// Take natives from the backend cache, and store what compiles (also
    /// THINLTO_CACHE=1). The key is the compiler's identity, the command,
    /// the object, its shard, its imports and every file the compile read
    /// (an .incbin'd file included); see docs/cache.md
    #[arg(long)]
    pub cache: bool,
    /// The cache directory (implies --cache) [default: $THINLTO_CACHE_DIR,
    /// else $XDG_CACHE_HOME/thinlto-dist, else ~/.cache/thinlto-dist]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// A cache shared with other users (also THINLTO_CACHE_SHARED=1): its
    /// new directories get the umask's modes (umask 002 and a setgid
    /// directory of a trusted group: see docs/cache.md, "Who is trusted"), and no
    /// warning that others can write it. Otherwise they are created 0700
    #[arg(long)]
    pub cache_shared: bool,
    /// The cache's size limit; least recently used entries go first
    #[arg(long, value_name = "SIZE", env = "THINLTO_CACHE_SIZE", value_parser = parse_size)]
    pub cache_size: Option<u64>,
    /// No cache, whatever the environment and the other flags say
    #[arg(long)]
    pub no_cache: bool,
    /// A Remote Execution API (v2) cache shared with other machines:
    /// grpc://HOST:PORT, or grpcs://HOST:PORT with TLS (implies --cache;
    /// also THINLTO_REMOTE_CACHE). Hits are copied to the local cache
    #[arg(long, value_name = "URL", env = "THINLTO_REMOTE_CACHE")]
    pub remote_cache: Option<String>,
    /// The REAPI instance name
    #[arg(
        long,
        value_name = "NAME",
        env = "THINLTO_REMOTE_INSTANCE",
        default_value = ""
    )]
    pub remote_instance: String,
    /// gRPC metadata sent with every remote call, e.g. 'x-team=kernel'
    /// (repeatable). Every user can read a command line: put a token in
    /// --remote-header-file or $THINLTO_REMOTE_HEADERS instead
    #[arg(long, value_name = "NAME=VALUE", value_parser = crate::remote_headers::parse_header)]
    pub remote_header: Vec<(String, String)>,
    /// Headers from a file readable only by you, one `NAME: VALUE` or
    /// `NAME=VALUE` per line (# comments; also THINLTO_REMOTE_HEADER_FILE).
    /// $THINLTO_REMOTE_HEADERS holds lines of the same form. The flags win
    /// over the file, the file over the environment
    #[arg(long, value_name = "FILE", env = "THINLTO_REMOTE_HEADER_FILE")]
    pub remote_header_file: Option<PathBuf>,
    /// Run the jobs that must compile on a Remote Execution API farm:
    /// grpc://HOST:PORT or grpcs://HOST:PORT (also THINLTO_REMOTE_EXEC;
    /// --remote-instance, the headers and --remote-tls-ca apply). A job the
    /// farm cannot take (debug information, a plugin, a file its input
    /// root lacks, a farm that is down) compiles here; see docs/remote.md
    #[arg(long, value_name = "URL", env = "THINLTO_REMOTE_EXEC")]
    pub remote_exec: Option<String>,
    /// Jobs on the farm at once [default: 128]; make's job slots bound only
    /// the jobs that compile here
    #[arg(long, value_name = "N")]
    pub remote_jobs: Option<usize>,
    /// Jobs packed into one farm action: auto (sized from the jobs'
    /// expected times, the longest alone) or at most N (1: one action a
    /// job). Each job keeps its own result and cache entry; on a cold farm
    /// only some batched jobs are looked up in its action cache first.
    /// E.g. --remote-batch 8
    #[arg(long, value_name = "auto|N", default_value = "auto")]
    pub remote_batch: crate::config::BatchSize,
    /// Say so when this run's queued farm executions have waited this
    /// many seconds with none started: a farm without a worker whose
    /// platform matches (compiler identity) keeps them queued without a
    /// word. The run waits on
    #[arg(long, value_name = "SECONDS", default_value_t = crate::reapi::DEFAULT_QUEUED_NOTICE_SECONDS)]
    pub remote_queued_notice: u64,
    /// A CA certificate (PEM) to trust for grpcs:// (default: the system's)
    #[arg(long, value_name = "FILE")]
    pub remote_tls_ca: Option<PathBuf>,
}

#[derive(Args)]
pub struct DtltoArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Also write one JSON record per job to FILE (none by default: lld's
    /// stdout is the user's terminal)
    #[arg(long, value_name = "FILE")]
    pub records: Option<PathBuf>,
    /// The JSON file lld wrote (its last argument)
    pub json: PathBuf,
}

// Each subcommand's EXAMPLES (its `--help`, and its section of the man
// page): every line a command that runs as written (in a kbuild tree, or
// the sample tree of `cargo xtask flow`, where a path is relative).

const ARCHIVE_EXAMPLES: &str = "\
Examples (from the tree root, after the backend compiles):
  thinlto-backend archive --order builtin.order --index vmlinux.thinlto-index -o vmlinux.native.a
  thinlto-index order vmlinux.a | thinlto-backend archive --order - --index vmlinux.thinlto-index -o vmlinux.native.a";

const WRAP_EXAMPLES: &str = "\
Examples (kbuild's CC, from the kernel tree):
  make LLVM=-19 CC=\"thinlto-backend wrap clang-19\" vmlinux
  THINLTO_WRAP_EXPLAIN=1 make LLVM=-19 CC=\"thinlto-backend wrap clang-19\" vmlinux
  make LLVM=-19 CC=\"thinlto-backend wrap ccache clang-19\" vmlinux
  thinlto-backend wrap clang-19 --version";

#[cfg(feature = "remote")]
const WORKER_EXAMPLES: &str = "\
Examples (on each farm machine; the server is the farm's BuildGrid):
  thinlto-backend worker --server grpc://127.0.0.1:50051 -j 8
  thinlto-backend worker --server grpc://127.0.0.1:50051 --compiler clang-19 --compiler clang-22 --no-warm";

const DTLTO_EXAMPLES: &str = "\
Examples (lld 21 or newer runs it; every --thinlto-distributor-arg= is one argument):
  ld.lld-22 -m elf_x86_64 -r -o vmlinux.o --whole-archive vmlinux.a --thinlto-distributor=$(command -v thinlto-backend) --thinlto-distributor-arg=dtlto --thinlto-remote-compiler=clang-22
  ld.lld-22 -m elf_x86_64 -r -o vmlinux.o --whole-archive vmlinux.a --thinlto-distributor=$(command -v thinlto-backend) --thinlto-distributor-arg=dtlto --thinlto-distributor-arg=--cache --thinlto-distributor-arg=-v --thinlto-remote-compiler=clang-22";

const CACHE_EXAMPLES: &str = "\
Examples:
  thinlto-backend cache stats
  thinlto-backend cache --cache-dir /tmp/thinlto-cache stats --json
  thinlto-backend cache prune --max-size 2G";

const CACHE_STATS_EXAMPLES: &str = "\
Examples:
  thinlto-backend cache stats
  thinlto-backend cache stats --json";

const CACHE_PRUNE_EXAMPLES: &str = "\
Examples:
  thinlto-backend cache prune --max-size 2G
  THINLTO_CACHE_SIZE=500M thinlto-backend cache prune";

const CACHE_CLEAR_EXAMPLES: &str = "\
Examples:
  thinlto-backend cache --cache-dir /tmp/thinlto-cache clear";
