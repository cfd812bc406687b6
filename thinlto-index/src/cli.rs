//! The command line of `thinlto-index`, as clap definitions: the binary parses
//! it, and `cargo xtask install` renders the same definitions as a man
//! page and shell completions (so they cannot drift from `--help`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::ToolchainArgs;

/// Stage 2 of kbuild's distributed ThinLTO: archive member order, bitcode
/// classification, and the thin link.
///
/// Examples (from the tree root):
///
///   thinlto-index order vmlinux.a > builtin.order        # == llvm-ar t
///   thinlto-index scan builtin.order                     # {"object","kind"} per line
///   thinlto-index link --ldflags '-m elf_x86_64 -z noexecstack' \
///       -o vmlinux.thinlto-index --imports builtin.order > manifest.json
///   thinlto-index link ... builtin.order | thinlto-backend
///   thinlto-index order vmlinux.a | thinlto-index link -o vmlinux.thinlto-index -
#[derive(Parser)]
#[command(version, verbatim_doc_comment, arg_required_else_help = true)]
pub struct Cli {
    #[command(flatten)]
    pub toolchain: ToolchainArgs,
    #[command(subcommand)]
    pub verb: Option<Verb>,
}

#[derive(Subcommand)]
pub enum Verb {
    /// Print the members of thin or regular archives, one per line, exactly
    /// as `llvm-ar t` prints them
    #[command(after_long_help = ORDER_EXAMPLES)]
    Order {
        #[arg(required = true)]
        archives: Vec<PathBuf>,
    },
    /// Classify objects by magic (bitcode, bitcode-wrapper, elf, other):
    /// JSON Lines {"object","kind"}
    #[command(after_long_help = SCAN_EXAMPLES)]
    Scan {
        /// An order file (one object per line), or `-` for stdin
        #[arg(default_value = "-")]
        order_file: String,
    },
    /// Run the thin link (`$LD $LDFLAGS -r --thinlto-index-only=INDEX
    /// @ORDER_FILE`), check every promised output, print the manifest
    #[command(after_long_help = LINK_EXAMPLES)]
    Link {
        /// KBUILD_LDFLAGS, as shell text (e.g. '-m elf_x86_64 -mllvm -import-instr-limit=5')
        #[arg(long, default_value = "", allow_hyphen_values = true)]
        ldflags: String,
        /// The index file to write (`--index FILE`, the old spelling, still works)
        #[arg(
            short = 'o',
            value_name = "INDEX",
            long = "output",
            alias = "index",
            default_value = "vmlinux.thinlto-index"
        )]
        index: PathBuf,
        /// Have lld write foo.o.imports files and list them in the manifest
        #[arg(long)]
        imports: bool,
        /// Run lld even if the inputs and the command are those of the last
        /// link recorded in dir/.INDEX.cmd (by default such a link is skipped)
        #[arg(long)]
        force: bool,
        /// The inputs, one per line (builtin.order), or `-` for stdin (kept
        /// as dir/.INDEX.order, the file lld reads and the record names)
        order_file: PathBuf,
    },
}

// Each subcommand's EXAMPLES (its `--help`, and its section of the man
// page): every line a command that runs as written in a kbuild tree (or
// the sample tree of `cargo xtask fe`).

const ORDER_EXAMPLES: &str = "\
Examples (from the tree root):
  thinlto-index order vmlinux.a > builtin.order
  thinlto-index order vmlinux.a | wc -l";

const SCAN_EXAMPLES: &str = "\
Examples (from the tree root):
  thinlto-index scan builtin.order
  thinlto-index order vmlinux.a | thinlto-index scan";

const LINK_EXAMPLES: &str = "\
Examples (from the tree root):
  thinlto-index link --ldflags '-m elf_x86_64' -o vmlinux.thinlto-index --imports builtin.order > manifest.json
  thinlto-index link --force -o vmlinux.thinlto-index builtin.order > /dev/null
  thinlto-index order vmlinux.a | thinlto-index link -o vmlinux.thinlto-index - | thinlto-backend";
