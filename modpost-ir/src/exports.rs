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
//! section` warnings interleaved with the export errors and warnings and
//! the section-mismatch warnings of modpost 6.12 (`check_sec_ref`: RELA
//! relocations on every machine, REL relocations on i386).

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
    /// Section mismatches reported (modpost's `sec_mismatch_count`).
    pub section_mismatches: usize,
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
    /// Run modpost's section-mismatch analysis (6.12 layout only).
    pub section_mismatch: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            modules: true,
            section_mismatch: true,
        }
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
        let shndx = sym.st_shndx(endian);
        if out.layout == Layout::ExportSymbol && shndx != elf::SHN_COMMON {
            continue;
        }
        let symname = remove_dot(name_of(sym));
        match shndx {
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
    let is_arm = header.e_machine(endian) == elf::EM_ARM;
    let build_table = |only: Option<u32>| -> Vec<(u32, u64, usize)> {
        let mut table: Vec<(u32, u64, usize)> = Vec::new();
        for (i, sym) in symbols.iter().enumerate() {
            let sec = secindex(i, sym);
            if only.is_some_and(|o| o != sec) || !is_valid_name(name_of(sym)) {
                continue;
            }
            let mut addr: u64 = sym.st_value(endian).into();
            if is_arm && sym.st_type() == elf::STT_FUNC {
                addr &= !1;
            }
            table.push((sec, addr, i));
        }
        table.sort_unstable();
        for i in 1..table.len() {
            if table[i].0 == table[i - 1].0 && table[i].1 == table[i - 1].1 {
                table[i].2 = table[i - 1].2;
            }
        }
        table
    };
    // The export labels need the export section's entries only; the whole
    // table is built when a section mismatch is first reported.
    let export_table = match export_secndx {
        Some(x) => build_table(Some(x)),
        None => Vec::new(),
    };
    let full_table: std::cell::OnceCell<Vec<(u32, u64, usize)>> = std::cell::OnceCell::new();
    // symsearch_find_nearest
    let find_nearest_in = |table: &[(u32, u64, usize)],
                           addr: u64,
                           secndx: u32,
                           allow_negative: bool,
                           min_distance: u64|
     -> Option<usize> {
        let hi = table.partition_point(|e| (e.0, e.1) <= (secndx, addr));
        let mut min_distance = min_distance;
        let mut result = None;
        if allow_negative
            && hi < table.len()
            && table[hi].0 == secndx
            && table[hi].1.wrapping_sub(addr) <= min_distance
        {
            min_distance = table[hi].1.wrapping_sub(addr);
            result = Some(table[hi].2);
        }
        if hi > 0 && table[hi - 1].0 == secndx && addr.wrapping_sub(table[hi - 1].1) <= min_distance
        {
            result = Some(table[hi - 1].2);
        }
        result
    };
    let find_nearest = |addr: u64, secndx: u32, allow_negative: bool, min_distance: u64| {
        let table = full_table.get_or_init(|| build_table(None));
        find_nearest_in(table, addr, secndx, allow_negative, min_distance)
    };
    let nearest = |addr: u64| -> Option<usize> {
        export_secndx.and_then(|x| find_nearest_in(&export_table, addr, x, false, u64::MAX))
    };
    let machine = header.e_machine(endian);
    let mips64el = header.is_mips64el(endian);

    // The target sections' classes for the mismatch checks, once each.
    let mut to_class: Vec<u8> = vec![UNKNOWN; num_sections as usize + 1];
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
        let fromsec = sec_name(target);
        if is_white_listed(fromsec) {
            continue;
        }
        let exports_here = opts.modules && Some(target) == export_secndx;
        let mismatch_pass = opts.section_mismatch && out.layout == Layout::ExportSymbol;
        if !exports_here && !mismatch_pass {
            continue;
        }
        // Only sections some check starts from can report a mismatch.
        let checked_from = !exports_here && section_mismatch_from(fromsec);
        if !exports_here && !checked_from {
            continue;
        }
        let from_rows = if checked_from { from_rows(fromsec) } else { 0 };
        // (offset, symbol, type, addend or None for REL)
        let mut relocs: Vec<(u64, u32, u32, Option<i64>)> = Vec::new();
        if let Some((rela, _)) = section
            .rela(endian, data)
            .map_err(|e| anyhow!("bad relocations: {e}"))?
        {
            for r in rela {
                relocs.push((
                    r.r_offset(endian).into(),
                    r.r_sym(endian, mips64el),
                    r.r_type(endian, mips64el),
                    Some(r.r_addend(endian).into()),
                ));
            }
        }
        if let Some((rel, _)) = section
            .rel(endian, data)
            .map_err(|e| anyhow!("bad relocations: {e}"))?
        {
            for r in rel {
                relocs.push((
                    r.r_offset(endian).into(),
                    r.r_sym(endian),
                    r.r_type(endian),
                    None,
                ));
            }
        }
        for (offset, r_sym, r_type, addend) in relocs {
            if exports_here {
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
                continue;
            }
            match machine {
                elf::EM_RISCV if fromsec == b"__ex_table" && r_type == elf::R_RISCV_SUB32 => {
                    continue
                }
                elf::EM_LOONGARCH
                    if (r_type == elf::R_LARCH_SUB32 && fromsec == b"__ex_table")
                        || r_type == elf::R_LARCH_RELAX
                        || r_type == elf::R_LARCH_ALIGN =>
                {
                    continue
                }
                _ => {}
            }
            let tsym = symbols
                .symbol(object::SymbolIndex(r_sym as usize))
                .map_err(|_| {
                    anyhow!(
                        "{}: relocation at {offset:#x} points at symbol {r_sym}, which does not exist",
                        lossy(fromsec)
                    )
                })?;
            let tsecndx = secindex(r_sym as usize, tsym);
            let slot = (tsecndx.min(num_sections)) as usize;
            if to_class[slot] == UNKNOWN {
                to_class[slot] = to_bits(sec_name(tsecndx));
            }
            let Some(check) = section_mismatch(from_rows, to_class[slot]) else {
                continue;
            };
            let tosec = sec_name(tsecndx);
            let st_value: u64 = tsym.st_value(endian).into();
            let taddr = match addend {
                Some(a) => st_value.wrapping_add(a as u64),
                None if machine == elf::EM_386 => {
                    let loc = section_data(target)
                        .get(offset as usize..offset as usize + 4)
                        .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as u64)
                        .unwrap_or(0);
                    match r_type {
                        elf::R_386_32 => loc,
                        elf::R_386_PC32 => loc + 4,
                        _ => u32::MAX as u64,
                    }
                }
                None => bail!(
                    "{}: section-mismatch analysis of REL relocations is not implemented for ELF machine {machine}",
                    lossy(fromsec)
                ),
            };
            // default_mismatch_handler
            let from = find_nearest(offset, target, false, u64::MAX)
                .and_then(|i| symbols.symbol(object::SymbolIndex(i)).ok());
            let fromsym = from.map(name_of).unwrap_or(b"");
            let tsym = if is_valid_name(name_of(tsym)) {
                (r_sym as usize, tsym)
            } else {
                match find_nearest(taddr, secindex(r_sym as usize, tsym), true, 20) {
                    Some(i) => (i, symbols.symbol(object::SymbolIndex(i)).unwrap()),
                    None => (r_sym as usize, tsym),
                }
            };
            let tosym = name_of(tsym.1);
            if !secref_whitelist(fromsec, fromsym, tosec, tosym) {
                continue;
            }
            out.section_mismatches += 1;
            let faddr_rel = if fromsym.is_empty() {
                offset
            } else {
                offset.wrapping_sub(from.unwrap().st_value(endian).into())
            } as u32;
            let to = if tosym.is_empty() {
                format!("0x{:x}", taddr as u32)
            } else {
                lossy(tosym)
            };
            out.diagnostics.push(Diagnostic::warning(format!(
                "{module}: section mismatch in reference: {}{}0x{:x} (section: {}) -> {to} (section: {})\n",
                lossy(fromsym),
                if fromsym.is_empty() { "" } else { "+" },
                faddr_rel,
                lossy(fromsec),
                lossy(tosec)
            )));
            if check == Mismatch::ExtableToNonText {
                let (fs, ts) = (lossy(fromsec), lossy(tosec));
                if tosec == b".altinstr_replacement" {
                    bail!(
                        "The relocation at {fs}+0x{offset:x} references\n\
                         section \"{ts}\" which is black-listed.\n\
                         Something is seriously wrong and should be fixed.\n\
                         You might get more information about where this is\n\
                         coming from by using scripts/check_extable.sh {module}"
                    );
                }
                let tsec = secindex(tsym.0, tsym.1);
                let executable = tsec < num_sections
                    && sections
                        .section(object::SectionIndex(tsec as usize))
                        .map(|s| {
                            let f: u64 = s.sh_flags(endian).into();
                            f & u64::from(elf::SHF_EXECINSTR) != 0
                        })
                        .unwrap_or(false);
                if executable {
                    out.diagnostics.push(Diagnostic::warning(format!(
                        "The relocation at {fs}+0x{offset:x} references\n\
                         section \"{ts}\" which is not in the list of\n\
                         authorized sections.  If you're adding a new section\n\
                         and/or if this reference is valid, add \"{ts}\" to the\n\
                         list of authorized sections to jump to on fault.\n\
                         This can be achieved by adding \"{ts}\" to\n\
                         OTHER_TEXT_SECTIONS in scripts/mod/modpost.c.\n"
                    )));
                } else {
                    out.diagnostics.push(Diagnostic::error(format!(
                        "{fs}+0x{offset:x} references non-executable section '{ts}'\n"
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// A shell pattern of modpost's tables: `*` is the only wildcard used.
fn glob(pattern: &[u8], s: &[u8]) -> bool {
    match pattern.iter().position(|b| *b == b'*') {
        None => pattern == s,
        Some(star) => {
            let (head, rest) = (&pattern[..star], &pattern[star + 1..]);
            if !s.starts_with(head) {
                return false;
            }
            let s = &s[head.len()..];
            (0..=s.len()).any(|i| glob(rest, &s[i..]))
        }
    }
}

fn matches(s: &[u8], patterns: &[&str]) -> bool {
    patterns.iter().any(|p| glob(p.as_bytes(), s))
}

const ALL_INIT_DATA_SECTIONS: &[&str] = &[".init.setup", ".init.rodata", ".init.data"];
const ALL_PCI_INIT_SECTIONS: &[&str] = &[
    ".pci_fixup_early",
    ".pci_fixup_header",
    ".pci_fixup_final",
    ".pci_fixup_enable",
    ".pci_fixup_resume",
    ".pci_fixup_resume_early",
    ".pci_fixup_suspend",
];
const ALL_INIT_SECTIONS: &[&str] = &[".init.*"];
const ALL_EXIT_SECTIONS: &[&str] = &[".exit.*"];
const ALL_INIT_EXIT_SECTIONS: &[&str] = &[".init.*", ".exit.*"];
const DATA_SECTIONS: &[&str] = &[".data", ".data.rel"];
const TEXT_DATA_SECTIONS: &[&str] = &[
    ".text",
    ".text.*",
    ".sched.text",
    ".kprobes.text",
    ".cpuidle.text",
    ".noinstr.text",
    ".ltext",
    ".ltext.*",
    ".data",
    ".data.rel",
];
const ALL_TEXT_SECTIONS: &[&str] = &[
    ".init.text",
    ".exit.text",
    ".text",
    ".text.*",
    ".sched.text",
    ".kprobes.text",
    ".cpuidle.text",
    ".noinstr.text",
    ".ltext",
    ".ltext.*",
    ".ref.text",
    ".head.text",
    ".spinlock.text",
    ".fixup",
    ".entry.text",
    ".exception.text",
    ".coldtext",
    ".softirqentry.text",
    ".irqentry.text",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mismatch {
    Other,
    ExtableToNonText,
}

/// Whether any `sectioncheck` entry starts from this section.
fn section_mismatch_from(fromsec: &[u8]) -> bool {
    from_rows(fromsec) != 0
}

/// The rows of modpost's `sectioncheck` table whose `fromsec` patterns
/// match, as bits in table order.
fn from_rows(fromsec: &[u8]) -> u8 {
    let mut rows = 0;
    for (bit, pats) in [
        TEXT_DATA_SECTIONS,
        ALL_INIT_SECTIONS,
        ALL_EXIT_SECTIONS,
        ALL_PCI_INIT_SECTIONS,
        &["__ex_table"],
    ]
    .iter()
    .enumerate()
    {
        if matches(fromsec, pats) {
            rows |= 1 << bit;
        }
    }
    rows
}

const UNKNOWN: u8 = 0xff;
const TO_EMPTY: u8 = 1;
const TO_INIT: u8 = 2;
const TO_EXIT: u8 = 4;
const TO_ALTINSTR: u8 = 8;
const TO_TEXT: u8 = 16;

/// What the `sectioncheck` table asks of a target section.
fn to_bits(tosec: &[u8]) -> u8 {
    let mut b = 0;
    if tosec.is_empty() {
        b |= TO_EMPTY;
    }
    if matches(tosec, ALL_INIT_SECTIONS) {
        b |= TO_INIT;
    }
    if matches(tosec, ALL_EXIT_SECTIONS) {
        b |= TO_EXIT;
    }
    if tosec == b".altinstr_replacement" {
        b |= TO_ALTINSTR;
    }
    if matches(tosec, ALL_TEXT_SECTIONS) {
        b |= TO_TEXT;
    }
    b
}

/// modpost's `section_mismatch` over its `sectioncheck` table: the first
/// row (in order) whose `fromsec` matches and whose `bad_tosec` matches or
/// `good_tosec` does not.
fn section_mismatch(from_rows: u8, to: u8) -> Option<Mismatch> {
    if to & TO_EMPTY != 0 {
        return None;
    }
    let rows: [(u8, u8, Mismatch); 5] = [
        (TO_INIT | TO_EXIT, 0, Mismatch::Other),
        (TO_EXIT, 0, Mismatch::Other),
        (TO_INIT, 0, Mismatch::Other),
        (TO_INIT, 0, Mismatch::Other),
        (TO_ALTINSTR, TO_TEXT, Mismatch::ExtableToNonText),
    ];
    for (bit, (bad, good, kind)) in rows.into_iter().enumerate() {
        if from_rows & (1 << bit) != 0 && (to & bad != 0 || (good != 0 && to & good == 0)) {
            return Some(kind);
        }
    }
    None
}

/// modpost's `secref_whitelist`: false when the reference is allowed.
fn secref_whitelist(fromsec: &[u8], fromsym: &[u8], tosec: &[u8], tosym: &[u8]) -> bool {
    if matches(tosec, ALL_INIT_DATA_SECTIONS)
        && matches(fromsec, DATA_SECTIONS)
        && fromsym.starts_with(b"__param")
    {
        return false;
    }
    if tosec == b".init.text"
        && matches(fromsec, DATA_SECTIONS)
        && fromsym.starts_with(b"__param_ops_")
    {
        return false;
    }
    if matches(fromsec, DATA_SECTIONS)
        && matches(tosec, ALL_INIT_EXIT_SECTIONS)
        && matches(fromsym, &["*_ops", "*_probe", "*_console"])
    {
        return false;
    }
    if fromsec.starts_with(b".head.text") && matches(tosec, ALL_INIT_SECTIONS) {
        return false;
    }
    if matches(tosym, &["__init_begin", "_sinittext", "_einittext"]) {
        return false;
    }
    if matches(fromsec, ALL_TEXT_SECTIONS)
        && matches(tosec, ALL_INIT_SECTIONS)
        && matches(fromsym, &["*.constprop.*"])
    {
        return false;
    }
    true
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
    fn globs() {
        assert!(glob(b"*_ops", b"ipv6_ops"));
        assert!(!glob(b"*_ops", b"ipv6_ops.llvm.123"));
        assert!(glob(b"*.constprop.*", b"f.constprop.0"));
        assert!(glob(b".init.*", b".init.text"));
        assert!(!glob(b".init.*", b".init"));
        assert!(glob(b".data", b".data"));
        assert!(!glob(b".data", b".data.x"));
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
