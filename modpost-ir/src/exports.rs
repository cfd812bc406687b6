//! The exports of `vmlinux.o`, found as modpost (Linux 6.12) finds them.
//!
//! Linux ≥ 6.5: each export is an entry of the `.export_symbol` section,
//! labelled `__export_symbol_<name>` and holding the license string, the
//! namespace string and a relocation to the exported symbol. modpost walks
//! the relocations of that section in order; for each, the label is the
//! nearest valid symbol at or before the relocation's offset in the
//! section (lowest symbol index among equal addresses), and the exported
//! symbol is the relocation's target (function or data by its type).
//!
//! Before 6.5 (e.g. 6.1): a `__ksymtab_<name>` symbol in a section named
//! `___ksymtab+<name>` or `___ksymtab_gpl+<name>`, the namespace in the
//! string of `__kstrtabns_<name>`; exports in symbol-table order.

use anyhow::{anyhow, bail, Context, Result};
use object::elf;
use object::read::elf::{FileHeader, Rel as _, Rela as _, SectionHeader, Sym};
use object::Endianness;

/// One exported symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub name: String,
    pub gpl_only: bool,
    pub namespace: String,
    pub is_func: bool,
}

/// What reading the exports found: the exports in modpost's order, and
/// the diagnostics modpost prints (errors make it exit 1).
#[derive(Debug, Clone, Default)]
pub struct Exports {
    pub exports: Vec<Export>,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Reads the exports of an ELF relocatable object in memory. `module` is
/// the module name used in messages (`vmlinux`).
pub fn read_exports(data: &[u8], module: &str) -> Result<Exports> {
    match object::FileKind::parse(data).map_err(|e| anyhow!("not an ELF file: {e}"))? {
        object::FileKind::Elf64 => read::<elf::FileHeader64<Endianness>>(data, module),
        object::FileKind::Elf32 => read::<elf::FileHeader32<Endianness>>(data, module),
        k => bail!("not an ELF relocatable object ({k:?})"),
    }
}

fn c_str(data: &[u8], at: usize) -> Option<&[u8]> {
    let tail = data.get(at..)?;
    Some(&tail[..tail.iter().position(|b| *b == 0)?])
}

fn is_valid_name(name: &[u8]) -> bool {
    !(name.is_empty()
        || name.starts_with(b".L")
        || name.starts_with(b"L0")
        || name.starts_with(b"$"))
}

fn read<E: FileHeader<Endian = Endianness>>(data: &[u8], module: &str) -> Result<Exports> {
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
    let secindex = |i: usize, sym: &E::Sym| -> u32 {
        let shndx = sym.st_shndx(endian);
        if shndx == elf::SHN_XINDEX {
            symbols.shndx(endian, object::SymbolIndex(i)).unwrap_or(0)
        } else if shndx >= elf::SHN_LORESERVE {
            // modpost moves reserved indices to the top of the range.
            (shndx as u32).wrapping_sub(elf::SHN_HIRESERVE as u32 + 1)
        } else {
            shndx as u32
        }
    };
    let name_of = |sym: &E::Sym| symbols.symbol_name(endian, sym).unwrap_or(b"");
    let section_data = |idx: u32| -> Option<&[u8]> {
        let s = sections.section(object::SectionIndex(idx as usize)).ok()?;
        if s.sh_type(endian) == elf::SHT_NOBITS {
            return None;
        }
        s.data(endian, data).ok()
    };
    let mut out = Exports::default();
    let export_secndx = sections
        .iter()
        .position(|s| sections.section_name(endian, s).ok() == Some(b".export_symbol".as_slice()));
    let Some(export_secndx) = export_secndx else {
        return read_ksymtab::<E>(data, &sections, &symbols, endian, module);
    };
    // modpost's symsearch table: valid names, sorted by (section, address,
    // index); equal (section, address) runs take the first index.
    let mut table: Vec<(u32, u64, usize)> = Vec::new();
    for (i, sym) in symbols.iter().enumerate() {
        if is_valid_name(name_of(sym)) {
            table.push((secindex(i, sym), sym.st_value(endian).into(), i));
        }
    }
    table.sort();
    for i in 1..table.len() {
        if table[i].0 == table[i - 1].0 && table[i].1 == table[i - 1].1 {
            table[i].2 = table[i - 1].2;
        }
    }
    let nearest = |addr: u64| -> Option<usize> {
        let hi = table.partition_point(|e| (e.0, e.1) <= (export_secndx as u32, addr));
        (hi > 0 && table[hi - 1].0 == export_secndx as u32).then(|| table[hi - 1].2)
    };
    let export_data = section_data(export_secndx as u32).unwrap_or(&[]);
    for section in sections.iter() {
        let ty = section.sh_type(endian);
        if (ty != elf::SHT_RELA && ty != elf::SHT_REL)
            || section.sh_info(endian) as usize != export_secndx
        {
            continue;
        }
        let mut relocs: Vec<(u64, u32)> = Vec::new();
        if let Some((rela, _)) = section
            .rela(endian, data)
            .map_err(|e| anyhow!("bad relocations: {e}"))?
        {
            for r in rela {
                relocs.push((r.r_offset(endian).into(), r.r_sym(endian, false)));
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
            let target = symbols
                .symbol(object::SymbolIndex(r_sym as usize))
                .map_err(|_| anyhow!("a .export_symbol relocation points at symbol {r_sym}, which does not exist"))?;
            let Some(label_idx) = nearest(offset) else {
                out.errors.push(format!(
                    "{module}: .export_symbol section contains strange symbol ''"
                ));
                continue;
            };
            let label = symbols
                .symbol(object::SymbolIndex(label_idx))
                .map_err(|e| anyhow!("{e}"))?;
            let label_name = String::from_utf8_lossy(name_of(label)).into_owned();
            let Some(exported) = label_name.strip_prefix("__export_symbol_") else {
                out.errors.push(format!(
                    "{module}: .export_symbol section contains strange symbol '{label_name}'"
                ));
                continue;
            };
            let bind = target.st_bind();
            if bind != elf::STB_GLOBAL && bind != elf::STB_WEAK {
                out.errors
                    .push(format!("{module}: local symbol '{exported}' was exported"));
                continue;
            }
            let name = String::from_utf8_lossy(name_of(target)).into_owned();
            if name != exported {
                out.errors.push(format!(
                    "{module}: .export_symbol section references '{name}', but it does not seem to be an export symbol"
                ));
                continue;
            }
            let at = label.st_value(endian).into() as usize;
            let license = c_str(export_data, at).with_context(|| {
                format!("__export_symbol_{name}: its entry lies outside .export_symbol")
            })?;
            let namespace = c_str(export_data, at + license.len() + 1)
                .with_context(|| format!("__export_symbol_{name}: no namespace string"))?;
            let gpl_only = match license {
                b"GPL" => true,
                b"" => false,
                other => {
                    out.errors.push(format!(
                        "{module}: unknown license '{}' was specified for '{name}'",
                        String::from_utf8_lossy(other)
                    ));
                    continue;
                }
            };
            if out.exports.iter().any(|e| e.name == name) {
                out.errors.push(format!(
                    "{module}: '{name}' exported twice. Previous export was in {module}"
                ));
            }
            out.exports.push(Export {
                name,
                gpl_only,
                namespace: String::from_utf8_lossy(namespace).into_owned(),
                is_func: target.st_type() == elf::STT_FUNC,
            });
        }
    }
    Ok(out)
}

/// The pre-6.5 layout: `__ksymtab_<name>` in `___ksymtab[_gpl]+<name>`.
fn read_ksymtab<E: FileHeader<Endian = Endianness>>(
    data: &[u8],
    sections: &object::read::elf::SectionTable<E>,
    symbols: &object::read::elf::SymbolTable<E>,
    endian: Endianness,
    module: &str,
) -> Result<Exports> {
    let mut out = Exports::default();
    let mut namespaces: Vec<(String, String)> = Vec::new();
    for (i, sym) in symbols.iter().enumerate() {
        let name = symbols.symbol_name(endian, sym).unwrap_or(b"");
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        let Ok(Some(section)) = symbols
            .symbol_section(endian, sym, object::SymbolIndex(i))
            .map(|i| i.and_then(|i| sections.section(i).ok()))
        else {
            continue;
        };
        let secname = sections.section_name(endian, section).unwrap_or(b"");
        if let Some(exported) = name.strip_prefix("__ksymtab_") {
            let gpl = if secname.starts_with(b"___ksymtab_gpl+") {
                true
            } else if secname.starts_with(b"___ksymtab+") {
                false
            } else {
                continue;
            };
            if out.exports.iter().any(|e| e.name == exported) {
                out.errors.push(format!(
                    "{module}: '{exported}' exported twice. Previous export was in {module}"
                ));
            }
            out.exports.push(Export {
                name: exported.to_string(),
                gpl_only: gpl,
                namespace: String::new(),
                is_func: true,
            });
        } else if let Some(exported) = name.strip_prefix("__kstrtabns_") {
            let text = section
                .data(endian, data)
                .ok()
                .and_then(|d| c_str(d, sym.st_value(endian).into() as usize))
                .unwrap_or(b"");
            namespaces.push((
                exported.to_string(),
                String::from_utf8_lossy(text).into_owned(),
            ));
        }
    }
    for (name, ns) in namespaces {
        if let Some(e) = out.exports.iter_mut().rev().find(|e| e.name == name) {
            e.namespace = ns;
        }
    }
    Ok(out)
}
