//! Lines on stderr, each in one `write(2)`.
//!
//! `make -j` runs several of these tools (and the wrapper) on one stderr
//! pipe. std's stderr is unbuffered and `eprintln!` writes each formatted
//! piece on its own (ten writes for `  CC      foo.o`), so two processes'
//! lines interleave into garbage that neither a reader nor a script
//! counting `CC` lines can use. One `write` of at most `PIPE_BUF` (4096)
//! bytes to a pipe is atomic.

use std::fmt::Arguments;
use std::io::Write;

/// Writes `args` and a newline to `w` in one `write_all` of one buffer.
pub fn write_line(w: &mut impl Write, args: Arguments) -> std::io::Result<()> {
    let mut line = std::fmt::format(args);
    line.push('\n');
    w.write_all(line.as_bytes())
}

/// [`write_line`] to stderr. An error writing stderr is ignored: nowhere
/// is left to report it, and a build tool should not die of a closed pipe
/// in its progress output.
pub fn line(args: Arguments) {
    let _ = write_line(&mut std::io::stderr(), args);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the `write` calls it is given.
    struct Writes(usize, Vec<u8>);
    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += 1;
            self.1.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_padded_progress_line_is_one_write() {
        let mut w = Writes(0, Vec::new());
        write_line(&mut w, format_args!("  {:<7} {}", "CC", "a b/foo.o")).unwrap();
        assert_eq!(w.0, 1);
        assert_eq!(w.1, b"  CC      a b/foo.o\n");
        // What eprintln! does (write_fmt on an unbuffered writer): many.
        let mut w = Writes(0, Vec::new());
        let (tag, native) = ("CC", "a b/foo.o");
        writeln!(w, "  {tag:<7} {native}").unwrap();
        assert!(w.0 > 1, "{}", w.0);
    }
}
