//! The command line of `modpost-ir`, as clap definitions: the binary parses
//! it, and `cargo xtask install` renders the same definitions as a man
//! page and shell completions (so they cannot drift from `--help`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use thinlto_index::ToolchainArgs;

/// modpost's side of kbuild's distributed ThinLTO: symbol CRCs looked up
/// with the `.thinlto-native.o` → `.o.cmd` mapping, and `vmlinux.symvers`
/// / `.vmlinux.export.c` written exactly as the kernel's modpost writes
/// them.
///
/// Examples (from the tree root):
///
///   modpost-ir crcs --objects .vmlinux.objs          # JSON Lines
///   modpost-ir crcs --archive vmlinux.a --unpatched  # what an unpatched modpost sees
///   modpost-ir symvers vmlinux.o --objects .vmlinux.objs \
///       -o vmlinux.symvers --export-c .vmlinux.export.c
#[derive(Parser)]
#[command(version, verbatim_doc_comment, arg_required_else_help = true)]
pub struct Cli {
    #[command(subcommand)]
    pub verb: Option<Verb>,
    /// Accepted as by every tool of the family; modpost-ir runs none of them
    #[command(flatten)]
    pub toolchain: ToolchainArgs,
}

#[derive(Args)]
pub struct ObjectSource {
    /// An object list, one per line (kbuild's .vmlinux.objs); `-`: stdin
    #[arg(long, value_name = "FILE")]
    pub objects: Option<PathBuf>,
    /// The members of an archive (e.g. vmlinux.a)
    #[arg(long, value_name = "ARCHIVE", conflicts_with = "objects")]
    pub archive: Option<PathBuf>,
    /// A module's object list (foo.mod); `-`: stdin
    #[arg(long = "mod", value_name = "FILE", conflicts_with_all = ["objects", "archive"])]
    pub module: Option<PathBuf>,
    /// Read CRCs as modpost did before kbuild's change (dir/.foo.thinlto-native.o.cmd)
    #[arg(long)]
    pub unpatched: bool,
}

#[derive(Subcommand)]
pub enum Verb {
    /// Print the CRC of every #SYMVER line of every object's .cmd file:
    /// JSON Lines {"object","cmd_file","symbol","crc"}
    #[command(after_long_help = CRCS_EXAMPLES)]
    Crcs {
        #[command(flatten)]
        source: ObjectSource,
        /// Objects (instead of a list)
        #[arg(value_name = "OBJECT")]
        paths: Vec<String>,
    },
    /// Write vmlinux.symvers (and .vmlinux.export.c) from vmlinux.o and the
    /// CRCs of its objects
    #[command(after_long_help = SYMVERS_EXAMPLES)]
    Symvers {
        vmlinux_o: PathBuf,
        #[command(flatten)]
        source: ObjectSource,
        /// vmlinux.symvers [default: stdout]
        #[arg(short, value_name = "FILE")]
        o: Option<PathBuf>,
        /// Also write .vmlinux.export.c here
        #[arg(long, value_name = "FILE")]
        export_c: Option<PathBuf>,
        /// Without CONFIG_MODVERSIONS (modpost without -m): no CRCs
        #[arg(long)]
        no_modversions: bool,
        /// Without CONFIG_MODULES (modpost without -M): .export_symbol is
        /// not read, vmlinux exports nothing
        #[arg(long)]
        no_modules: bool,
        /// Section mismatches are errors (modpost -E, i.e. without
        /// CONFIG_SECTION_MISMATCH_WARN_ONLY): the outputs are written, then
        /// the run fails
        #[arg(long)]
        section_mismatch_errors: bool,
    },
}

// Each subcommand's EXAMPLES (its `--help`, and its section of the man
// page): every line a command that runs as written in a kbuild tree after
// its vmlinux link (or the sample tree after `cargo xtask flow`).

const CRCS_EXAMPLES: &str = "\
Examples (from the tree root):
  modpost-ir crcs --objects .vmlinux.objs
  modpost-ir crcs --archive vmlinux.a --unpatched
  modpost-ir crcs kernel/fork.o";

const SYMVERS_EXAMPLES: &str = "\
Examples (from the tree root):
  modpost-ir symvers vmlinux.o --objects .vmlinux.objs -o vmlinux.symvers --export-c .vmlinux.export.c
  modpost-ir symvers vmlinux.o --archive vmlinux.a --no-modversions";
