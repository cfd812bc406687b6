//! A deterministic generator of large kbuild-like trees under `gen/`: a few
//! "core" objects whose small functions are called (and so imported by
//! ThinLTO) from many leaves, with a skewed fan-in like a kernel's core
//! helpers, plus per-object flags, non-LTO objects and exports.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use thinlto_index::fsutil::write_atomic;

/// Leaves per directory, like a mid-sized kernel directory.
const PER_DIR: usize = 100;

/// splitmix64: a fixed, tiny pseudo-random sequence, so the same N gives
/// the same tree on every machine.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// The shape of a generated tree with `objects` objects in all.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub cores: usize,
    pub leaves: usize,
}

impl Shape {
    pub fn new(objects: usize) -> Shape {
        let objects = objects.max(3);
        let cores = (objects / 50).max(2);
        Shape {
            cores,
            leaves: objects - cores - 1,
        }
    }

    /// The core function leaf `i`'s `k`-th call goes to: skewed so that
    /// core 0 is called from about a third of the leaves.
    pub fn callee(&self, i: usize, k: usize) -> usize {
        let u = (mix((i as u64) << 8 | k as u64) >> 11) as f64 / (1u64 << 53) as f64;
        ((u * u * u) * self.cores as f64) as usize % self.cores
    }
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        write_atomic(path, text.as_bytes())?;
    }
    Ok(())
}

/// Writes a source file only when it does not exist yet, so that an edit
/// made in the tree (an incremental benchmark) survives the next `fe`.
fn write_if_missing(path: &Path, text: &str) -> Result<()> {
    if !path.exists() {
        write_if_changed(path, text)?;
    }
    Ok(())
}

pub fn generate(tree: &Path, objects: usize) -> Result<()> {
    let shape = Shape::new(objects);
    let gen = tree.join("gen");

    let mut header = String::from("#ifndef GEN_CORE_H\n#define GEN_CORE_H\n");
    for c in 0..shape.cores {
        writeln!(
            header,
            "int gcore_{c}_step(int x);\nint gcore_{c}_fold(int a, int b);"
        )?;
    }
    header.push_str("#endif\n");
    write_if_changed(&tree.join("include/gen/core.h"), &header)?;

    let mut core_kbuild = String::new();
    for c in 0..shape.cores {
        writeln!(core_kbuild, "obj-y += core_{c}.o")?;
        write_if_missing(&gen.join(format!("core/core_{c}.c")), &core_source(c))?;
    }
    write_if_changed(&gen.join("core/Kbuild"), &core_kbuild)?;

    let dirs = shape.leaves.div_ceil(PER_DIR);
    let mut top = String::from("obj-y += core/\n");
    let mut all = String::from("#include <linux/export.h>\n\n");
    for d in 0..dirs {
        writeln!(top, "obj-y += d{d:02}/")?;
        let mut kbuild = String::new();
        for i in d * PER_DIR..((d + 1) * PER_DIR).min(shape.leaves) {
            writeln!(kbuild, "obj-y += leaf_{i:04}.o")?;
            // Per-object flags on some leaves, as kbuild Makefiles have.
            match i % 97 {
                13 => writeln!(kbuild, "CFLAGS_leaf_{i:04}.o += -fno-omit-frame-pointer")?,
                29 => writeln!(kbuild, "CFLAGS_leaf_{i:04}.o += -DLEAF_TAG='\"leaf {i}\"'")?,
                61 => writeln!(kbuild, "CFLAGS_REMOVE_leaf_{i:04}.o += $(CC_FLAGS_LTO)")?,
                _ => {}
            }
            write_if_missing(
                &gen.join(format!("d{d:02}/leaf_{i:04}.c")),
                &leaf_source(&shape, i),
            )?;
            writeln!(all, "int gen_leaf_{i:04}(int x);")?;
        }
        write_if_changed(&gen.join(format!("d{d:02}/Kbuild")), &kbuild)?;
    }
    top.push_str("obj-y += all.o\n");
    write_if_changed(&gen.join("Kbuild"), &top)?;

    all.push_str("\nunsigned long gen_checksum(void)\n{\n\tunsigned long sum = 0;\n\n");
    for i in 0..shape.leaves {
        writeln!(
            all,
            "\tsum = sum * 31 + (unsigned int)gen_leaf_{i:04}({i});"
        )?;
    }
    all.push_str("\treturn sum;\n}\nEXPORT_SYMBOL(gen_checksum);\n");
    write_if_changed(&gen.join("all.c"), &all)?;
    Ok(())
}

fn core_source(c: usize) -> String {
    format!(
        "#include <linux/export.h>\n#include <gen/core.h>\n\n\
         /* Small: ThinLTO imports and inlines it into the leaves. */\n\
         int gcore_{c}_step(int x)\n{{\n\treturn (x * {m}) ^ (x >> {s});\n}}\n\n\
         int gcore_{c}_fold(int a, int b)\n{{\n\tint i, r = a;\n\n\
         \tfor (i = 0; i < (b & 7) + 1; i++)\n\t\tr = gcore_{c}_step(r + i) - b;\n\treturn r;\n}}\n\
         EXPORT_SYMBOL_GPL(gcore_{c}_fold);\n",
        m = 2 * c + 3,
        s = c % 5 + 1
    )
}

fn leaf_source(shape: &Shape, i: usize) -> String {
    let (a, b, c) = (shape.callee(i, 0), shape.callee(i, 1), shape.callee(i, 2));
    let export = match i % 7 {
        0 => format!("EXPORT_SYMBOL(gen_leaf_{i:04});\n"),
        3 => format!("EXPORT_SYMBOL_GPL(gen_leaf_{i:04});\n"),
        5 if i.is_multiple_of(3) => {
            format!("EXPORT_SYMBOL_NS_GPL(gen_leaf_{i:04}, GEN_NS_{});\n", i % 4)
        }
        _ => String::new(),
    };
    format!(
        "#include <linux/export.h>\n#include <gen/core.h>\n\n\
         #ifndef LEAF_TAG\n#define LEAF_TAG \"leaf\"\n#endif\n\n\
         static int table_{i}[16] = {{ {table} }};\n\n\
         static int leaf_scan(int x)\n{{\n\tint i, s = 0;\n\n\
         \tfor (i = 0; i < 16; i++)\n\t\ts += table_{i}[(i + x) & 15] * gcore_{a}_step(s ^ i);\n\treturn s;\n}}\n\n\
         static int leaf_pick(int x)\n{{\n\tswitch (x & 7) {{\n\
         \tcase 0: return gcore_{b}_step(x) + {i};\n\
         \tcase 1: return gcore_{c}_fold(x, {i});\n\
         \tcase 2: return x * {k};\n\
         \tcase 3: return (int)sizeof(LEAF_TAG) + x;\n\
         \tdefault: return gcore_{a}_fold(x ^ {k}, x);\n\t}}\n}}\n\n\
         int gen_leaf_{i:04}(int x)\n{{\n\treturn leaf_scan(x) + leaf_pick(x) - gcore_{c}_step(x);\n}}\n{export}",
        table = (0..16)
            .map(|j| ((mix((i * 16 + j) as u64) % 97) as i64 - 48).to_string())
            .collect::<Vec<_>>()
            .join(", "),
        k = i % 13 + 2,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_fan_in_are_skewed_and_stable() {
        let s = Shape::new(2000);
        assert_eq!(s.cores + s.leaves + 1, 2000);
        let mut counts = vec![0usize; s.cores];
        for i in 0..s.leaves {
            for k in 0..3 {
                counts[s.callee(i, k)] += 1;
            }
        }
        // The most-called core serves far more leaves than the median one.
        let mut sorted = counts.clone();
        sorted.sort();
        assert!(counts[0] > 5 * sorted[s.cores / 2].max(1), "{counts:?}");
        assert_eq!(s.callee(123, 1), Shape::new(2000).callee(123, 1));
    }
}
