//! `cargo xtask modules-compare`: a kernel tree's loadable modules against
//! the same sources built the stock way (issue 21): `Module.symvers` and
//! `modules.order` identical, and for every module of `modules.order` its
//! `.ko` with the same exported symbols (`__ksymtab_*`), the same undefined
//! symbols, the same `.modinfo` and the same `__versions` entries (the CRCs
//! modpost wrote for the symbols it needs). `__versions` is compared as a
//! set: modpost writes it in the order of the module object's undefined
//! symbols, which differs between lld's in-process LTO output and an `ld -r`
//! of natives; the number of modules whose order differs is reported. For
//! the same reason `.modinfo`'s `depends=` is compared as a set of module
//! names (modpost lists them in the order it resolves those symbols), every
//! other `.modinfo` string exactly and in order.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};
use object::{Object, ObjectSection, ObjectSymbol};

use crate::flow::Check;

/// What modpost and the module loader see of one `.ko`.
#[derive(Debug, PartialEq, Eq)]
pub struct KoFacts {
    pub exports: BTreeSet<String>,
    pub undefined: BTreeSet<String>,
    pub modinfo: Vec<String>,
    /// `__versions`' (symbol, CRC) entries, in the section's order.
    pub versions: Vec<(String, u64)>,
}

/// One `struct modversion_info` is 64 bytes on a 64-bit target: the CRC
/// (an `unsigned long`) and the NUL-padded name.
const MODVERSION_INFO: usize = 64;

fn versions(path: &Path, data: &[u8]) -> Result<Vec<(String, u64)>> {
    if !data.len().is_multiple_of(MODVERSION_INFO) {
        anyhow::bail!(
            "{}: __versions is {} bytes, not a multiple of {MODVERSION_INFO} (64-bit modversion_info)",
            path.display(),
            data.len()
        );
    }
    Ok(data
        .chunks(MODVERSION_INFO)
        .map(|e| {
            let crc = u64::from_le_bytes(e[..8].try_into().expect("8 bytes"));
            let name = e[8..].split(|b| *b == 0).next().unwrap_or_default();
            (String::from_utf8_lossy(name).into_owned(), crc)
        })
        .collect())
}

pub fn ko_facts(path: &Path) -> Result<KoFacts> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = object::File::parse(&*data)
        .with_context(|| format!("{}: not an ELF object", path.display()))?;
    let mut exports = BTreeSet::new();
    let mut undefined = BTreeSet::new();
    for s in file.symbols() {
        let name = s
            .name()
            .with_context(|| format!("{}: a symbol name", path.display()))?;
        if s.is_undefined() {
            if !name.is_empty() {
                undefined.insert(name.to_string());
            }
        } else if let Some(e) = name.strip_prefix("__ksymtab_") {
            exports.insert(e.to_string());
        }
    }
    let section = |name: &str| -> Result<Vec<u8>> {
        Ok(match file.section_by_name(name) {
            Some(s) => s
                .data()
                .with_context(|| format!("{}: section {name}", path.display()))?
                .to_vec(),
            None => Vec::new(),
        })
    };
    let modinfo = section(".modinfo")?
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    Ok(KoFacts {
        exports,
        undefined,
        modinfo,
        versions: versions(path, &section("__versions")?)?,
    })
}

/// `.modinfo` with each `depends=` list sorted: what is compared. The
/// loader reads `depends=` as a set; its order follows the order of the
/// object's undefined symbols (see the module comment).
fn modinfo_with_sorted_depends(modinfo: &[String]) -> Vec<String> {
    modinfo
        .iter()
        .map(|s| match s.strip_prefix("depends=") {
            Some(list) => {
                let mut names: Vec<&str> = list.split(',').collect();
                names.sort_unstable();
                format!("depends={}", names.join(","))
            }
            None => s.clone(),
        })
        .collect()
}

fn read(tree: &Path, file: &str) -> Result<Vec<u8>> {
    let p = tree.join(file);
    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
}

/// Every check of `tree`'s modules against `stock`'s.
pub fn compare_modules(stock: &Path, tree: &Path) -> Result<Vec<Check>> {
    let mut checks = Vec::new();
    for f in ["Module.symvers", "modules.order"] {
        let (a, b) = (read(stock, f)?, read(tree, f)?);
        checks.push(Check {
            name: format!("{f} identical"),
            ok: a == b,
            detail: format!("{} lines", String::from_utf8_lossy(&a).lines().count()),
        });
    }
    let order = String::from_utf8(read(stock, "modules.order")?)
        .with_context(|| format!("{}/modules.order: not UTF-8", stock.display()))?;
    let (mut same, mut differ) = (0usize, Vec::new());
    let (mut exports, mut undefined, mut reordered) = (0usize, 0usize, 0usize);
    let mut depends_reordered = 0usize;
    for m in order.lines().filter(|l| !l.is_empty()) {
        let ko = format!("{}.ko", m.strip_suffix(".o").unwrap_or(m));
        let want = ko_facts(&stock.join(&ko))?;
        let got = ko_facts(&tree.join(&ko))?;
        let set = |v: &[(String, u64)]| v.iter().cloned().collect::<BTreeSet<_>>();
        if want.versions != got.versions {
            reordered += 1;
        }
        let modinfo_alike =
            modinfo_with_sorted_depends(&want.modinfo) == modinfo_with_sorted_depends(&got.modinfo);
        if modinfo_alike && want.modinfo != got.modinfo {
            depends_reordered += 1;
        }
        let alike = want.exports == got.exports
            && want.undefined == got.undefined
            && modinfo_alike
            && set(&want.versions) == set(&got.versions);
        if alike {
            same += 1;
            exports += want.exports.len();
            undefined += want.undefined.len();
        } else {
            let what: Vec<&str> = [
                ("exports", want.exports != got.exports),
                ("undefined symbols", want.undefined != got.undefined),
                ("modinfo", !modinfo_alike),
                ("__versions", set(&want.versions) != set(&got.versions)),
            ]
            .into_iter()
            .filter_map(|(n, d)| d.then_some(n))
            .collect();
            differ.push(format!("{ko}: {}", what.join(", ")));
        }
    }
    checks.push(Check {
        name: ".ko exports, undefs, modinfo, __versions".into(),
        ok: differ.is_empty() && same > 0,
        detail: if differ.is_empty() {
            format!(
                "{same} modules alike ({exports} exports, {undefined} undefined symbols; \
                 __versions in another order in {reordered}, depends= in {depends_reordered})"
            )
        } else {
            differ.join("; ")
        },
    });
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_is_compared_as_a_set_and_every_other_modinfo_string_exactly() {
        let v = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let stock = v(&[
            "license=GPL",
            "depends=twofish_common,crypto_simd",
            "name=t",
        ]);
        let swapped = v(&[
            "license=GPL",
            "depends=crypto_simd,twofish_common",
            "name=t",
        ]);
        let other = v(&["license=GPL", "depends=crypto_simd", "name=t"]);
        let moved = v(&[
            "depends=twofish_common,crypto_simd",
            "license=GPL",
            "name=t",
        ]);
        let canon = modinfo_with_sorted_depends;
        assert_eq!(canon(&stock), canon(&swapped));
        assert_ne!(canon(&stock), canon(&other));
        assert_ne!(canon(&stock), canon(&moved));
        assert_eq!(canon(&v(&["depends="])), v(&["depends="]));
    }
}
