//! The tools a kernel tree's `.cmd` records name: the compiler kbuild ran
//! (`savedcmd_kernel/fork.o := clang-19 -Wp,… -c -o …`, or `ccache
//! clang-19 …`), the linker of the thin link. When nothing names a tool
//! explicitly, that is the one kbuild would run again, so the tools take
//! it before searching for the newest installed LLVM (see
//! [`crate::toolchain`]).

use std::path::{Path, PathBuf};

use thinlto_cmdparse::shell;

/// What a tree's records say about one tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeRecord {
    /// Every record read names this tool; `record` is the first of them.
    Agreed { spelled: String, record: PathBuf },
    /// Two records name different tools: the tree was built by two
    /// commands, and which one kbuild would run next is not known here.
    Disagree {
        first: (String, PathBuf),
        second: (String, PathBuf),
    },
}

/// The tool a recorded command runs, as the record spells it: the first
/// command's words up to the real program (`ccache clang-19` keeps its
/// launcher, as kbuild's `$(CC)` text does). None for an empty or
/// unparsable command.
pub fn recorded_tool(savedcmd: &str) -> Option<String> {
    let first = shell::split_commands(savedcmd).ok()?.into_iter().next()?;
    if first.is_empty() {
        return None;
    }
    let real = crate::launcher::real_program(&first);
    Some(shell::join(&first[..=real]))
}

/// Whether the records agree on one tool. `records` are (record file,
/// tool as spelled) pairs; None when there are none. Spellings compare as
/// make's `if_changed` compares commands: whitespace runs collapsed.
pub fn agree<'a>(records: impl IntoIterator<Item = (&'a Path, String)>) -> Option<TreeRecord> {
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut first: Option<(String, PathBuf)> = None;
    for (path, spelled) in records {
        match &first {
            None => first = Some((spelled, path.to_path_buf())),
            Some((f, _)) if norm(f) == norm(&spelled) => {}
            Some(_) => {
                return Some(TreeRecord::Disagree {
                    first: first.unwrap(),
                    second: (spelled, path.to_path_buf()),
                })
            }
        }
    }
    first.map(|(spelled, record)| TreeRecord::Agreed { spelled, record })
}

/// The linker of the compiler's LLVM, for a tree whose records name a
/// compiler but no thin link yet (the records of the front end are all a
/// tree has before its first thin link): `clang-19` → `ld.lld-19`,
/// `/usr/lib/llvm-19/bin/clang` → `/usr/lib/llvm-19/bin/ld.lld`, `clang`
/// → `ld.lld`. A launcher is dropped (kbuild's `$(LD)` has none). None
/// for a compiler that is not clang: its LLVM is not known.
pub fn linker_for_compiler(cc_spelled: &str) -> Option<String> {
    let words = shell::split(cc_spelled).ok()?;
    let program = words.get(crate::launcher::real_program(&words))?;
    let (dir, name) = match program.rsplit_once('/') {
        Some((d, n)) => (Some(d), n),
        None => (None, program.as_str()),
    };
    let suffix = name.strip_prefix("clang")?;
    if !(suffix.is_empty()
        || suffix
            .strip_prefix('-')
            .is_some_and(|v| v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty()))
    {
        return None;
    }
    let ld = format!("ld.lld{suffix}");
    Some(match dir {
        Some(d) => format!("{d}/{ld}"),
        None => ld,
    })
}

/// The linker the tree's records point at: that of the compiler the
/// first object of `objects` with a `.cmd` record was compiled by (see
/// [`linker_for_compiler`]), as a record of that file.
pub fn tree_linker<'a>(objects: impl IntoIterator<Item = &'a str>) -> Option<TreeRecord> {
    objects.into_iter().find_map(|o| {
        let cmd_file = thinlto_cmdparse::cmd_file_for_object(Path::new(o));
        let cmd = thinlto_cmdparse::CmdFile::read(&cmd_file).ok()?;
        let cc = recorded_tool(cmd.savedcmd.as_deref()?)?;
        Some(TreeRecord::Agreed {
            spelled: linker_for_compiler(&cc)?,
            record: cmd_file,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_tool_keeps_its_launcher() {
        let cases = [
            ("clang-19 -Wp,-MMD,a/.b.o.d -c -o a/b.o a/b.c", "clang-19"),
            (
                "ccache clang-19 -O2 -c -o a.o a.c; objtool x",
                "ccache clang-19",
            ),
            (
                "/usr/lib/llvm-19/bin/clang -c -o a.o a.c",
                "/usr/lib/llvm-19/bin/clang",
            ),
            ("env LC_ALL=C clang-19 -c x.c", "env LC_ALL=C clang-19"),
            ("'my cc' -c x.c", "'my cc'"),
        ];
        for (cmd, want) in cases {
            assert_eq!(recorded_tool(cmd).as_deref(), Some(want), "{cmd}");
        }
        assert_eq!(recorded_tool(""), None);
        assert_eq!(recorded_tool("clang 'unterminated"), None);
    }

    #[test]
    fn two_spellings_disagree_naming_both_files() {
        let (a, b, c) = (
            Path::new("a/.x.o.cmd"),
            Path::new("b/.y.o.cmd"),
            Path::new("c/.z.o.cmd"),
        );
        assert_eq!(agree([]), None);
        assert_eq!(
            agree([(a, "clang-19".into()), (b, "clang-19".into())]),
            Some(TreeRecord::Agreed {
                spelled: "clang-19".into(),
                record: a.into()
            })
        );
        assert_eq!(
            agree([
                (a, "ccache clang-19".into()),
                (b, "ccache  clang-19".into()),
                (c, "clang-22".into())
            ]),
            Some(TreeRecord::Disagree {
                first: ("ccache clang-19".into(), a.into()),
                second: ("clang-22".into(), c.into())
            })
        );
    }

    #[test]
    fn the_linker_of_the_compilers_llvm() {
        let cases = [
            ("clang-19", Some("ld.lld-19")),
            ("ccache clang-22", Some("ld.lld-22")),
            (
                "/usr/lib/llvm-19/bin/clang",
                Some("/usr/lib/llvm-19/bin/ld.lld"),
            ),
            ("clang", Some("ld.lld")),
            ("gcc-12", None),
            ("clang-tidy", None),
        ];
        for (cc, want) in cases {
            assert_eq!(linker_for_compiler(cc).as_deref(), want, "{cc}");
        }
    }
}
