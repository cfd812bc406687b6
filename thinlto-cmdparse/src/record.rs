//! The JSON Lines record `thinlto-cmdparse` prints, one per input file
//! (SPEC §3). Field names are a contract with users' scripts:
//!
//! `{"cmd_file","target","source","savedcmd","c_flags":[argv…],
//!   "c_flags_from":"saved_c_flags"|"savedcmd","deps":[{"path","wildcard"?}],
//!   "symvers":[{"symbol","crc":"0x%08x"}]}`
//!
//! or, for a file that could not be parsed, `{"cmd_file","error"}`.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{cmd_file_for_object, CmdFile, Dep, FlagsFrom, Symver};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmdRecord {
    pub cmd_file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savedcmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c_flags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c_flags_from: Option<FlagsFrom>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deps: Option<Vec<Dep>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symvers: Option<Vec<Symver>>,
    /// Why this file failed; the other fields are then absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `#SYMVER` lines skipped as modpost skips them (`file:line: …`): the
    /// tool prints them on stderr; not part of the JSON contract.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

impl CmdRecord {
    pub fn from_cmd(cmd: CmdFile) -> CmdRecord {
        let path = cmd.cmd_file.to_string_lossy().into_owned();
        let warnings = cmd.warnings.iter().map(|w| w.to_string()).collect();
        let mut record = match cmd.backend_flags() {
            Ok(flags) => CmdRecord {
                cmd_file: path,
                target: Some(cmd.target),
                source: cmd.source,
                savedcmd: cmd.savedcmd,
                c_flags: Some(flags.argv),
                c_flags_from: Some(flags.from),
                deps: Some(cmd.deps),
                symvers: Some(cmd.symvers),
                error: None,
                warnings: Vec::new(),
            },
            Err(e) => CmdRecord::failed(path, e.to_string()),
        };
        record.warnings = warnings;
        record
    }

    pub fn failed(cmd_file: String, error: String) -> CmdRecord {
        CmdRecord {
            cmd_file,
            target: None,
            source: None,
            savedcmd: None,
            c_flags: None,
            c_flags_from: None,
            deps: None,
            symvers: None,
            error: Some(error),
            warnings: Vec::new(),
        }
    }
}

/// A command-line path: a `.cmd` file as is, an object mapped to the
/// `.cmd` file of its front end (`.thinlto-native.o` → `.o.cmd`).
pub fn cmd_path_for_input(input: &Path) -> PathBuf {
    let name = input
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    if name.ends_with(".cmd") {
        input.to_path_buf()
    } else {
        cmd_file_for_object(input)
    }
}

/// Parses many files in parallel; records come back in input order.
pub fn parse_many(inputs: &[PathBuf]) -> Vec<CmdRecord> {
    inputs
        .par_iter()
        .map(|p| {
            let cmd_path = cmd_path_for_input(p);
            match CmdFile::read(&cmd_path) {
                Ok(c) => CmdRecord::from_cmd(c),
                Err(e) => CmdRecord::failed(cmd_path.to_string_lossy().into_owned(), e.to_string()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_fields_are_the_contract() {
        let c = CmdFile::parse(
            Path::new("d/.a.o.cmd"),
            b"savedcmd_d/a.o := cc -O2 -c -o d/a.o d/a.c\n\nsource_d/a.o := d/a.c\n\n\
              deps_d/a.o := \\\n    $(wildcard include/config/X) \\\n  h.h \\\n\n\
              saved_c_flags_d/a.o := -O2\n#SYMVER f 0x1\n",
        )
        .unwrap();
        let json = serde_json::to_string(&CmdRecord::from_cmd(c)).unwrap();
        assert_eq!(
            json,
            r#"{"cmd_file":"d/.a.o.cmd","target":"d/a.o","source":"d/a.c","savedcmd":"cc -O2 -c -o d/a.o d/a.c","c_flags":["-O2"],"c_flags_from":"saved_c_flags","deps":[{"path":"include/config/X","wildcard":true},{"path":"h.h"}],"symvers":[{"symbol":"f","crc":"0x00000001"}]}"#
        );
    }

    #[test]
    fn inputs_map_to_cmd_files() {
        assert_eq!(
            cmd_path_for_input(Path::new("d/.a.o.cmd")),
            PathBuf::from("d/.a.o.cmd")
        );
        assert_eq!(
            cmd_path_for_input(Path::new("d/a.thinlto-native.o")),
            PathBuf::from("d/.a.o.cmd")
        );
    }
}
