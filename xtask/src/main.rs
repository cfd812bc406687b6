use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use thinlto_index::toolchain::Role;
use thinlto_index::ToolchainArgs;
use xtask::provision;
use xtask::sample::fe::{self, FeOptions};
use xtask::sample::reference::{self, ReferenceOptions};

/// Automation for thinlto-dist: `cargo xtask <verb>`.
///
/// Typical use on a fresh machine:
///   cargo xtask flow     # the whole flow on the bundled sample tree
///   cargo xtask test     # fmt check, clippy, all tests
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Install what this machine lacks (LLVM 19 and 22, make, patch, script,
    /// static libc, cpio via apt-get when root on Debian/Ubuntu; BuildGrid, the REAPI server of the remote-cache tests,
    /// into a venv from PyPI) and print the resolved toolchain and bgd.
    Setup {
        /// Also install what `cargo xtask kernel --boot` needs (qemu-system-x86,
        /// busybox-static): a large install the test suite never uses
        #[arg(long)]
        boot: bool,
        #[command(flatten)]
        toolchain: ToolchainArgs,
    },
    /// Build the four tools in release mode and copy them into one
    /// directory on PATH (default: $CARGO_HOME/bin, i.e. ~/.cargo/bin), for
    /// kernel builds: make CC="thinlto-backend wrap clang-19" vmlinux, or
    /// make THINLTO_TOOLS=1 vmlinux with examples/kbuild/thinlto-tools.patch;
    /// their man pages and bash/zsh/fish completions go beside, under
    /// DIR/../share (man thinlto-backend then works with DIR on PATH)
    Install {
        /// Where to put the binaries
        #[arg(long, value_name = "DIR")]
        bin_dir: Option<PathBuf>,
    },
    /// Front end: lay out the sample tree (plus N generated objects), compile
    /// every object with clang in ThinLTO mode, write kbuild .cmd files and
    /// archive everything into vmlinux.a.
    Fe {
        #[command(flatten)]
        tree: TreeArgs,
        /// Don't write saved_c_flags_ lines (a tree as plain in-process
        /// ThinLTO kbuild leaves it; tools then fall back to savedcmd_)
        #[arg(long)]
        no_saved_c_flags: bool,
        #[command(flatten)]
        toolchain: ToolchainArgs,
    },
    /// Run the make reference flow (tests/reference/Makefile: kbuild's
    /// distributed ThinLTO stages 2-4) on a front-end tree, then link and
    /// run the harness against its vmlinux.o.
    Reference {
        #[command(flatten)]
        tree: TreeArgs,
        /// Directory for top-level outputs, relative to the tree
        #[arg(long, default_value = "out-ref")]
        out: String,
        /// Print every command make runs
        #[arg(short, long)]
        verbose: bool,
        #[command(flatten)]
        toolchain: ToolchainArgs,
    },
    /// The whole flow on the sample tree: front end, then stages 2-4.
    Flow {
        #[command(flatten)]
        tree: TreeArgs,
        #[command(flatten)]
        toolchain: ToolchainArgs,
    },
    /// Benchmarks: ours against the make reference and in-process ThinLTO,
    /// alternating runs in one session; --write regenerates BENCHMARKS.md.
    Bench {
        /// Generated objects in the benchmark tree
        #[arg(long, default_value_t = 2000)]
        objects: usize,
        /// Parallel jobs [default: available cores]
        #[arg(short, long)]
        jobs: Option<usize>,
        /// Runs per scenario (after a warm-up)
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Runs of the scenarios that compile everything with real clang
        /// (2 keeps the default run under 15 minutes on 2 cores)
        #[arg(long, default_value_t = 2)]
        heavy_runs: usize,
        /// A small tree and one run per scenario (keeps the harness working in CI)
        #[arg(long)]
        quick: bool,
        /// Write the report to BENCHMARKS.md
        #[arg(long)]
        write: bool,
        /// Also benchmark a real kernel tree built with CONFIG_LTO_CLANG_THIN=y
        #[arg(long, value_name = "LINUX")]
        kernel: Option<PathBuf>,
        /// Only the kernel scenarios (with --kernel)
        #[arg(long, requires = "kernel")]
        kernel_only: bool,
        /// Only the kbuild-mode scenarios on a DIST tree (with --kernel):
        /// `make vmlinux` with the stock rules, ccache, the wrapper, the
        /// wrapper composed with ccache and THINLTO_TOOLS=1, from scratch,
        /// no-op, touch, edits
        #[arg(long, requires = "kernel")]
        kbuild_modes_only: bool,
        /// Only the backend cache's scenarios (cold, clean rebuild, second
        /// checkout, second machine with BuildGrid) on the generated tree
        /// and, with --kernel, on the kernel
        #[arg(long, conflicts_with = "kbuild_modes_only")]
        cache_only: bool,
        /// Only remote execution (with --kernel, a DIST tree): the
        /// in-process link, the backend here and on a local farm (`cargo
        /// xtask farm`) with --workers workers, and a projection to bigger
        /// farms
        #[arg(long, requires = "kernel", conflicts_with_all = ["kbuild_modes_only", "cache_only"])]
        remote_only: bool,
        /// Farm workers for --remote-only
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// The batched farm run's `--remote-batch` for --remote-only
        /// (`auto`, or at most this many jobs an action)
        #[arg(long, default_value = "auto", requires = "remote_only")]
        batch: String,
        /// Only lld's DTLTO (LLVM 22): the generated tree's `ld.lld -r` and,
        /// with --kernel, Linux's `vmlinux.a`, linked with in-process
        /// ThinLTO, the reference distributor and `thinlto-backend dtlto`
        /// (cold and warm cache)
        #[arg(long, conflicts_with_all = ["kbuild_modes_only", "cache_only"])]
        dtlto_only: bool,
        /// Only loadable modules (with --kernel, a DIST tree with modules
        /// built the stock way): `make modules` from scratch, no-op and
        /// after a touch of one part of a composite module, with
        /// in-process modules, examples/kbuild/modules-dist.patch, and
        /// that with THINLTO_TOOLS=1
        #[arg(long, requires = "kernel", conflicts_with_all = ["kbuild_modes_only", "cache_only", "remote_only", "dtlto_only"])]
        modules_only: bool,
        /// Only the farm worker's sandbox: the generated tree's first jobs
        /// run as a worker runs them, warm and plain, each with and
        /// without the sandbox (as root)
        #[arg(long, conflicts_with_all = ["kbuild_modes_only", "cache_only", "remote_only", "dtlto_only", "modules_only"])]
        sandbox_only: bool,
        #[command(flatten)]
        toolchain: ToolchainArgs,
    },
    /// Stages 2-4 and modpost on a real kernel tree built by kbuild with
    /// CONFIG_LTO_CLANG_THIN=y, with the kernel's own settings (LD,
    /// KBUILD_LDFLAGS, the vmlinux.o link, objtool) read from its .cmd
    /// files; compared with the tree's in-process vmlinux.o and
    /// vmlinux.symvers.
    ///
    /// With --boot, then boots the tree's own bzImage under
    /// qemu-system-x86_64 (KVM when /dev/kvm is usable, else TCG) with an
    /// initramfs (static busybox) whose /init insmods every module of
    /// modules.order, in that order except that a module comes after the
    /// modules its `depends=` names, and reports each on the serial console;
    /// fails unless init ran and every module loaded, naming the failed ones
    /// and the console log (DIR/boot/console.log). --boot-only boots without
    /// the stages (any tree with a bzImage and modules.order, LTO or not).
    Kernel {
        /// The kernel tree (objects, .cmd files, vmlinux.a, vmlinux.o)
        #[arg(long, value_name = "LINUX")]
        tree: PathBuf,
        /// Top-level outputs [default: LINUX/thinlto-dist-out]; the tree's own vmlinux.o is untouched
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Parallel jobs [default: available cores]
        #[arg(short, long)]
        jobs: Option<usize>,
        /// Also time the tree's own in-process vmlinux.o link
        #[arg(long)]
        time_inprocess: bool,
        /// Run the backend with the warm compiler (thinlto-backend --warm)
        #[arg(long)]
        warm: bool,
        /// Run the backend's jobs on this REAPI farm (thinlto-backend
        /// --remote-exec; `cargo xtask farm` starts one)
        #[arg(long, value_name = "URL")]
        remote_exec: Option<String>,
        /// After the comparison, boot the tree and load every module
        #[arg(long)]
        boot: bool,
        /// Only boot the tree and load every module: no stages, no comparison
        #[arg(long, conflicts_with_all = ["boot", "time_inprocess", "warm", "remote_exec", "jobs"])]
        boot_only: bool,
        /// Kill qemu and fail when the boot has not finished after SECS
        #[arg(long, value_name = "SECS", default_value_t = xtask::boot::DEFAULT_TIMEOUT_SECS)]
        boot_timeout: u64,
        /// qemu's accelerator: kvm (or fail saying why), tcg, or auto (KVM
        /// where it runs the guest, else TCG)
        #[arg(long, value_enum, value_name = "ACCEL", default_value_t)]
        boot_accel: xtask::boot::AccelChoice,
    },
    /// A kernel tree's loadable modules against the same sources built the
    /// stock way (e.g. distributed mode with examples/kbuild/modules-dist.patch
    /// against in-process mode): Module.symvers and modules.order identical,
    /// every .ko of modules.order with the same exports (__ksymtab_*),
    /// undefined symbols, .modinfo and __versions (modinfo's depends= and
    /// __versions as sets: modpost writes both in the order of the module
    /// object's undefined symbols, which the link mode changes)
    ModulesCompare {
        /// The reference tree, built the stock way
        #[arg(long, value_name = "LINUX")]
        stock: PathBuf,
        /// The tree to check
        #[arg(long, value_name = "LINUX")]
        tree: PathBuf,
    },
    /// Oracles that need more than the default machine: `modpost` builds the
    /// kernel's real modpost from Debian's linux-source-6.12 and compares
    /// modpost-ir with it on the sample tree (both link modes)
    Oracle {
        /// Which oracle (only `modpost` for now)
        #[arg(value_parser = ["modpost"])]
        which: String,
        /// Rewrite tests/fixtures/golden/ with the oracle's outputs
        #[arg(long)]
        update: bool,
        #[command(flatten)]
        toolchain: ToolchainArgs,
    },
    /// A local REAPI farm: BuildGrid with execution on 127.0.0.1 (a private
    /// PostgreSQL for its scheduler) and N `thinlto-backend worker`s. Prints
    /// grpc://127.0.0.1:PORT as the first line, runs until SIGINT/SIGTERM
    Farm(xtask::farm::FarmArgs),
    /// The project's checks: unused dependencies, cargo fmt --check, clippy -D
    /// warnings, all tests.
    Test {
        /// Run the test suite once with each of these toolchains, given as
        /// kbuild's LLVM= (`--llvm=-19 --llvm=-22`; CI tests every version
        /// `cargo xtask setup` installs); the checks before it run once.
        /// [default: the toolchain found as the tools find it]
        #[arg(long, value_name = "LLVM", allow_hyphen_values = true)]
        llvm: Vec<String>,
        /// Every tested LLVM must be here (installed first when root on
        /// Debian, as `setup` does) and a test that would skip for lack of
        /// one fails instead (CI). Without it, a machine with one LLVM
        /// passes: the tests that need another (named `requires_…`) print
        /// SKIPPED and why.
        #[arg(long)]
        no_skip: bool,
        /// Arguments passed on to `cargo test` (e.g. a test name filter)
        #[arg(trailing_var_arg = true)]
        rest: Vec<String>,
    },
}

#[derive(clap::Args, Clone)]
struct TreeArgs {
    /// The tree to work on [default: target/sample, or target/gen-N with --objects N]
    #[arg(long, value_name = "DIR")]
    tree: Option<PathBuf>,
    /// Add N generated objects (a large tree with realistic import fan-in)
    #[arg(long, value_name = "N", default_value_t = 0)]
    objects: usize,
    /// Parallel jobs [default: available cores]
    #[arg(short, long, value_name = "N")]
    jobs: Option<usize>,
    /// Less output
    #[arg(short, long)]
    quiet: bool,
}

impl TreeArgs {
    fn dir(&self) -> PathBuf {
        self.tree
            .clone()
            .unwrap_or_else(|| xtask::default_tree(self.objects))
    }
    fn jobs(&self) -> usize {
        self.jobs.unwrap_or_else(xtask::default_jobs)
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.verb {
        Verb::Setup { boot, toolchain } => {
            // A toolchain the user named but that is broken (LLVM=yes,
            // CC=gcc) is said before anything is installed: on a machine
            // with one LLVM, setup installs the other.
            provision::ensure_llvm(&toolchain)?;
            provision::ensure_make()?;
            provision::ensure_host(provision::TEST_NEEDS)?;
            if boot {
                provision::ensure_host(provision::BOOT_NEEDS)?;
            }
            provision::ensure_llvm_versions()?;
            // Again: the newest is now the default.
            let tc = provision::ensure_llvm(&toolchain)?;
            print!("{tc}");
            println!("bgd: {}", xtask::farm::buildgrid::ensure()?.display());
            Ok(())
        }
        Verb::Install { bin_dir } => {
            let dir = match bin_dir {
                Some(d) => d,
                None => xtask::install::default_bin_dir()?,
            };
            for p in xtask::install::install(&dir)? {
                println!("installed {}", p.display());
            }
            if !xtask::install::on_path(&dir) {
                println!(
                    "note: {} is not on PATH; add it: export PATH=\"{}:$PATH\"",
                    dir.display(),
                    dir.display()
                );
            }
            // man-db finds DIR/../share/man by itself only when MANPATH is
            // unset (or has an empty part, which stands for that search).
            let man = xtask::install::share_dir(&dir).join("man");
            if let Some(mp) = std::env::var_os("MANPATH") {
                let listed =
                    std::env::split_paths(&mp).any(|p| p.as_os_str().is_empty() || p == man);
                if !listed {
                    println!(
                        "note: MANPATH is set and lacks {}; add it (or an empty part: MANPATH=\"$MANPATH:\") for man thinlto-backend",
                        man.display()
                    );
                }
            }
            Ok(())
        }
        Verb::Fe {
            tree,
            no_saved_c_flags,
            toolchain,
        } => {
            // The front end compiles and archives; it needs no linker.
            let tools = provision::ensure_tools(&toolchain, &[Role::Cc, Role::Ar])?;
            let tc = fe::FeTools {
                cc: &tools[0],
                ar: &tools[1],
            };
            run_fe(&tree, tc, !no_saved_c_flags)
        }
        Verb::Reference {
            tree,
            out,
            verbose,
            toolchain,
        } => {
            provision::ensure_make()?;
            let tc = provision::ensure_llvm(&toolchain)?;
            run_reference(&tree, &tc, &out, verbose)
        }
        Verb::Flow { tree, toolchain } => {
            provision::ensure_make()?;
            let tc = provision::ensure_llvm(&toolchain)?;
            let report = xtask::flow::run_flow(
                &xtask::flow::FlowOptions {
                    tree: tree.dir(),
                    objects: tree.objects,
                    jobs: tree.jobs(),
                    quiet: tree.quiet,
                },
                &tc,
            )?;
            print!("{}", xtask::flow::table(&report.stages, &report.checks));
            if !report.ok() {
                bail!("verification failed");
            }
            Ok(())
        }
        Verb::Bench {
            objects,
            jobs,
            runs,
            heavy_runs,
            quick,
            write,
            kernel,
            kernel_only,
            kbuild_modes_only,
            cache_only,
            remote_only,
            workers,
            batch,
            dtlto_only,
            modules_only,
            sandbox_only,
            toolchain,
        } => {
            if dtlto_only {
                return bench_dtlto(
                    if quick { 200 } else { objects },
                    jobs.unwrap_or(2),
                    kernel.as_deref(),
                    write,
                );
            }
            provision::ensure_make()?;
            let tc = provision::ensure_llvm(&toolchain)?;
            if sandbox_only {
                let text = xtask::bench::sandbox::run(
                    &tc,
                    if quick { 200 } else { objects },
                    if quick { 40 } else { 100 },
                    &xtask::target_dir().join("bench-sandbox"),
                )?;
                return publish(
                    SANDBOX_MARKER,
                    "The farm worker's sandbox",
                    ": what running a compile in the worker's sandbox costs a job.",
                    &text,
                    write,
                );
            }
            if remote_only {
                let k = kernel.as_ref().expect("clap: requires kernel");
                let text = xtask::bench::remote::run(
                    k,
                    &as_typed(k),
                    jobs.unwrap_or_else(xtask::default_jobs),
                    workers,
                    &batch,
                )?;
                return publish(
                    REMOTE_MARKER,
                    "Remote execution (`thinlto-backend --remote-exec`)",
                    ".",
                    &text,
                    write,
                );
            }
            if cache_only {
                let jobs = jobs.unwrap_or_else(xtask::default_jobs);
                let home = std::env::var_os("HOME").map(PathBuf::from);
                let text = bench_cache(
                    &tc,
                    if quick { 200 } else { objects },
                    jobs,
                    if quick { 1 } else { heavy_runs },
                    kernel.as_deref(),
                    home.as_deref(),
                )?;
                return publish(
                    CACHE_MARKER,
                    "The backend cache (`thinlto-backend --cache`)",
                    ": stages 2–4 (order, thin link, backend, archive, `vmlinux.o` link) from scratch with the backend's defaults (the warm compiler), each cached run against runs without the cache in the same session; ratios of medians.",
                    &text,
                    write,
                );
            }
            if modules_only {
                let k = kernel.as_ref().expect("clap: requires kernel");
                let jobs = jobs.unwrap_or_else(xtask::default_jobs);
                let text = xtask::bench::modules::run(k, &as_typed(k), jobs)?;
                return publish(
                    MODULES_MARKER,
                    "Loadable modules in distributed mode",
                    ".",
                    &text,
                    write,
                );
            }
            if kbuild_modes_only {
                let k = kernel.as_ref().expect("clap: requires kernel");
                let jobs = jobs.unwrap_or_else(xtask::default_jobs);
                let text = xtask::bench::kbuild_modes::run(k, &as_typed(k), jobs, false)?;
                return publish(
                    KBUILD_MODES_MARKER,
                    "kbuild's distributed mode, several ways",
                    ".",
                    &text,
                    write,
                );
            }
            let opts = xtask::bench::BenchOptions {
                objects: if quick { 200 } else { objects },
                jobs: jobs.unwrap_or_else(xtask::default_jobs),
                runs: if quick { 1 } else { runs },
                heavy_runs: if quick { 1 } else { heavy_runs },
                kernel: kernel.clone(),
                quiet: false,
                workdir: xtask::target_dir().join("bench"),
            };
            // As typed (`~/linux`, not the canonical or home-expanded path):
            // the report is committed and must not name this machine's layout.
            let home = std::env::var_os("HOME").map(PathBuf::from);
            let command = xtask::bench::report_command(
                &std::env::args().skip(1).collect::<Vec<_>>(),
                home.as_deref(),
            );
            let kernel_section = match &kernel {
                Some(k) => {
                    let results = xtask::bench::run_kernel(&opts, k)?;
                    let mut s = format!("{KERNEL_MARKER}\n## Real kernel: {}\n\nMeasured by `cargo xtask {command}`: ours and the make reference alternate on the same tree, each from scratch (natives removed), heavy scenarios {} time(s).\n\n", xtask::bench::report_path(k, home.as_deref()), opts.heavy_runs);
                    for r in &results {
                        s.push_str(&r.markdown());
                    }
                    // A tree of kbuild's distributed mode: `make vmlinux`
                    // with the stock rules, the wrapper and THINLTO_TOOLS=1.
                    if xtask::kernel::detect_layout(k)? == xtask::kernel::TreeLayout::Dist {
                        let shown = xtask::bench::report_path(k, home.as_deref());
                        let text = xtask::bench::kbuild_modes::run(k, &shown, opts.jobs, false)?;
                        s.push_str(&format!("\n{KBUILD_MODES_MARKER}\n## kbuild's distributed mode, several ways\n\nMeasured by the same run.\n\n{text}\n"));
                    }
                    Some(s)
                }
                None => None,
            };
            let path = xtask::workspace_root().join("BENCHMARKS.md");
            let old = std::fs::read_to_string(&path).unwrap_or_default();
            // Kept as they are: the cache section (bench --cache-only) and
            // the notes after it.
            let kept_at = old.find(CACHE_MARKER).or(old.find(NOTES_MARKER));
            let notes = kept_at.map(|at| old[at..].to_string()).unwrap_or_default();
            let old_kernel = old
                .find(KERNEL_MARKER)
                .map(|at| old[at..kept_at.unwrap_or(old.len())].to_string())
                .unwrap_or_default();
            if kernel_only {
                let text = kernel_section.unwrap_or_default();
                print!("{text}");
                if write {
                    let head = &old[..old
                        .find(KERNEL_MARKER)
                        .or(old.find(NOTES_MARKER))
                        .unwrap_or(old.len())];
                    let new = format!("{head}{text}\n{notes}");
                    thinlto_index::fsutil::write_atomic(&path, new.as_bytes())?;
                    eprintln!("xtask: wrote {}", path.display());
                }
                return Ok(());
            }
            let results = xtask::bench::run_generated(&opts, &tc)?;
            let mut report = String::from("# Benchmarks\n\nRegenerate with `cargo xtask bench --write` (2 cores: about 15 minutes). Every figure below comes from one run of that command: ours and the reference alternate, and the ratio is of medians measured in the same session, so machine noise cancels as far as it can.\n\n");
            report.push_str(&xtask::bench::machine_header(
                &tc,
                &opts,
                &format!("cargo xtask {command}"),
            ));
            report.push('\n');
            for r in &results {
                report.push_str(&r.markdown());
            }
            print!("{report}");
            // A kernel section measured earlier, and the notes, are kept.
            report.push('\n');
            report.push_str(kernel_section.as_deref().unwrap_or(&old_kernel));
            report.push('\n');
            report.push_str(&notes);
            if write {
                thinlto_index::fsutil::write_atomic(&path, report.as_bytes())?;
                eprintln!("xtask: wrote {}", path.display());
            }
            Ok(())
        }
        Verb::Kernel {
            tree,
            out,
            jobs,
            time_inprocess,
            warm,
            remote_exec,
            boot,
            boot_only,
            boot_timeout,
            boot_accel,
        } => {
            let out = out.unwrap_or_else(|| tree.join("thinlto-dist-out"));
            let boot_opts = xtask::boot::BootOptions {
                tree: tree.clone(),
                out: out.join("boot"),
                timeout: std::time::Duration::from_secs(boot_timeout),
                accel: boot_accel,
            };
            if boot || boot_only {
                // Before the stages: a missing qemu is better said at
                // once, and a tree without a kernel image before qemu is
                // installed for it.
                xtask::boot::bootable_tree(&tree)?;
                provision::ensure_host(provision::BOOT_NEEDS)?;
            }
            if boot_only {
                return boot_kernel(&boot_opts);
            }
            let report = xtask::kernel::run_kernel(&xtask::kernel::KernelOptions {
                out,
                tree,
                jobs: jobs.unwrap_or_else(xtask::default_jobs),
                time_inprocess,
                warm,
                remote_exec,
            })?;
            println!("layout: {}", report.layout.describe());
            print!("{}", xtask::flow::table(&report.stages, &report.checks));
            let compared = report.checks.iter().all(|c| c.ok);
            // The boot runs even after a failed comparison: it says
            // something of its own about the tree.
            let booted = if boot {
                boot_kernel(&boot_opts)
            } else {
                Ok(())
            };
            if !compared {
                bail!("verification failed");
            }
            booted
        }
        Verb::ModulesCompare { stock, tree } => {
            let checks = xtask::kernel::modules_cmp::compare_modules(&stock, &tree)?;
            print!("{}", xtask::flow::table(&[], &checks));
            if !checks.iter().all(|c| c.ok) {
                bail!("{} differs from {}", tree.display(), stock.display());
            }
            Ok(())
        }
        Verb::Oracle {
            which: _,
            update,
            toolchain,
        } => {
            provision::ensure_make()?;
            let tc = provision::ensure_llvm(&toolchain)?;
            let cases = xtask::oracle::run_modpost_oracle(&tc, update)?;
            let mut ok = true;
            for c in &cases {
                // The golden column compares with the files as committed,
                // before --update rewrote them.
                let golden = match (c.golden_identical, update) {
                    (true, _) => "yes".to_string(),
                    (false, true) => format!("NO, updated: {}", c.golden_diff.join(", ")),
                    (false, false) => format!("NO: {}", c.golden_diff.join(", ")),
                };
                println!(
                    "{:<24} exports {:>4}  modpost-ir == modpost: {}  golden == modpost: {}{}",
                    c.name,
                    c.exports,
                    if c.identical { "yes" } else { "NO" },
                    golden,
                    c.zero_crcs_unpatched
                        .map(|z| format!("  (unpatched modpost: {z} zero CRCs)"))
                        .unwrap_or_default()
                );
                // With --update the golden files now hold the oracle's output.
                ok &= c.identical && (c.golden_identical || update);
            }
            if !ok {
                bail!("the oracle disagrees");
            }
            Ok(())
        }
        Verb::Farm(args) => xtask::farm::main(&args),
        Verb::Test {
            llvm,
            no_skip,
            rest,
        } => run_tests(&llvm, no_skip, &rest),
    }
}

fn run_fe(tree: &TreeArgs, tc: fe::FeTools, saved_c_flags: bool) -> Result<()> {
    let dir = tree.dir();
    let start = Instant::now();
    let report = fe::build_with(
        &FeOptions {
            tree: dir.clone(),
            objects: tree.objects,
            jobs: tree.jobs(),
            saved_c_flags,
            quiet: tree.quiet,
        },
        tc,
    )?;
    eprintln!(
        "xtask: front end of {}: {} objects, {} compiled, {} archives written, {:.1}s",
        dir.display(),
        report.objects,
        report.compiled,
        report.archives_written,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run_reference(
    tree: &TreeArgs,
    tc: &thinlto_index::Toolchain,
    out: &str,
    verbose: bool,
) -> Result<()> {
    let dir = tree.dir();
    let start = Instant::now();
    let report = reference::run(
        &ReferenceOptions {
            tree: dir.clone(),
            jobs: tree.jobs(),
            out: out.to_string(),
            make_args: if verbose { vec!["V=1".into()] } else { vec![] },
        },
        tc,
    )?;
    if !tree.quiet {
        eprint!("{}", report.log);
    }
    eprintln!(
        "xtask: reference flow: {} backend jobs run, {:.1}s; {}",
        report.backend_jobs,
        start.elapsed().as_secs_f64(),
        report.vmlinux_o.display()
    );
    let exe = dir.join(out).join("vmlinux-harness");
    let output = reference::run_harness(tc, &dir, &report.vmlinux_o, &exe)?;
    print!("{output}");
    if tree.objects == 0 {
        let expected = reference::expected_harness_output()?;
        if output != expected {
            bail!("the harness printed something other than tests/fixtures/sample-tree/harness/expected.txt");
        }
        eprintln!("xtask: harness output matches harness/expected.txt");
    }
    Ok(())
}

/// `kernel --boot`: boots, prints each module's result, fails naming the
/// failed modules and the console log.
fn boot_kernel(opts: &xtask::boot::BootOptions) -> Result<()> {
    let r = xtask::boot::run_boot(opts)?;
    println!("boot: {}, {:.1} s", r.accel.describe(), r.seconds);
    println!(
        "boot: {} module(s) in modules.order's order{}",
        r.order.len(),
        if r.deferred.is_empty() {
            String::new()
        } else {
            format!(
                ", except {} (after the modules it depends or soft-depends on)",
                r.deferred.join(", ")
            )
        }
    );
    for m in &r.order {
        let result = if r.verdict.loaded.contains(&m.name) {
            "loaded".to_string()
        } else {
            let why = r.verdict.failed.iter().find(|(n, _)| *n == m.name);
            format!("FAILED: {}", why.map_or("?", |(_, w)| w.as_str()))
        };
        println!("  {:<24} {result}", m.name);
    }
    println!("console log: {}", r.console_log.display());
    if r.ok() {
        println!("boot: init ran, all {} module(s) loaded", r.order.len());
        return Ok(());
    }
    for l in &r.failure_lines {
        println!("  console: {l}");
    }
    for l in &r.report.garbled {
        println!("  garbled report line: {l}");
    }
    let mut why = Vec::new();
    if r.timed_out {
        why.push(format!(
            "timed out after {} s (qemu killed; raise --boot-timeout)",
            opts.timeout.as_secs()
        ));
    }
    if !r.verdict.init_ran {
        why.push("init never ran (see the console log for the kernel's last words)".into());
    } else if !r.verdict.done {
        why.push("init did not finish".into());
    }
    if !r.verdict.failed.is_empty() {
        let names: Vec<&str> = r.verdict.failed.iter().map(|(n, _)| n.as_str()).collect();
        why.push(format!("modules failed to load: {}", names.join(", ")));
    }
    bail!(
        "boot failed: {}; console log: {}",
        why.join("; "),
        r.console_log.display()
    )
}

/// Where BENCHMARKS.md's hand-measured real-kernel section starts.
const KERNEL_MARKER: &str = "<!-- kernel -->";
/// Where BENCHMARKS.md's hand-written notes start (always kept).
const NOTES_MARKER: &str = "<!-- notes -->";
/// Where the kbuild-mode section (bench --kbuild-modes-only) starts; it ends
/// at the notes.
const KBUILD_MODES_MARKER: &str = "<!-- kbuild-modes -->";
/// Where the backend cache's section (bench --cache-only) starts; it ends
/// at the notes.
const CACHE_MARKER: &str = "<!-- cache -->";
/// Where the remote-execution section (bench --remote-only) starts.
const REMOTE_MARKER: &str = "<!-- remote-exec -->";
/// Where the worker's sandbox section (bench --sandbox-only) starts.
const SANDBOX_MARKER: &str = "<!-- sandbox -->";
/// Where the modules section (bench --modules-only) starts.
const MODULES_MARKER: &str = "<!-- modules -->";

/// BENCHMARKS.md with the section that starts at `marker` replaced by
/// `section`: a section ends where the next `<!-- ` marker starts (the
/// notes' last of all); a section not there yet goes before the notes.
fn replace_section(old: &str, marker: &str, section: &str) -> String {
    match old.find(marker) {
        Some(at) => {
            let body = at + marker.len();
            let end = old[body..].find("<!-- ").map_or(old.len(), |i| body + i);
            format!("{}{section}{}", &old[..at], &old[end..])
        }
        None => {
            let notes_at = old.find(NOTES_MARKER).unwrap_or(old.len());
            format!("{}{section}{}", &old[..notes_at], &old[notes_at..])
        }
    }
}

/// Where the DTLTO section (bench --dtlto-only) starts.
const DTLTO_MARKER: &str = "<!-- dtlto -->";

/// `bench --dtlto-only`: the generated tree (and a kernel) linked three
/// ways with LLVM 22's lld, as a BENCHMARKS.md section.
fn bench_dtlto(objects: usize, jobs: usize, kernel: Option<&Path>, write: bool) -> Result<()> {
    let tc = provision::ensure_llvm(&ToolchainArgs {
        llvm: Some("-22".into()),
        ..Default::default()
    })?;
    let bins = xtask::flow::build_bins()?;
    let ours = bins.dir.join("thinlto-backend");
    let workdir = xtask::target_dir().join("bench-dtlto");
    let mut text = xtask::bench::dtlto::bench(
        &tc,
        &ours,
        &xtask::bench::dtlto::generated(&tc, objects, xtask::default_jobs(), &workdir)?,
        jobs,
        &workdir,
    )?;
    if let Some(k) = kernel {
        let shown = as_typed(k);
        text.push('\n');
        text.push_str(&xtask::bench::dtlto::bench(
            &tc,
            &ours,
            &xtask::bench::dtlto::Link::kernel(k, &shown)?,
            jobs,
            &workdir,
        )?);
    }
    publish(
        DTLTO_MARKER,
        "lld's DTLTO: `thinlto-backend dtlto` as the distributor",
        &format!(
            " ({}, one run each; the warm run reuses the cold run's cache).",
            tc.cc.version.as_deref().unwrap_or("clang")
        ),
        &text,
        write,
    )
}

/// A path as typed (`~/linux`, not the canonical or home-expanded one):
/// a committed report names no local layout.
fn as_typed(path: &Path) -> String {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    xtask::bench::report_path(path, home.as_deref())
}

/// Prints one BENCHMARKS.md section (`marker`, `## heading`, "Measured by
/// `cargo xtask …`" and `intro`, then `text`) and writes it in place of
/// the old one when asked.
fn publish(marker: &str, heading: &str, intro: &str, text: &str, write: bool) -> Result<()> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let command = xtask::bench::report_command(
        &std::env::args().skip(1).collect::<Vec<_>>(),
        home.as_deref(),
    );
    let section =
        format!("{marker}\n## {heading}\n\nMeasured by `cargo xtask {command}`{intro}\n\n{text}\n");
    print!("{section}");
    if write {
        write_section(marker, &section)?;
    }
    Ok(())
}

/// Replaces one section of BENCHMARKS.md (see [`replace_section`]).
fn write_section(marker: &str, section: &str) -> Result<()> {
    let path = xtask::workspace_root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let new = replace_section(&old, marker, section);
    thinlto_index::fsutil::write_atomic(&path, new.as_bytes())?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}

/// The cache scenarios on a generated tree (and a kernel), as markdown.
fn bench_cache(
    tc: &thinlto_index::Toolchain,
    objects: usize,
    jobs: usize,
    runs: usize,
    kernel: Option<&std::path::Path>,
    home: Option<&std::path::Path>,
) -> Result<String> {
    use xtask::bench::cache::{CacheBench, CacheTree};
    let bins = xtask::flow::build_bins()?;
    let workdir = xtask::target_dir().join("bench");
    std::fs::create_dir_all(&workdir)?;
    // The second machine's shared cache: a BuildGrid on 127.0.0.1.
    let server = xtask::farm::buildgrid::Server::start(&xtask::farm::buildgrid::ensure()?)?;
    let remote = Some(server.url.clone());
    let mut text = String::new();
    let tree = workdir.join(format!("cache-gen-{objects}"));
    if tree.exists() {
        std::fs::remove_dir_all(&tree)?;
    }
    eprintln!("bench (cache): front end of a {objects}-object tree");
    xtask::sample::fe::build(
        &xtask::sample::fe::FeOptions {
            tree: tree.clone(),
            objects,
            jobs,
            saved_c_flags: true,
            quiet: true,
        },
        tc,
    )?;
    let ldflags = xtask::sample::tree::Tree::load(&tree)?.top.ldflags;
    let plan = xtask::flow::LinkPlan::plain(tc, &ldflags, "out");
    // The second checkout: a path with a space.
    let second = workdir.join(format!("cache-gen-{objects} second checkout"));
    xtask::flow::copy_fe_tree(&tree, &second)?;
    let cb = CacheBench {
        label: "C",
        bins: &bins,
        tc,
        jobs,
        runs,
        workdir: workdir.clone(),
        remote: remote.clone(),
    };
    let first = CacheTree {
        tree: tree.clone(),
        out: "out".into(),
        plan: plan.clone(),
    };
    let second = CacheTree {
        tree: second,
        out: "out".into(),
        plan,
    };
    text.push_str(&format!(
        "### Generated tree: {objects} generated objects + the sample tree, -j{jobs}\n\n"
    ));
    for r in cb.run(&first, &second)? {
        text.push_str(&r.markdown());
    }
    if let Some(k) = kernel {
        let tree = k.canonicalize()?;
        let layout = xtask::kernel::detect_layout(&tree)?;
        let copy = workdir.join("linux second checkout");
        eprintln!(
            "bench (cache): copying {} to {}",
            tree.display(),
            copy.display()
        );
        xtask::flow::copy_fe_tree(&tree, &copy)?;
        let mut trees = Vec::new();
        for (t, out) in [(&tree, "kc-out-1"), (&copy, "kc-out-2")] {
            let out = workdir.join(out);
            std::fs::create_dir_all(&out)?;
            let (_, plan, _) = xtask::kernel::kernel_settings(t, &out, layout)?;
            trees.push(CacheTree {
                tree: t.to_path_buf(),
                out: out.to_string_lossy().into_owned(),
                plan,
            });
        }
        let (ktc, _, _) = xtask::kernel::kernel_settings(&tree, &workdir.join("kc-out-1"), layout)?;
        let cb = CacheBench {
            label: "KC",
            tc: &ktc,
            ..cb
        };
        text.push_str(&format!(
            "### Real kernel: {}, -j{jobs}\n\n",
            xtask::bench::report_path(k, home)
        ));
        for r in cb.run(&trees[0], &trees[1])? {
            text.push_str(&r.markdown());
        }
        std::fs::remove_dir_all(&copy)?;
    }
    Ok(text)
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(xtask::workspace_root());
    c
}

fn step(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("xtask test: {what}");
    let status = cmd.status().with_context(|| format!("cannot run {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn run_tests(llvm: &[String], no_skip: bool, rest: &[String]) -> Result<()> {
    provision::ensure_make()?;
    provision::ensure_host(provision::TEST_NEEDS)?;
    if no_skip {
        provision::ensure_llvm_versions()?;
    }
    // Each selection must name an installed toolchain; the default one is
    // installed when missing.
    let selections: Vec<Option<&String>> = if llvm.is_empty() {
        vec![None]
    } else {
        llvm.iter().map(Some).collect()
    };
    let mut toolchains = Vec::new();
    for sel in &selections {
        let args = ToolchainArgs {
            llvm: sel.cloned(),
            ..Default::default()
        };
        toolchains.push(provision::ensure_llvm(&args)?);
    }
    // A machine with one LLVM passes: say here, where it is seen, what the
    // suite skips (a skipped test's own line is hidden by cargo test).
    for v in provision::missing_llvm_versions() {
        eprintln!(
            "xtask test: LLVM {v} (clang-{v}, ld.lld-{v}, llvm-ar-{v}) is not installed: the tests \
             that need it (named requires_…) print SKIPPED and pass; `cargo xtask setup` \
             installs it, `--no-skip` makes a skip a failure"
        );
    }
    // The remote-cache tests run a real BuildGrid; they find its bgd here.
    let bgd = xtask::farm::buildgrid::ensure()?;
    eprintln!("xtask test: bgd {}", bgd.display());
    eprintln!("xtask test: unused dependencies");
    xtask::deps::check(&xtask::workspace_root())?;
    step(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--", "--check"]),
    )?;
    step(
        "cargo clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // The integration tests run the tools' binaries: build them first.
    step(
        "cargo build",
        cargo().args(["build", "--workspace", "--bins"]),
    )?;
    let mut times = Vec::new();
    for (sel, tc) in selections.iter().zip(&toolchains) {
        let name = sel.map_or("the default toolchain".to_string(), |l| format!("LLVM={l}"));
        eprint!("xtask test: the suite with {name}\n{tc}");
        let mut test = cargo();
        test.args(["test", "--workspace"])
            .args(rest)
            .env("THINLTO_TEST_BGD", &bgd);
        if no_skip {
            test.env(provision::TEST_NO_SKIP_VAR, "1");
        } else {
            test.env_remove(provision::TEST_NO_SKIP_VAR);
        }
        // The suite resolves its toolchain as the tools do: LLVM= selects
        // it (and beats CC/LD/AR, as in kbuild).
        if let Some(l) = sel {
            test.env("LLVM", l);
        }
        let start = Instant::now();
        step(&format!("cargo test ({name})"), &mut test)?;
        times.push(format!("{name}: {:.0} s", start.elapsed().as_secs_f64()));
    }
    eprintln!("xtask test: suite times: {}", times.join(", "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    #[test]
    fn a_section_is_replaced_up_to_the_next_marker() {
        let old = format!(
            "head\n{KBUILD_MODES_MARKER}\nold k\n{CACHE_MARKER}\nold c\n{NOTES_MARKER}\nnotes\n"
        );
        let new = replace_section(
            &old,
            KBUILD_MODES_MARKER,
            &format!("{KBUILD_MODES_MARKER}\nnew k\n"),
        );
        assert_eq!(
            new,
            format!(
                "head\n{KBUILD_MODES_MARKER}\nnew k\n{CACHE_MARKER}\nold c\n{NOTES_MARKER}\nnotes\n"
            )
        );
        let new = replace_section(&old, CACHE_MARKER, &format!("{CACHE_MARKER}\nnew c\n"));
        assert!(new.contains("old k") && new.contains("new c") && !new.contains("old c"));
        assert!(new.ends_with(&format!("{NOTES_MARKER}\nnotes\n")));
        // Not there yet: before the notes.
        let bare = format!("head\n{NOTES_MARKER}\nnotes\n");
        assert_eq!(
            replace_section(&bare, CACHE_MARKER, "C\n"),
            format!("head\nC\n{NOTES_MARKER}\nnotes\n")
        );
    }
}
