//! modpost's view of a distributed ThinLTO `vmlinux.o`.
//!
//! In the distributed flow `vmlinux.a` lists `dir/foo.thinlto-native.o`,
//! whose CRCs are recorded in the front end's `dir/.foo.o.cmd` (kbuild's
//! modpost change maps the name; unpatched, it reads the backend record
//! `dir/.foo.thinlto-native.o.cmd`, which has none, and every CRC becomes
//! 0). This crate reads the CRCs with that mapping and modpost's own
//! acceptance rules (through `thinlto-cmdparse`), finds the exports of
//! `vmlinux.o` as modpost does, and writes `vmlinux.symvers` and
//! `.vmlinux.export.c` byte for byte as modpost writes them, with its
//! diagnostics (section mismatches included) in its words and order.

pub mod cli;
pub mod exports;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use thinlto_cmdparse::{cmd_file_for_object, dot_cmd_path, read_symvers};

pub use exports::{
    read_exports, read_exports_with, Diagnostic, Export, Exports, Layout, ReadOptions,
};

/// One CRC, as `modpost-ir crcs` prints it (JSON Lines).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrcRecord {
    pub object: String,
    pub cmd_file: String,
    pub symbol: String,
    /// `"0x%08x"` in JSON.
    #[serde(with = "thinlto_cmdparse::crc_hex")]
    pub crc: u32,
}

/// Which `.cmd` file an object's CRCs are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// kbuild's distributed-mode modpost: `.thinlto-native.o` → `.o.cmd`.
    Patched,
    /// modpost before the change: always `dir/.<name>.cmd`.
    Unpatched,
}

pub fn cmd_file(object: &str, mapping: Mapping) -> PathBuf {
    match mapping {
        Mapping::Patched => cmd_file_for_object(Path::new(object)),
        Mapping::Unpatched => dot_cmd_path(Path::new(object)),
    }
}

/// An object list as modpost reads `.vmlinux.objs` or `foo.mod`: one per
/// line, up to the first empty line.
pub fn read_object_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(text
        .split('\n')
        .take_while(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// The CRCs of the objects, in object order then file order. A missing
/// `.cmd` file is an error naming the object (modpost stops there too).
pub fn crcs(objects: &[String], mapping: Mapping) -> Result<Vec<CrcRecord>> {
    use rayon::prelude::*;
    // Real kernels have thousands of 20-60 KB .cmd files: read in parallel,
    // keep the object order.
    let per_object: Vec<Result<Vec<CrcRecord>>> = objects
        .par_iter()
        .map(|obj| {
            let cmd = cmd_file(obj, mapping);
            let bytes = std::fs::read(&cmd)
                .with_context(|| format!("{obj}: cannot read its .cmd file {}", cmd.display()))?;
            let cmd_s = cmd.to_string_lossy();
            // modpost skips malformed lines silently; so do we (its stderr
            // is reproduced byte for byte).
            Ok(read_symvers(&bytes)
                .symvers
                .into_iter()
                .map(|s| CrcRecord {
                    object: obj.clone(),
                    cmd_file: cmd_s.clone().into_owned(),
                    symbol: s.symbol,
                    crc: s.crc,
                })
                .collect())
        })
        .collect();
    let mut out = Vec::new();
    for r in per_object {
        out.extend(r?);
    }
    Ok(out)
}

/// modpost's outputs for vmlinux.
#[derive(Debug, Clone, Default)]
pub struct ModpostOutput {
    pub symvers: String,
    pub export_c: String,
    /// Messages modpost prints, in its order and words (`WARNING: modpost: …`).
    pub messages: Vec<String>,
    /// Whether modpost would exit 1.
    pub error: bool,
}

/// Joins exports and CRCs and renders `vmlinux.symvers` and
/// `.vmlinux.export.c` as modpost 6.12 does (`-M -m`, or without `-m` when
/// `modversions` is false), or as modpost 6.1 does for the pre-6.5 layout
/// (its `.vmlinux.export.c` holds only the `SYMBOL_CRC` lines).
pub fn render(exports: &Exports, crcs: &[CrcRecord], modversions: bool) -> ModpostOutput {
    let module = "vmlinux";
    let mut crc_of: Vec<Option<u32>> = vec![None; exports.exports.len()];
    if modversions {
        // modpost's lookup finds the most recently added export of a name.
        let last: std::collections::HashMap<&str, usize> = exports
            .exports
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.as_str(), i))
            .collect();
        for c in crcs {
            if let Some(&i) = last.get(c.symbol.as_str()) {
                crc_of[i] = Some(c.crc);
            }
        }
    }
    let mut out = ModpostOutput::default();
    for d in &exports.diagnostics {
        out.messages.push(d.render());
        out.error |= d.error;
    }
    let mut c = String::from("#include <linux/export-internal.h>\n");
    // modpost 6.1 (pre-6.5 layout) writes only the CRCs.
    if exports.layout == Layout::ExportSymbol {
        c.push('\n');
        for e in &exports.exports {
            writeln!(
                c,
                "KSYMTAB_{}({}, \"{}\", \"{}\");",
                if e.is_func { "FUNC" } else { "DATA" },
                e.name,
                if e.gpl_only { "_gpl" } else { "" },
                e.namespace
            )
            .unwrap();
        }
    }
    if modversions {
        c.push('\n');
        for (e, crc) in exports.exports.iter().zip(&crc_of) {
            if crc.is_none() {
                out.messages.push(format!(
                    "WARNING: modpost: EXPORT symbol \"{0}\" [{module}] version generation failed, symbol will not be versioned.\nIs \"{0}\" prototyped in <asm/asm-prototypes.h>?\n",
                    e.name
                ));
            }
            writeln!(
                c,
                "SYMBOL_CRC({}, 0x{:08x}, \"{}\");",
                e.name,
                crc.unwrap_or(0),
                if e.gpl_only { "_gpl" } else { "" }
            )
            .unwrap();
        }
    }
    out.export_c = c;
    for (e, crc) in exports.exports.iter().zip(&crc_of) {
        writeln!(
            out.symvers,
            "0x{:08x}\t{}\t{module}\tEXPORT_SYMBOL{}\t{}",
            crc.unwrap_or(0),
            e.name,
            if e.gpl_only { "_GPL" } else { "" },
            e.namespace
        )
        .unwrap();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(name: &str, gpl: bool, ns: &str, func: bool) -> Export {
        Export {
            name: name.into(),
            gpl_only: gpl,
            namespace: ns.into(),
            is_func: func,
        }
    }

    #[test]
    fn renders_like_modpost() {
        let ex = Exports {
            exports: vec![export("a", false, "", true), export("b", true, "NS", false)],
            ..Default::default()
        };
        let crcs = vec![CrcRecord {
            object: "x.o".into(),
            cmd_file: ".x.o.cmd".into(),
            symbol: "a".into(),
            crc: 0xabcd,
        }];
        let o = render(&ex, &crcs, true);
        assert_eq!(o.symvers, "0x0000abcd\ta\tvmlinux\tEXPORT_SYMBOL\t\n0x00000000\tb\tvmlinux\tEXPORT_SYMBOL_GPL\tNS\n");
        assert_eq!(
            o.export_c,
            "#include <linux/export-internal.h>\n\nKSYMTAB_FUNC(a, \"\", \"\");\nKSYMTAB_DATA(b, \"_gpl\", \"NS\");\n\nSYMBOL_CRC(a, 0x0000abcd, \"\");\nSYMBOL_CRC(b, 0x00000000, \"_gpl\");\n"
        );
        assert_eq!(o.messages.len(), 1);
        assert!(o.messages[0].starts_with(
            "WARNING: modpost: EXPORT symbol \"b\" [vmlinux] version generation failed"
        ));
        assert!(!o.error);
    }

    #[test]
    fn crc_records_keep_the_hex_contract() {
        let r = CrcRecord {
            object: "x.o".into(),
            cmd_file: ".x.o.cmd".into(),
            symbol: "a".into(),
            crc: 0xabcd,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"object":"x.o","cmd_file":".x.o.cmd","symbol":"a","crc":"0x0000abcd"}"#
        );
        assert_eq!(serde_json::from_str::<CrcRecord>(&json).unwrap(), r);
        let bad = json.replace("0x0000abcd", "0x1ffffffff");
        assert!(serde_json::from_str::<CrcRecord>(&bad).is_err());
    }

    #[test]
    fn mappings() {
        assert_eq!(
            cmd_file("d/a.thinlto-native.o", Mapping::Patched),
            PathBuf::from("d/.a.o.cmd")
        );
        assert_eq!(
            cmd_file("d/a.thinlto-native.o", Mapping::Unpatched),
            PathBuf::from("d/.a.thinlto-native.o.cmd")
        );
    }
}
