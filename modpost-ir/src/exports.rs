//! The exports of `vmlinux.o`, found as modpost finds them.
//!
//! Linux ≥ 6.5 (modpost 6.12): each export is an entry of the
//! `.export_symbol` section, labelled `__export_symbol_<name>` and holding
//! the license string, the namespace string and a relocation to the
//! exported symbol. modpost walks the relocation sections in section order
//! and their relocations in order; for each relocation of
//! `.export_symbol`, the label is the nearest valid symbol at or before the
//! relocation's offset in the section (lowest symbol index among equal
//! addresses), and the exported symbol is the relocation's target
//! (function or data by its type).
//!
//! Before 6.5 (modpost 6.1): a `__ksymtab_<name>` symbol in a section named
//! `___ksymtab+<name>` or `___ksymtab_gpl+<name>`, the namespace in the
//! string of `__kstrtabns_<name>`; exports in symbol-table order.
//!
//! Besides the export checks, the diagnostics modpost prints while reading
//! an object are reproduced in modpost's order: `COMMON symbol` warnings
//! (symbol-table order), then per section `unexpected non-allocatable
//! section` warnings interleaved with the export errors and warnings. The
//! section-mismatch analysis is not reproduced.

use anyhow::{anyhow, bail, Result};
use object::elf;
use object::read::elf::{FileHeader, Rel as _, Rela as _, SectionHeader, Sym};
use object::Endianness;

/// One exported symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub name: String,
    pub gpl_only: bool,
    pub namespace: String,
    /// `KSYMTAB_FUNC` rather than `KSYMTAB_DATA` (≥ 6.5 layout only).
    pub is_func: bool,
}

/// How the object marks its exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Linux ≥ 6.5: the `.export_symbol` section.
    #[default]
    ExportSymbol,
    /// Linux < 6.5: `__ksymtab_<name>` in `___ksymtab[_gpl]+<name>`.
    Ksymtab,
}

/// A diagnostic as modpost prints it: `ERROR: modpost: ` or
/// `WARNING: modpost: ` then `text` (which ends with its newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub error: bool,
    pub text: String,
}

impl Diagnostic {
    fn error(text: String) -> Self {
        Diagnostic { error: true, text }
    }
    fn warning(text: String) -> Self {
        Diagnostic { error: false, text }
    }
    /// The line(s) modpost writes to stderr.
    pub fn render(&self) -> String {
        format!(
            "{}: modpost: {}",
            if self.error { "ERROR" } else { "WARNING" },
            self.text
        )
    }
}

/// What reading the exports found: the exports in modpost's order, and
/// the diagnostics modpost prints meanwhile, in its order (errors make it
/// exit 1).
#[derive(Debug, Clone, Default)]
pub struct Exports {
    pub layout: Layout,
    pub exports: Vec<Export>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Exports {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.error)
    }
}

/// Options matching modpost's command line.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions {
    /// `-M` (CONFIG_MODULES): without it modpost 6.12 ignores
    /// `.export_symbol` and vmlinux exports nothing.
    pub modules: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions { modules: true }
    }
}

/// Reads the exports of an ELF relocatable object in memory. `module` is
/// the module name used in messages (`vmlinux`).
pub fn read_exports(data: &[u8], module: &str) -> Result<Exports> {
    read_exports_with(data, module, ReadOptions::default())
}

/// [`read_exports`] with modpost's options.
pub fn read_exports_with(data: &[u8], module: &str, opts: ReadOptions) -> Result<Exports> {
    match object::FileKind::parse(data).map_err(|e| anyhow!("not an ELF file: {e}"))? {
        object::FileKind::Elf64 => read::<elf::FileHeader64<Endianness>>(data, module, opts),
        object::FileKind::Elf32 => read::<elf::FileHeader32<Endianness>>(data, module, opts),
        k => bail!("not an ELF relocatable object ({k:?})"),
    }
}

fn c_str(data: &[u8], at: usize) -> Option<&[u8]> {
    let tail = data.get(at..)?;
    Some(&tail[..tail.iter().position(|b| *b == 0)?])
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// modpost's `is_valid_name`: not empty and not a mapping symbol.
fn is_valid_name(name: &[u8]) -> bool {
    !(name.is_empty()
        || name.starts_with(b".L")
        || name.starts_with(b"L0")
        || name.starts_with(b"$"))
}

/// modpost's `remove_dot`: `foo.123` and `foo.123.x` → `foo`.
fn remove_dot(s: &[u8]) -> &[u8] {
    let Some(n) = s.iter().position(|b| *b == b'.') else {
        return s;
    };
    if n == 0 {
        return s;
    }
    let m = s[n + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
    if m > 0 && matches!(s.get(n + m + 1), None | Some(b'.')) {
        &s[..n]
    } else {
        s
    }
}

/// modpost's `section_white_list` (shell patterns, all `prefix*` or exact).
fn is_white_listed(name: &[u8]) -> bool {
    const PREFIXES: &[&[u8]] = &[
        b".comment",
        b".debug",
        b".zdebug",
        b".mdebug",
        b".stab",
        b".note",
        b".got",
        b".toc",
        b".arcextmap",
        b".gnu.linkonce.arcext",
        b".cmem",
        b".fmt_slot",
        b".gnu.lto",
        b".discard.",
    ];
    const EXACT: &[&[u8]] = &[
        b".GCC.command.line",
        b".pdr",
        b".xt.prop",
        b".xt.lit",
        b".llvm.call-graph-profile",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || EXACT.contains(&name)
}

fn read<E: FileHeader<Endian = Endianness>>(
    data: &[u8],
    module: &str,
    opts: ReadOptions,
) -> Result<Exports> {
    let header = E::parse(data).map_err(|e| anyhow!("bad ELF header: {e}"))?;
    let endian = header.endian().map_err(|e| anyhow!("{e}"))?;
    if header.e_type(endian) != elf::ET_REL {
        bail!(
            "not a relocatable object (ELF type {})",
            header.e_type(endian)
        );
    }
    let sections = header
        .sections(endian, data)
        .map_err(|e| anyhow!("bad section table: {e}"))?;
    let symbols = sections
        .symbols(endian, data, elf::SHT_SYMTAB)
        .map_err(|e| anyhow!("bad symbol table: {e}"))?;
    if symbols.is_empty() {
        bail!("no symbol table");
    }
    let num_sections = sections.len() as u32;
    // modpost's get_secindex.
    let secindex = |i: usize, sym: &E::Sym| -> u32 {
        let shndx = sym.st_shndx(endian);
        if shndx == elf::SHN_XINDEX {
            symbols.shndx(endian, object::SymbolIndex(i)).unwrap_or(0)
        } else if shndx >= elf::SHN_LORESERVE {
            // Reserved indices move to the top of the range.
            (shndx as u32).wrapping_sub(elf::SHN_HIRESERVE as u32 + 1)
        } else {
            shndx as u32
        }
    };
    let name_of = |sym: &E::Sym| symbols.symbol_name(endian, sym).unwrap_or(b"");
    // modpost's sec_name: "" for indices past the section table.
    let sec_name = |idx: u32| -> &[u8] {
        if idx >= num_sections {
            return b"";
        }
        sections
            .section(object::SectionIndex(idx as usize))
            .ok()
            .and_then(|s| sections.section_name(endian, s).ok())
            .unwrap_or(b"")
    };
    let section_data = |idx: u32| -> &[u8] {
        sections
            .section(object::SectionIndex(idx as usize))
            .ok()
            .filter(|s| s.sh_type(endian) != elf::SHT_NOBITS)
            .and_then(|s| s.data(endian, data).ok())
            .unwrap_or(&[])
    };

    // The last section of that name, as modpost's scan keeps it.
    let export_secndx = sections
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, s)| sections.section_name(endian, s).ok() == Some(b".export_symbol"))
        .map(|(i, _)| i as u32)
        .last();
    let mut out = Exports {
        layout: if export_secndx.is_some() {
            Layout::ExportSymbol
        } else {
            Layout::Ksymtab
        },
        ..Default::default()
    };

    // First loop over the symbol table (handle_symbol): COMMON symbols,
    // and the pre-6.5 exports.
    for (i, sym) in symbols.iter().enumerate() {
        let symname = remove_dot(name_of(sym));
        match sym.st_shndx(endian) {
            elf::SHN_COMMON if !symname.starts_with(b"__gnu_lto_") => {
                out.diagnostics.push(Diagnostic::warning(format!(
                    "\"{}\" [{module}] is COMMON symbol\n",
                    lossy(symname)
                )));
            }
            elf::SHN_COMMON => {}
            elf::SHN_UNDEF => {}
            _ if out.layout == Layout::Ksymtab => {
                if let Some(name) = symname.strip_prefix(b"__ksymtab_") {
                    let secname = sec_name(secindex(i, sym));
                    let gpl_only = if secname.starts_with(b"___ksymtab_gpl+") {
                        true
                    } else if secname.starts_with(b"___ksymtab+") {
                        false
                    } else {
                        continue;
                    };
                    add_export(&mut out, module, lossy(name), gpl_only, String::new(), true);
                }
            }
            _ => {}
        }
    }
    if out.layout == Layout::Ksymtab {
        // Second loop (6.1): namespaces from __kstrtabns_<name>.
        for (i, sym) in symbols.iter().enumerate() {
            let symname = remove_dot(name_of(sym));
            let Some(name) = symname.strip_prefix(b"__kstrtabns_") else {
                continue;
            };
            let name = lossy(name);
            let at = sym.st_value(endian).into() as usize;
            let ns = c_str(section_data(secindex(i, sym)), at).ok_or_else(|| {
                anyhow!("__kstrtabns_{name}: its string lies outside its section")
            })?;
            let ns = lossy(ns);
            match out.exports.iter_mut().rev().find(|e| e.name == name) {
                Some(e) => e.namespace = ns,
                None => out.diagnostics.push(Diagnostic::error(format!(
                    "Could not update namespace({ns}) for symbol {name}\n"
                ))),
            }
        }
    }

    // modpost's symsearch table: valid names, sorted by (section, address,
    // index); equal (section, address) runs take the first index.
    let mut table: Vec<(u32, u64, usize)> = Vec::new();
    if let Some(secndx) = export_secndx {
        for (i, sym) in symbols.iter().enumerate() {
            // Only the export section is ever searched.
            if secindex(i, sym) == secndx && is_valid_name(name_of(sym)) {
                table.push((secndx, sym.st_value(endian).into(), i));
            }
        }
    }
    table.sort_unstable();
    for i in 1..table.len() {
        if table[i].1 == table[i - 1].1 {
            table[i].2 = table[i - 1].2;
        }
    }
    let nearest = |addr: u64| -> Option<usize> {
        let hi = table.partition_point(|e| e.1 <= addr);
        (hi > 0).then(|| table[hi - 1].2)
    };

    // check_sec_ref: every section in order.
    for section in sections.iter() {
        let ty = section.sh_type(endian);
        let flags: u64 = section.sh_flags(endian).into();
        let name = sections.section_name(endian, section).unwrap_or(b"");
        if ty == elf::SHT_PROGBITS
            && flags & u64::from(elf::SHF_ALLOC) == 0
            && !is_white_listed(name)
        {
            out.diagnostics.push(Diagnostic::warning(format!(
                "{module} ({}): unexpected non-allocatable section.\n\
                 Did you forget to use \"ax\"/\"aw\" in a .S file?\n\
                 Note that for example <linux/init.h> contains\n\
                 section definitions for use in .S files.\n\n",
                lossy(name)
            )));
        }
        if ty != elf::SHT_RELA && ty != elf::SHT_REL {
            continue;
        }
        let target = section.sh_info(endian);
        if !opts.modules || Some(target) != export_secndx || is_white_listed(sec_name(target)) {
            continue;
        }
        let mut relocs: Vec<(u64, u32)> = Vec::new();
        if let Some((rela, _)) = section
            .rela(endian, data)
            .map_err(|e| anyhow!("bad relocations: {e}"))?
        {
            let mips64el = header.is_mips64el(endian);
            for r in rela {
                relocs.push((r.r_offset(endian).into(), r.r_sym(endian, mips64el)));
            }
        }
        if let Some((rel, _)) = section
            .rel(endian, data)
            .map_err(|e| anyhow!("bad relocations: {e}"))?
        {
            for r in rel {
                relocs.push((r.r_offset(endian).into(), r.r_sym(endian)));
            }
        }
        for (offset, r_sym) in relocs {
            check_export_symbol::<E>(
                &mut out,
                module,
                offset,
                r_sym,
                &symbols,
                endian,
                &nearest,
                &secindex,
                &sec_name,
                &section_data,
            )?;
        }
    }
    Ok(out)
}

fn add_export(
    out: &mut Exports,
    module: &str,
    name: String,
    gpl_only: bool,
    namespace: String,
    is_func: bool,
) {
    if out.exports.iter().any(|e| e.name == name) {
        out.diagnostics.push(Diagnostic::error(format!(
            "{module}: '{name}' exported twice. Previous export was in {module}\n"
        )));
    }
    out.exports.push(Export {
        name,
        gpl_only,
        namespace,
        is_func,
    });
}

/// modpost's `check_export_symbol` for one relocation of `.export_symbol`.
#[allow(clippy::too_many_arguments)]
fn check_export_symbol<'d, E: FileHeader<Endian = Endianness>>(
    out: &mut Exports,
    module: &str,
    offset: u64,
    r_sym: u32,
    symbols: &object::read::elf::SymbolTable<'d, E>,
    endian: Endianness,
    nearest: &dyn Fn(u64) -> Option<usize>,
    secindex: &dyn Fn(usize, &E::Sym) -> u32,
    sec_name: &dyn Fn(u32) -> &'d [u8],
    section_data: &dyn Fn(u32) -> &'d [u8],
) -> Result<()> {
    const PREFIX: &str = "__export_symbol_";
    let name_of = |sym: &E::Sym| symbols.symbol_name(endian, sym).unwrap_or(b"");
    let target = symbols
        .symbol(object::SymbolIndex(r_sym as usize))
        .map_err(|_| {
            anyhow!(
                ".export_symbol entry at offset {offset:#x} points at symbol {r_sym}, which does not exist"
            )
        })?;
    let label_idx = nearest(offset);
    let label = label_idx.and_then(|i| symbols.symbol(object::SymbolIndex(i)).ok());
    let label_name = lossy(label.map(name_of).unwrap_or(b""));
    let Some(exported) = label_name.strip_prefix(PREFIX) else {
        out.diagnostics.push(Diagnostic::error(format!(
            "{module}: .export_symbol section contains strange symbol '{label_name}'\n"
        )));
        return Ok(());
    };
    let label = label.expect("a label was found");
    let bind = target.st_bind();
    if bind != elf::STB_GLOBAL && bind != elf::STB_WEAK {
        out.diagnostics.push(Diagnostic::error(format!(
            "{module}: local symbol '{exported}' was exported\n"
        )));
        return Ok(());
    }
    let name = lossy(name_of(target));
    if name != exported {
        out.diagnostics.push(Diagnostic::error(format!(
            "{module}: .export_symbol section references '{name}', but it does not seem to be an export symbol\n"
        )));
        return Ok(());
    }
    let label_data = section_data(secindex(label_idx.unwrap(), label));
    let at = label.st_value(endian).into() as usize;
    let license = c_str(label_data, at)
        .ok_or_else(|| anyhow!("{label_name}: its license string lies outside .export_symbol"))?;
    let gpl_only = match license {
        b"GPL" => true,
        b"" => false,
        other => {
            out.diagnostics.push(Diagnostic::error(format!(
                "{module}: unknown license '{}' was specified for '{name}'\n",
                lossy(other)
            )));
            return Ok(());
        }
    };
    let namespace = c_str(label_data, at + license.len() + 1)
        .ok_or_else(|| anyhow!("{label_name}: its namespace string lies outside .export_symbol"))?;
    let is_func = target.st_type() == elf::STT_FUNC;
    add_export(
        out,
        module,
        name.clone(),
        gpl_only,
        lossy(namespace),
        is_func,
    );
    let tosec = sec_name(secindex(r_sym as usize, target));
    if tosec.starts_with(b".init.") {
        out.diagnostics.push(Diagnostic::warning(format!(
            "{module}: {name}: EXPORT_SYMBOL used for init symbol. Remove __init or EXPORT_SYMBOL.\n"
        )));
    } else if tosec.starts_with(b".exit.") {
        out.diagnostics.push(Diagnostic::warning(format!(
            "{module}: {name}: EXPORT_SYMBOL used for exit symbol. Remove __exit or EXPORT_SYMBOL.\n"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_dot_like_modpost() {
        assert_eq!(remove_dot(b"foo.123"), b"foo");
        assert_eq!(remove_dot(b"foo.123.isra"), b"foo");
        assert_eq!(remove_dot(b"foo.isra.0"), b"foo.isra.0");
        assert_eq!(remove_dot(b"foo.12x"), b"foo.12x");
        assert_eq!(remove_dot(b".foo.1"), b".foo.1");
        assert_eq!(remove_dot(b"foo."), b"foo.");
        assert_eq!(remove_dot(b"foo"), b"foo");
    }

    #[test]
    fn white_list() {
        assert!(is_white_listed(b".comment"));
        assert!(is_white_listed(b".debug_info"));
        assert!(is_white_listed(b".note.GNU-stack"));
        assert!(is_white_listed(b".discard.addressable"));
        assert!(!is_white_listed(b".discard"));
        assert!(!is_white_listed(b".llvm_addrsig"));
        assert!(!is_white_listed(b".export_symbol"));
    }
}
