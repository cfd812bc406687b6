//! Which modules a built kernel tree has, and an order to load them in:
//! `modules.order`'s, except that a module comes after the modules its
//! `.modinfo` `depends=` names (modpost wrote them: the modules whose
//! exports it uses), because `insmod` does not resolve dependencies as
//! `modprobe` would.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use object::{Object, ObjectSection};

/// A built module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// The module's name (`.modinfo` `name=`: `crc32c_generic`).
    pub name: String,
    /// Its `.ko`, relative to the tree (`crypto/crc32c_generic.ko`).
    pub ko: PathBuf,
    /// The names of the modules it needs loaded first.
    pub depends: Vec<String>,
}

/// The `.ko` files of `tree/modules.order`, in its order. Linux ≥ 6.2
/// lists the module objects (`fs/ext2/ext2.o`), earlier ones the `.ko`.
pub fn read_modules_order(tree: &Path) -> Result<Vec<PathBuf>> {
    let path = tree.join("modules.order");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: cannot read (build the modules first: make modules)",
            path.display()
        )
    })?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let ko = match line.strip_suffix(".o") {
            Some(stem) => format!("{stem}.ko"),
            None if line.ends_with(".ko") => line.to_string(),
            None => bail!(
                "{}:{}: `{line}` is not a module (expected a path ending in .o or .ko)",
                path.display(),
                n + 1
            ),
        };
        out.push(PathBuf::from(ko));
    }
    Ok(out)
}

/// The `key=value` strings of a module's `.modinfo` section.
pub fn modinfo(ko_bytes: &[u8]) -> Result<Vec<(String, String)>> {
    let file = object::File::parse(ko_bytes).context("not an ELF object")?;
    let section = file
        .section_by_name(".modinfo")
        .context("no .modinfo section (not a kernel module?)")?;
    let data = section.data().context("cannot read .modinfo")?;
    Ok(data
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect())
}

/// Reads a module: its name (`name=`, else kbuild's from the file name:
/// `-` becomes `_`) and `depends=`.
pub fn read_module(tree: &Path, ko: &Path) -> Result<Module> {
    let path = tree.join(ko);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "{}: cannot read (modules.order lists it; an unfinished build?)",
            path.display()
        )
    })?;
    let info = modinfo(&bytes).with_context(|| format!("{}", path.display()))?;
    let get = |key: &str| info.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let name = get("name").unwrap_or_else(|| {
        ko.file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .replace('-', "_")
    });
    let depends = get("depends")
        .unwrap_or_default()
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect();
    Ok(Module {
        name,
        ko: ko.to_path_buf(),
        depends,
    })
}

/// The load order: modules in the given (modules.order) order, except
/// that each comes after the modules it depends on. Stable: of the
/// modules whose dependencies are loaded, the earliest in the given
/// order goes next. A dependency no module provides, or a cycle, is an
/// error naming the modules.
pub fn load_order(modules: &[Module]) -> Result<Vec<Module>> {
    for m in modules {
        for d in &m.depends {
            if !modules.iter().any(|o| &o.name == d) {
                bail!(
                    "{} ({}) depends on {d}, which is not among the built modules (modules.order)",
                    m.name,
                    m.ko.display()
                );
            }
        }
    }
    let mut placed = vec![false; modules.len()];
    let mut order: Vec<Module> = Vec::with_capacity(modules.len());
    while order.len() < modules.len() {
        let next = (0..modules.len()).find(|&i| {
            !placed[i]
                && modules[i]
                    .depends
                    .iter()
                    .all(|d| order.iter().any(|o| &o.name == d))
        });
        match next {
            Some(i) => {
                placed[i] = true;
                order.push(modules[i].clone());
            }
            None => {
                let stuck: Vec<String> = (0..modules.len())
                    .filter(|&i| !placed[i])
                    .map(|i| {
                        format!(
                            "{} (depends={})",
                            modules[i].name,
                            modules[i].depends.join(",")
                        )
                    })
                    .collect();
                bail!("module dependencies form a cycle: {}", stuck.join(", "));
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, depends: &[&str]) -> Module {
        Module {
            name: name.into(),
            ko: PathBuf::from(format!("{name}.ko")),
            depends: depends.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn names(v: &[Module]) -> Vec<&str> {
        v.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn load_order_keeps_modules_order_and_puts_dependencies_first() {
        // No dependencies: modules.order's order, untouched.
        let plain = [m("c", &[]), m("a", &[]), m("b", &[])];
        assert_eq!(names(&load_order(&plain).unwrap()), ["c", "a", "b"]);
        // libcrc32c listed before the crc32c_generic it needs (and a chain
        // behind it): the dependency moves up just enough, the others keep
        // their relative order.
        let v = [
            m("dummy", &[]),
            m("btrfs", &["libcrc32c", "xor"]),
            m("libcrc32c", &["crc32c_generic"]),
            m("ext2", &[]),
            m("crc32c_generic", &[]),
            m("xor", &[]),
        ];
        assert_eq!(
            names(&load_order(&v).unwrap()),
            [
                "dummy",
                "ext2",
                "crc32c_generic",
                "libcrc32c",
                "xor",
                "btrfs"
            ]
        );
    }

    #[test]
    fn load_order_names_a_missing_dependency_and_a_cycle() {
        let e = load_order(&[m("a", &["nosuch"])]).unwrap_err().to_string();
        assert!(e.contains("a (a.ko) depends on nosuch"), "{e}");
        let e = load_order(&[m("ok", &[]), m("a", &["b"]), m("b", &["a"])])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cycle") && e.contains("a (depends=b)") && e.contains("b (depends=a)"),
            "{e}"
        );
        assert!(!e.contains("ok"), "{e}");
    }

    #[test]
    fn modules_order_lists_objects_or_kos_and_rejects_other_lines() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("modules.order"),
            "fs/ext2/ext2.o\n\ndrivers/net/dummy.ko\n",
        )
        .unwrap();
        assert_eq!(
            read_modules_order(d.path()).unwrap(),
            [
                PathBuf::from("fs/ext2/ext2.ko"),
                PathBuf::from("drivers/net/dummy.ko")
            ]
        );
        std::fs::write(d.path().join("modules.order"), "fs/ext2/ext2.o\nfs/ext2/\n").unwrap();
        let e = format!("{:#}", read_modules_order(d.path()).unwrap_err());
        assert!(
            e.contains("modules.order:2") && e.contains("fs/ext2/"),
            "{e}"
        );
    }

    /// A real module's `.modinfo`, as modpost's `.mod.c` lays it out,
    /// compiled by the real clang.
    #[test]
    fn modinfo_name_and_depends_are_read_from_an_object() {
        let cc = thinlto_index::Toolchain::resolve_cc(&Default::default()).unwrap();
        let compile = |ko: &Path, src: &Path| {
            let st = std::process::Command::new(&cc.argv[0])
                .args(&cc.argv[1..])
                .args(["-c", "-o"])
                .arg(ko)
                .arg(src)
                .status()
                .unwrap();
            assert!(st.success());
        };
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("m.c");
        std::fs::write(
            &src,
            r#"static const char a[] __attribute__((section(".modinfo"), used, aligned(1))) = "license=GPL";
static const char b[] __attribute__((section(".modinfo"), used, aligned(1))) = "depends=libcrc32c,crc32c_generic";
static const char c[] __attribute__((section(".modinfo"), used, aligned(1))) = "name=my_mod";
"#,
        )
        .unwrap();
        let ko = d.path().join("sub/my-mod.ko");
        std::fs::create_dir_all(ko.parent().unwrap()).unwrap();
        compile(&ko, &src);
        let m = read_module(d.path(), Path::new("sub/my-mod.ko")).unwrap();
        assert_eq!(m.name, "my_mod");
        assert_eq!(m.depends, ["libcrc32c", "crc32c_generic"]);
        // Without name=: kbuild's name from the file.
        std::fs::write(
            &src,
            r#"static const char b[] __attribute__((section(".modinfo"), used, aligned(1))) = "depends=";
"#,
        )
        .unwrap();
        compile(&ko, &src);
        let m = read_module(d.path(), Path::new("sub/my-mod.ko")).unwrap();
        assert_eq!((m.name.as_str(), m.depends.len()), ("my_mod", 0));
        // Not a module: the error names the file.
        std::fs::write(d.path().join("x.ko"), b"junk").unwrap();
        let e = format!(
            "{:#}",
            read_module(d.path(), Path::new("x.ko")).unwrap_err()
        );
        assert!(e.contains("x.ko") && e.contains("not an ELF"), "{e}");
    }
}
