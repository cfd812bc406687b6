//! The command line of `thinlto-cmdparse`, as clap definitions: the binary parses
//! it, and `cargo xtask install` renders the same definitions as a man
//! page and shell completions (so they cannot drift from `--help`).

use std::path::PathBuf;

use clap::Parser;

/// Reads kbuild `.cmd` files exactly as make and /bin/sh do: the ThinLTO
/// backend flags, the dependencies and the #SYMVER CRCs.
///
/// A PATH is a `.cmd` file or an object (`dir/foo.o` and
/// `dir/foo.thinlto-native.o` both mean `dir/.foo.o.cmd`). With no PATH, or
/// `-`, paths are read from stdin, one per line. Output: one JSON record per
/// file (JSON Lines); a file that fails gives a record with "error", the
/// others are still printed, and the exit status is 1.
///
/// Examples:
///
///   thinlto-cmdparse kernel/.fork.o.cmd
///
///   find . -name '.*.o.cmd' | thinlto-cmdparse --symvers
///
///   # In a Makefile recipe, instead of sed:
///   $(CC) $(shell thinlto-cmdparse --be-flags $<) -x ir -fno-lto ... -c -o $@ $<
///
///   # In sh:
///   eval "set -- $(thinlto-cmdparse --be-flags kernel/fork.o)"; clang "$@" ...
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
pub struct Cli {
    /// .cmd files or objects; `-` (or none) reads paths from stdin
    pub paths: Vec<PathBuf>,
    /// Print OBJECT's backend flags as one shell-quoted line and exit
    #[arg(long, value_name = "OBJECT", conflicts_with_all = ["symvers", "field"])]
    pub be_flags: Option<PathBuf>,
    /// Print `symbol<TAB>crc` lines (crc as 0x%08x) instead of JSON
    #[arg(long, conflicts_with = "field")]
    pub symvers: bool,
    /// Print one field per line: target, source, savedcmd, c_flags (one
    /// word per line), c_flags_from, deps, cmd_file
    #[arg(long, value_name = "NAME")]
    pub field: Option<String>,
}
