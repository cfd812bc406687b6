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
    let real = crate::toolchain::real_program(&first);
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
}
