//! Launchers (`ccache clang-19`, `env VAR=value clang`): programs that run
//! the compiler named after them. Both the toolchain (a `CC` given with a
//! launcher) and the tree's records (`savedcmd_… := ccache clang-19 …`)
//! skip them to find the real program.

/// Programs that run the compiler named after them (and their own
/// options and `VAR=value` words, for `env`): skipped to find the real one.
const LAUNCHERS: &[&str] = &["ccache", "sccache", "distcc", "icecc", "buildcache", "env"];

/// The index of the real program in a tool's words: the first word that is
/// neither a launcher nor a launcher's option (`-…`) or `VAR=value`.
pub(crate) fn real_program(argv: &[String]) -> usize {
    let mut after_launcher = false;
    for (i, w) in argv.iter().enumerate() {
        let base = w.rsplit('/').next().unwrap_or(w);
        if LAUNCHERS.contains(&base) {
            after_launcher = true;
        } else if !(after_launcher && (w.starts_with('-') || w.contains('='))) {
            return i;
        }
    }
    0
}
