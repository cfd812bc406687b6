//! kbuild `.cmd` files: the backend flags, the dependencies and the
//! `#SYMVER` CRCs, read exactly as GNU make and `/bin/sh` read them.
//!
//! - [`CmdFile`] parses one file; [`CmdFile::backend_flags`] gives the argv
//!   the ThinLTO backend needs (from `saved_c_flags_`, or derived from
//!   `savedcmd_` on trees without it).
//! - [`modpost_symvers`] reads `#SYMVER` lines with modpost's own rules.
//! - [`shell`] is `/bin/sh` word splitting and quoting, [`make`] is make's
//!   escaping of `savedcmd_`.
//! - [`CmdRecord`] is the JSON Lines record of the `thinlto-cmdparse` tool.

mod cmdfile;
pub mod make;
pub mod record;
pub mod shell;

pub use cmdfile::{
    cmd_file_for_object, dot_cmd_path, modpost_symvers, parse_c_number, BackendFlags, CmdFile, Dep,
    FlagsFrom, ParseError, Symver,
};
pub use record::{cmd_path_for_input, parse_many, CmdRecord};
