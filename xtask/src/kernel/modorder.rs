//! Which modules a built kernel tree has, and an order to load them in:
//! `modules.order`'s, except that a module comes after the modules its
//! `.modinfo` `depends=` names (modpost wrote them: the modules whose
//! exports it uses), because `insmod` does not resolve dependencies as
//! `modprobe` would; and after the modules its `softdep=` `pre:` names,
//! before those its `post:` names, as `modprobe` orders them (a name is a
//! module's name or one of its `alias=`es: `libcrc32c`'s `pre: crc32c` is
//! `crc32c_generic`). A soft dependency on a module that was not built as
//! one (built in, or not configured) is no error: `modprobe` skips it too;
//! nor is one that the hard dependencies contradict (`crypto_algapi` wants
//! `cryptomgr` first, which depends on it): it is dropped.

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
    /// Its `softdep=` `pre:` names: loaded first where they are modules.
    pub soft_pre: Vec<String>,
    /// Its `softdep=` `post:` names: loaded after it where they are modules.
    pub soft_post: Vec<String>,
    /// Its `alias=` strings (what a soft dependency may name).
    pub aliases: Vec<String>,
}

/// kbuild's module name of a string: `-` is `_`.
fn module_name(s: &str) -> String {
    s.replace('-', "_")
}

/// The `pre:` and `post:` names of `softdep=` values (`pre: a b post: c`).
fn softdeps<'a>(values: impl Iterator<Item = &'a str>) -> (Vec<String>, Vec<String>) {
    let (mut pre, mut post) = (Vec::new(), Vec::new());
    for v in values {
        let mut to_pre = None;
        for w in v.split_whitespace() {
            match w {
                "pre:" => to_pre = Some(true),
                "post:" => to_pre = Some(false),
                name => match to_pre {
                    Some(true) => pre.push(name.to_string()),
                    Some(false) => post.push(name.to_string()),
                    // A name before any `pre:`/`post:`: modprobe ignores it.
                    None => {}
                },
            }
        }
    }
    (pre, post)
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
    let values = |key: &str| {
        info.iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    let (soft_pre, soft_post) = softdeps(values("softdep").iter().map(String::as_str));
    Ok(Module {
        name,
        ko: ko.to_path_buf(),
        depends,
        soft_pre,
        soft_post,
        aliases: values("alias"),
    })
}

/// Whether module `a` must be loaded before `b` by the edges so far
/// (`after[i]`: the modules that come before `i`).
fn must_precede(after: &[Vec<usize>], a: usize, b: usize) -> bool {
    let mut seen = vec![false; after.len()];
    let mut stack = vec![b];
    while let Some(i) = stack.pop() {
        for &j in &after[i] {
            if j == a {
                return true;
            }
            if !seen[j] {
                seen[j] = true;
                stack.push(j);
            }
        }
    }
    false
}

/// The load order: modules in the given (modules.order) order, except
/// that each comes after the modules it depends on. Stable: of the
/// modules whose dependencies are loaded, the earliest in the given
/// order goes next. A dependency no module provides, or a cycle, is an
/// error naming the modules.
pub fn load_order(modules: &[Module]) -> Result<Vec<Module>> {
    for m in modules {
        for d in &m.depends {
            // modpost writes `depends=` from the object's file name, with
            // its `-`s (twofish-x86_64); `name=` has kbuild's `_`s.
            if !modules
                .iter()
                .any(|o| module_name(&o.name) == module_name(d))
            {
                bail!(
                    "{} ({}) depends on {d}, which is not among the built modules (modules.order)",
                    m.name,
                    m.ko.display()
                );
            }
        }
    }
    // after[i]: the modules that must be loaded before module i.
    let n = modules.len();
    let named = |name: &str| -> Vec<usize> {
        let name = module_name(name);
        (0..n)
            .filter(|&j| {
                module_name(&modules[j].name) == name
                    || modules[j].aliases.iter().any(|a| module_name(a) == name)
            })
            .collect()
    };
    let mut after: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, m) in modules.iter().enumerate() {
        for d in &m.depends {
            after[i].extend((0..n).filter(|&j| module_name(&modules[j].name) == module_name(d)));
        }
    }
    // Soft dependencies give way to hard ones, as modprobe's do: one that
    // would close a cycle is dropped (crypto_algapi's `softdep=pre:
    // cryptomgr`, while cryptomgr depends on crypto_algapi).
    let mut soft = |first: usize, then: usize| {
        if first != then && !must_precede(&after, then, first) {
            after[then].push(first);
        }
    };
    for (i, m) in modules.iter().enumerate() {
        for d in &m.soft_pre {
            for j in named(d) {
                soft(j, i);
            }
        }
        for d in &m.soft_post {
            for j in named(d) {
                soft(i, j);
            }
        }
    }
    let mut placed = vec![false; n];
    let mut order: Vec<Module> = Vec::with_capacity(n);
    while order.len() < n {
        let next = (0..n).find(|&i| !placed[i] && after[i].iter().all(|&j| placed[j]));
        match next {
            Some(i) => {
                placed[i] = true;
                order.push(modules[i].clone());
            }
            None => {
                let stuck: Vec<String> = (0..n)
                    .filter(|&i| !placed[i])
                    .map(|i| {
                        let m = &modules[i];
                        let mut s = format!("{} (depends={}", m.name, m.depends.join(","));
                        if !m.soft_pre.is_empty() || !m.soft_post.is_empty() {
                            s += &format!(
                                "; softdep pre: {} post: {}",
                                m.soft_pre.join(" "),
                                m.soft_post.join(" ")
                            );
                        }
                        s + ")"
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
            soft_pre: Vec::new(),
            soft_post: Vec::new(),
            aliases: Vec::new(),
        }
    }

    #[test]
    fn load_order_follows_softdeps_by_name_or_alias_and_skips_absent_ones() {
        let (pre, post) = softdeps(["pre: crc32c post: x-y", "pre: a b"].into_iter());
        assert_eq!(
            (pre, post),
            (
                vec!["crc32c".into(), "a".into(), "b".into()],
                vec!["x-y".into()]
            )
        );
        // libcrc32c (listed first) wants crc32c, an alias of
        // crc32c_generic; ext2 wants a module nobody built; post_me wants
        // to be loaded before "later-one" (kbuild's name: later_one).
        let mut lib = m("libcrc32c", &[]);
        lib.soft_pre = vec!["crc32c".into()];
        let mut gen = m("crc32c_generic", &[]);
        gen.aliases = vec!["crypto-crc32c".into(), "crc32c".into()];
        let mut ext2 = m("ext2", &[]);
        ext2.soft_pre = vec!["nosuch".into()];
        let mut post_me = m("post_me", &[]);
        post_me.soft_post = vec!["later-one".into()];
        let v = [m("later_one", &[]), lib, ext2, gen, post_me];
        assert_eq!(
            names(&load_order(&v).unwrap()),
            [
                "ext2",
                "crc32c_generic",
                "libcrc32c",
                "post_me",
                "later_one"
            ]
        );
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
        // modpost's depends= has the file name's dashes, name= kbuild's
        // underscores (twofish_x86_64_3way depends=twofish-x86_64,...).
        let dashed = [
            m("twofish_x86_64_3way", &["twofish-x86_64", "twofish_common"]),
            m("twofish_x86_64", &["twofish_common"]),
            m("twofish_common", &[]),
        ];
        assert_eq!(
            names(&load_order(&dashed).unwrap()),
            ["twofish_common", "twofish_x86_64", "twofish_x86_64_3way"]
        );
    }

    #[test]
    fn a_softdep_that_a_hard_dependency_contradicts_is_dropped() {
        let mut algapi = m("crypto_algapi", &[]);
        algapi.soft_pre = vec!["cryptomgr".into()];
        let mut hash = m("crypto_hash", &["crypto_algapi"]);
        // And one soft edge against another: the first one kept wins.
        hash.soft_post = vec!["md5".into()];
        let mut md5 = m("md5", &["crypto_hash"]);
        md5.soft_post = vec!["crypto_hash".into()];
        let v = [m("cryptomgr", &["crypto_algapi"]), algapi, md5, hash];
        assert_eq!(
            names(&load_order(&v).unwrap()),
            ["crypto_algapi", "cryptomgr", "crypto_hash", "md5"]
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
