//! `cargo xtask modules-compare`: a kernel tree's loadable modules against
//! the same sources built the stock way (issue 21): `Module.symvers` and
//! `modules.order` identical, and for every module of `modules.order` its
//! `.ko` with the same exported symbols (`__ksymtab_*`), the same undefined
//! symbols, the same `.modinfo` and the same `__versions` (the CRCs modpost
//! wrote for the symbols it needs).

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
    pub versions: Vec<u8>,
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
        versions: section("__versions")?,
    })
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
    let (mut exports, mut undefined) = (0usize, 0usize);
    for m in order.lines().filter(|l| !l.is_empty()) {
        let ko = format!("{}.ko", m.strip_suffix(".o").unwrap_or(m));
        let want = ko_facts(&stock.join(&ko))?;
        let got = ko_facts(&tree.join(&ko))?;
        if want == got {
            same += 1;
            exports += want.exports.len();
            undefined += want.undefined.len();
        } else {
            let what: Vec<&str> = [
                ("exports", want.exports != got.exports),
                ("undefined symbols", want.undefined != got.undefined),
                ("modinfo", want.modinfo != got.modinfo),
                ("__versions", want.versions != got.versions),
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
            format!("{same} modules alike ({exports} exports, {undefined} undefined symbols)")
        } else {
            differ.join("; ")
        },
    });
    Ok(checks)
}
