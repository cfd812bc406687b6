//! kbuild `.cmd` files: the backend flags, the dependencies and the
//! `#SYMVER` CRCs, read exactly as GNU make and `/bin/sh` read them.
//!
//! - [`CmdFile`] parses one file; [`CmdFile::backend_flags`] gives the argv
//!   the ThinLTO backend needs (from `saved_c_flags_`, or derived from
//!   `savedcmd_` on trees without it).
//! - [`read_symvers`] reads `#SYMVER` lines with modpost's own rules (the
//!   one reader: [`CmdFile`] and modpost-ir both use it).
//! - [`shell`] is `/bin/sh` word splitting and quoting, [`make`] is make's
//!   escaping of `savedcmd_`.
//! - [`CmdRecord`] is the JSON Lines record of the `thinlto-cmdparse` tool.

pub mod cli;
mod cmdfile;
pub mod make;
pub mod record;
pub mod shell;

pub use cmdfile::{
    cmd_file_for_object, crc_hex, dot_cmd_path, parse_c_number, read_symvers, BackendFlags,
    CmdFile, Dep, FlagsFrom, ParseError, Symver, Symvers,
};
pub use record::{cmd_path_for_input, parse_many, CmdRecord};
