//! `cargo xtask kernel --boot`: boots a built tree's `bzImage` under
//! `qemu-system-x86_64` with an initramfs that loads every built module
//! and reports each on the serial console, one line each:
//!
//! ```text
//! thinlto-boot: init
//! thinlto-boot: load NAME ok
//! thinlto-boot: load NAME failed RC
//! thinlto-boot: done
//! ```
//!
//! The initramfs (newc cpio, uncompressed: a config need not have any
//! `RD_*` decompressor) holds a static busybox, `/init` (a script of it)
//! and the modules under `/lib/modules/`, loaded with `insmod` in
//! [`crate::kernel::modorder::load_order`]'s order.

pub mod cpio;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::boot::cpio::{Archive, Node};
use crate::kernel::modorder::{self, Module};

/// How long a boot may take before qemu is killed: generous for TCG on a
/// loaded machine (KVM boots in seconds).
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// How long qemu gets to exit after `thinlto-boot: done` (init reboots with
/// `-no-reboot`, so qemu exits on its own) before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(15);

/// How long a KVM guest may stay silent before we give up on KVM and boot
/// with TCG: a kernel under KVM prints its banner within a second, but
/// under some nested KVM (this project's CI host) the guest spins forever
/// without a line.
const KVM_SILENCE: Duration = Duration::from_secs(30);

/// The static busybox of Debian's busybox-static.
pub const BUSYBOX: &str = "/bin/busybox";

/// The busybox applets `/init` runs (`echo` is the shell's).
const APPLETS: &[&str] = &["sh", "mount", "insmod", "reboot", "cat", "dmesg"];

/// The prefix of every line `/init` writes for us to read.
const MARK: &str = "thinlto-boot: ";

#[derive(Debug, Clone)]
pub struct BootOptions {
    pub tree: PathBuf,
    /// Where the initramfs and the console log go.
    pub out: PathBuf,
    pub timeout: Duration,
    pub accel: AccelChoice,
}

/// The accelerator asked for (`--boot-accel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM or nothing: the boot fails, saying why, where KVM cannot run it.
    Kvm,
    /// TCG (emulated), even where KVM works.
    Tcg,
    /// KVM where it works, else TCG (also when a KVM guest fails to start
    /// or stays silent: nested KVM).
    #[default]
    Auto,
}

/// How qemu runs the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// TCG, and why not KVM.
    Tcg(String),
}

impl Accel {
    pub fn describe(&self) -> String {
        match self {
            Accel::Kvm => "KVM (/dev/kvm usable)".into(),
            Accel::Tcg(why) => format!("TCG, emulated ({why})"),
        }
    }
}

/// KVM when `/dev/kvm` opens read-write and a VM can be created in it
/// (the node can exist, even open, where the host cannot run a VM),
/// else TCG with the reason.
pub fn probe_kvm() -> Accel {
    use std::os::fd::AsRawFd;
    let kvm = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(f) => f,
        Err(e) => return Accel::Tcg(format!("/dev/kvm: {e}")),
    };
    // KVM_CREATE_VM = _IO(KVMIO 0xAE, 0x01), machine type 0.
    // SAFETY: an ioctl on a descriptor we own, with no pointer argument.
    let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), 0xAE01, 0) };
    if vm < 0 {
        return Accel::Tcg(format!(
            "/dev/kvm: KVM_CREATE_VM failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `vm` is the descriptor the ioctl just returned, ours to close.
    unsafe { libc::close(vm) };
    Accel::Kvm
}

/// What `/init` reported on the console.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConsoleReport {
    pub init_ran: bool,
    /// Each `load` line: the module and `None` (loaded) or `Some(rc)`.
    pub loads: Vec<(String, Option<i32>)>,
    pub done: bool,
    /// `thinlto-boot:` lines that are none of the above (e.g. a kernel
    /// message printed into the middle of one), for the error message.
    pub garbled: Vec<String>,
}

/// Reads `/init`'s lines out of a console log (kernel messages around
/// and before them; `\r\n` line ends; a line may carry a prefix the
/// console printed before it).
pub fn parse_console(log: &str) -> ConsoleReport {
    let mut r = ConsoleReport::default();
    for line in log.lines() {
        parse_line(&mut r, line);
    }
    r
}

fn parse_line(r: &mut ConsoleReport, line: &str) {
    let line = line.trim_end_matches('\r');
    let Some(at) = line.find(MARK) else { return };
    let rest = line[at + MARK.len()..].trim_end();
    let words: Vec<&str> = rest.split(' ').collect();
    match words[..] {
        ["init"] => r.init_ran = true,
        ["done"] => r.done = true,
        ["load", name, "ok"] => r.loads.push((name.to_string(), None)),
        ["load", name, "failed", rc] if rc.parse::<i32>().is_ok() => {
            r.loads.push((name.to_string(), Some(rc.parse().unwrap())))
        }
        _ => r.garbled.push(line.to_string()),
    }
}

/// The outcome for each expected module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub init_ran: bool,
    pub done: bool,
    pub loaded: Vec<String>,
    /// Module and why: `insmod exit status 1`, or no line for it.
    pub failed: Vec<(String, String)>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.init_ran && self.done && self.failed.is_empty()
    }
}

/// Checks the console's report against the modules `/init` was to load.
pub fn verdict(expected: &[Module], report: &ConsoleReport) -> Verdict {
    let mut v = Verdict {
        init_ran: report.init_ran,
        done: report.done,
        loaded: Vec::new(),
        failed: Vec::new(),
    };
    for m in expected {
        match report.loads.iter().find(|(n, _)| *n == m.name) {
            Some((_, None)) => v.loaded.push(m.name.clone()),
            Some((_, Some(rc))) => v
                .failed
                .push((m.name.clone(), format!("insmod exit status {rc}"))),
            None => v
                .failed
                .push((m.name.clone(), "no result line on the console".into())),
        }
    }
    v
}

/// `/init`: mounts what insmod and the kernel's messages need, loads the
/// modules in `order` and reports each, then reboots (qemu's `-no-reboot`
/// makes that an exit; `poweroff` would only halt a kernel without ACPI).
pub fn init_script(order: &[Module]) -> Result<String> {
    let mut s = String::from(
        "#!/bin/sh\n\
         # Written by cargo xtask kernel --boot: load every module, report each.\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         echo \"thinlto-boot: init\"\n\
         load() {\n\
         \tinsmod \"/lib/modules/$2\"\n\
         \trc=$?\n\
         \tcase $rc in\n\
         \t0) echo \"thinlto-boot: load $1 ok\" ;;\n\
         \t*) echo \"thinlto-boot: load $1 failed $rc\" ;;\n\
         \tesac\n\
         }\n",
    );
    // Names and paths go into the script unquoted-safe: kbuild's are
    // [A-Za-z0-9_-./]; anything else would need quoting we do not do.
    let safe = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-./+,".contains(c))
    };
    for m in order {
        let ko = m.ko.to_string_lossy();
        if !safe(&m.name) || !safe(&ko) {
            bail!(
                "module {:?} ({ko:?}): a name or path with characters other than letters, digits and _-./+,",
                m.name
            );
        }
        s.push_str(&format!("load {} {ko}\n", m.name));
    }
    s.push_str("echo \"thinlto-boot: done\"\nreboot -f\n");
    Ok(s)
}

/// The initramfs: busybox and its applet links, `/init`, `/dev/console`
/// (the kernel opens it for init before anything mounts devtmpfs), mount
/// points, and each module at `lib/modules/<path in the tree>`.
pub fn initramfs(tree: &Path, order: &[Module], busybox: &[u8]) -> Result<Vec<u8>> {
    let mut a = Archive::new();
    a.add(
        "bin/busybox",
        Node::File {
            data: busybox.to_vec(),
            executable: true,
        },
    );
    for applet in APPLETS {
        a.add(
            &format!("bin/{applet}"),
            Node::Symlink {
                target: "busybox".into(),
            },
        );
    }
    a.add(
        "init",
        Node::File {
            data: init_script(order)?.into_bytes(),
            executable: true,
        },
    );
    a.add("dev/console", Node::CharDev { major: 5, minor: 1 });
    for dir in ["proc", "sys"] {
        a.add(dir, Node::Dir);
    }
    for m in order {
        let path = tree.join(&m.ko);
        let data =
            std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        a.add(
            &format!("lib/modules/{}", m.ko.to_string_lossy()),
            Node::File {
                data,
                executable: false,
            },
        );
    }
    Ok(a.to_bytes())
}

/// Whether an ELF file is statically linked (no `PT_INTERP`): the
/// initramfs has no dynamic loader or libc.
pub fn is_static_elf(bytes: &[u8]) -> Result<bool> {
    use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
    let elf = ElfFile64::<object::Endianness>::parse(bytes).context("not a 64-bit ELF file")?;
    let endian = elf.endian();
    let headers = elf
        .elf_header()
        .program_headers(endian, bytes)
        .context("bad ELF program headers")?;
    Ok(!headers
        .iter()
        .any(|h| h.p_type(endian) == object::elf::PT_INTERP))
}

/// One run of qemu.
struct QemuRun {
    report: ConsoleReport,
    status: std::process::ExitStatus,
    stderr: String,
    timed_out: bool,
    /// Killed under KVM after [`KVM_SILENCE`] without a console line.
    silent: bool,
    seconds: f64,
}

impl QemuRun {
    /// qemu itself failed (a bad option, a VM it cannot create): no
    /// console output at all, and an error exit, not a kill of ours.
    fn failed_to_start(&self) -> bool {
        !self.report.init_ran && !self.timed_out && !self.status.success()
    }
}

/// Runs qemu on the kernel and initramfs, its serial console written to
/// `console_log` as it comes (a hung boot's log is the useful one) and
/// read for `/init`'s lines, until qemu exits, `timeout` passes (qemu is
/// killed) or [`EXIT_GRACE`] after `done`.
fn run_qemu(
    accel: &Accel,
    bzimage: &Path,
    cpio: &Path,
    console_log: &Path,
    timeout: Duration,
) -> Result<QemuRun> {
    let mut qemu = Command::new("qemu-system-x86_64");
    // qemu's default CPU model for both: `-cpu host` aborts under nested
    // KVM on some hosts (MSR 0x10a refused), and a generic x86_64 kernel
    // boots on the default model.
    match accel {
        Accel::Kvm => qemu.args(["-accel", "kvm"]),
        Accel::Tcg(_) => qemu.args(["-accel", "tcg"]),
    };
    qemu.args(["-m", "512M", "-smp", "1", "-nodefaults", "-no-reboot"])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(bzimage)
        .arg("-initrd")
        .arg(cpio)
        // panic=-1: a panic (init dying, say) reboots at once, so qemu exits.
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/init"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = qemu
        .spawn()
        .context("cannot run qemu-system-x86_64 (install it: cargo xtask setup --boot)")?;
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n').map_while(|l| l.ok()) {
            if tx
                .send(String::from_utf8_lossy(&line).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut log = thinlto_index::fsutil::AtomicFile::new(console_log)?;
    let write_line = |log: &mut thinlto_index::fsutil::AtomicFile, line: &str| {
        writeln!(log.file(), "{}", line.trim_end_matches('\r'))
            .with_context(|| format!("{}: write failed", console_log.display()))
    };
    let mut report = ConsoleReport::default();
    let deadline = started + timeout;
    let mut timed_out = false;
    let mut silent = false;
    let mut lines = 0usize;
    loop {
        let now = Instant::now();
        let wait_until = if report.done {
            deadline.min(now + EXIT_GRACE)
        } else if lines == 0 && *accel == Accel::Kvm {
            deadline.min(started + KVM_SILENCE)
        } else {
            deadline
        };
        match rx.recv_timeout(wait_until.saturating_duration_since(now)) {
            Ok(line) => {
                lines += 1;
                write_line(&mut log, &line)?;
                parse_line(&mut report, &line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout)
                if lines == 0 && *accel == Accel::Kvm && Instant::now() < deadline =>
            {
                silent = true;
                let _ = child.kill();
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Past the grace after `done` qemu is only stuck shutting
                // down: kill it, the boot has said all it will.
                timed_out = !report.done;
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait().context("waiting for qemu")?;
    let seconds = started.elapsed().as_secs_f64();
    let _ = reader.join();
    // What qemu wrote between the kill and its end.
    for line in rx.try_iter() {
        write_line(&mut log, &line)?;
        parse_line(&mut report, &line);
    }
    let stderr = stderr_reader.join().unwrap_or_default();
    if !stderr.trim().is_empty() {
        writeln!(log.file(), "--- qemu stderr ---\n{}", stderr.trim_end())?;
    }
    log.commit()?;
    Ok(QemuRun {
        report,
        status,
        stderr,
        timed_out,
        silent,
        seconds,
    })
}

/// The result of a boot.
#[derive(Debug)]
pub struct BootReport {
    pub accel: Accel,
    pub seconds: f64,
    pub order: Vec<Module>,
    /// Modules loaded later than modules.order lists them (after their
    /// dependencies).
    pub deferred: Vec<String>,
    pub verdict: Verdict,
    pub timed_out: bool,
    pub console_log: PathBuf,
    pub report: ConsoleReport,
    /// Console lines that name a failed module (its kernel messages).
    pub failure_lines: Vec<String>,
}

impl BootReport {
    pub fn ok(&self) -> bool {
        !self.timed_out && self.verdict.ok()
    }
}

/// The tree (canonical) and its kernel image, or what it lacks: asked
/// before anything is installed for the boot (qemu), so that a tree that
/// cannot boot is said at once.
pub fn bootable_tree(tree: &Path) -> Result<(PathBuf, PathBuf)> {
    let tree = tree
        .canonicalize()
        .with_context(|| format!("{}: no such tree", tree.display()))?;
    let bzimage = tree.join("arch/x86/boot/bzImage");
    if !bzimage.is_file() {
        bail!(
            "{}: no kernel image; build it first (make LLVM=-19 bzImage modules)",
            bzimage.display()
        );
    }
    Ok((tree, bzimage))
}

/// Builds the initramfs and boots the tree's bzImage.
pub fn run_boot(opts: &BootOptions) -> Result<BootReport> {
    let (tree, bzimage) = bootable_tree(&opts.tree)?;
    let kos = modorder::read_modules_order(&tree)?;
    let modules = kos
        .iter()
        .map(|ko| modorder::read_module(&tree, ko))
        .collect::<Result<Vec<_>>>()?;
    let order = modorder::load_order(&modules)?;
    // Modules loaded later than modules.order lists them, to follow their
    // dependencies (the stable order moves nothing else).
    let deferred = order
        .iter()
        .enumerate()
        .filter(|(i, o)| modules.iter().position(|m| m.name == o.name) < Some(*i))
        .map(|(_, o)| o.name.clone())
        .collect();
    let busybox = std::fs::read(BUSYBOX).with_context(|| {
        format!("{BUSYBOX}: cannot read (install busybox-static: cargo xtask setup --boot)")
    })?;
    if !is_static_elf(&busybox).with_context(|| BUSYBOX.to_string())? {
        bail!("{BUSYBOX} is dynamically linked: the initramfs needs busybox-static's (cargo xtask setup --boot)");
    }
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("{}: cannot create", opts.out.display()))?;
    let cpio = opts.out.join("initramfs.cpio");
    thinlto_index::fsutil::write_atomic(&cpio, &initramfs(&tree, &order, &busybox)?)?;
    let console_log = opts.out.join("console.log");
    let mut accel = match opts.accel {
        AccelChoice::Tcg => Accel::Tcg("--boot-accel tcg".into()),
        AccelChoice::Kvm | AccelChoice::Auto => probe_kvm(),
    };
    if let (AccelChoice::Kvm, Accel::Tcg(why)) = (opts.accel, &accel) {
        bail!("--boot-accel kvm: KVM cannot run the guest here ({why}); --boot-accel auto falls back to TCG");
    }
    let mut run = run_qemu(&accel, &bzimage, &cpio, &console_log, opts.timeout)?;
    if opts.accel == AccelChoice::Kvm && (run.failed_to_start() || run.silent) {
        bail!(
            "--boot-accel kvm: {}; --boot-accel auto falls back to TCG\nconsole log: {}",
            if run.silent {
                format!(
                    "under KVM the guest printed nothing in {} s",
                    KVM_SILENCE.as_secs()
                )
            } else {
                format!("qemu with KVM failed: {}", run.stderr.trim())
            },
            console_log.display()
        );
    }
    if accel == Accel::Kvm && (run.failed_to_start() || run.silent) {
        // /dev/kvm worked but qemu could not run a VM in it (nested KVM
        // refusing an MSR, or a guest that never prints): TCG still boots,
        // only slower.
        accel = Accel::Tcg(if run.silent {
            format!(
                "under KVM the guest printed nothing in {} s",
                KVM_SILENCE.as_secs()
            )
        } else {
            format!(
                "qemu with KVM failed: {}",
                run.stderr.lines().next().unwrap_or("?")
            )
        });
        run = run_qemu(&accel, &bzimage, &cpio, &console_log, opts.timeout)?;
    }
    if run.failed_to_start() {
        bail!(
            "qemu-system-x86_64 failed ({}): {}\nconsole log: {}",
            run.status,
            run.stderr.trim(),
            console_log.display()
        );
    }
    let QemuRun {
        report,
        timed_out,
        seconds,
        ..
    } = run;
    let verdict = verdict(&order, &report);
    let text = std::fs::read_to_string(&console_log).unwrap_or_default();
    let mut failure_lines: Vec<String> = text
        .lines()
        .filter(|l| !l.contains(MARK))
        .filter(|l| {
            verdict.failed.iter().any(|(name, _)| {
                l.contains(&format!("{name}:")) || l.contains(&format!(" {name} "))
            })
        })
        .map(str::to_string)
        .collect();
    // busybox's insmod tries finit_module, then init_module: the kernel
    // says why twice.
    failure_lines.dedup();
    Ok(BootReport {
        accel,
        seconds,
        order,
        deferred,
        verdict,
        timed_out,
        console_log,
        report,
        failure_lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str) -> Module {
        Module {
            name: name.into(),
            ko: PathBuf::from(format!("drivers/{name}.ko")),
            depends: Vec::new(),
            soft_pre: Vec::new(),
            soft_post: Vec::new(),
            aliases: Vec::new(),
        }
    }

    /// A console as the serial port gives it: kernel messages, `\r\n`,
    /// a timestamp before one of our lines.
    const LOG: &str = "[    0.000000] Linux version 6.12.0\r\n\
        [    0.912000] Run /init as init process\r\n\
        thinlto-boot: init\r\n\
        thinlto-boot: load crc32c_generic ok\r\n\
        [    1.010000] ext2: Unknown symbol foo (err -2)\r\n\
        thinlto-boot: load ext2 failed 1\r\n\
        [    1.020000] thinlto-boot: load dummy ok\r\n\
        thinlto-boot: load vir[    1.030000] virtio_net: hello\r\n\
        thinlto-boot: done\r\n\
        [    1.100000] reboot: Restarting system\r\n";

    #[test]
    fn console_parser_reads_init_loads_done_and_keeps_garbled_lines() {
        let r = parse_console(LOG);
        assert!(r.init_ran && r.done);
        assert_eq!(
            r.loads,
            [
                ("crc32c_generic".to_string(), None),
                ("ext2".to_string(), Some(1)),
                ("dummy".to_string(), None),
            ]
        );
        assert_eq!(
            r.garbled,
            ["thinlto-boot: load vir[    1.030000] virtio_net: hello"]
        );
        // A kernel that never ran init: nothing.
        let r = parse_console("[    0.5] Kernel panic - not syncing: VFS\r\n");
        assert_eq!(r, ConsoleReport::default());
    }

    #[test]
    fn verdict_fails_a_failed_or_silent_module_and_a_boot_without_init_or_done() {
        let expected = [m("crc32c_generic"), m("ext2"), m("dummy"), m("virtio_net")];
        let v = verdict(&expected, &parse_console(LOG));
        assert_eq!(v.loaded, ["crc32c_generic", "dummy"]);
        assert_eq!(
            v.failed,
            [
                ("ext2".to_string(), "insmod exit status 1".to_string()),
                (
                    "virtio_net".to_string(),
                    "no result line on the console".to_string()
                ),
            ]
        );
        assert!(!v.ok());
        let all_ok = "thinlto-boot: init\nthinlto-boot: load a ok\nthinlto-boot: done\n";
        assert!(verdict(&[m("a")], &parse_console(all_ok)).ok());
        // No `done` (init died after the loads), or no `init`: not a pass.
        assert!(!verdict(
            &[m("a")],
            &parse_console("thinlto-boot: init\nthinlto-boot: load a ok\n")
        )
        .ok());
        assert!(!verdict(&[], &parse_console("thinlto-boot: done\n")).ok());
    }

    #[test]
    fn init_script_loads_in_the_given_order_and_rejects_unsafe_names() {
        let s = init_script(&[m("b"), m("a")]).unwrap();
        let b = s.find("load b drivers/b.ko\n").unwrap();
        let a = s.find("load a drivers/a.ko\n").unwrap();
        let done = s.find("echo \"thinlto-boot: done\"").unwrap();
        assert!(s.starts_with("#!/bin/sh\n") && b < a && a < done, "{s}");
        let mut bad = m("x");
        bad.ko = PathBuf::from("drivers/x y.ko");
        assert!(init_script(&[bad]).is_err());
    }

    /// The script as written, run by the real /bin/sh with stand-ins for
    /// insmod (fails for `ext2`), mount and reboot: its lines parse.
    #[test]
    fn init_script_reports_what_the_parser_reads() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for (name, body) in [
            ("insmod", "case $1 in */ext2.ko) exit 3 ;; esac\nexit 0\n"),
            ("mount", "exit 0\n"),
            ("reboot", "exit 0\n"),
        ] {
            let p = bin.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let order = [m("dummy"), m("ext2")];
        let script = d.path().join("init");
        std::fs::write(&script, init_script(&order).unwrap()).unwrap();
        let out = Command::new("/bin/sh")
            .arg(&script)
            .env("PATH", &bin)
            .output()
            .unwrap();
        let v = verdict(
            &order,
            &parse_console(&String::from_utf8_lossy(&out.stdout)),
        );
        assert!(v.init_ran && v.done, "{v:?}");
        assert_eq!(v.loaded, ["dummy"]);
        assert_eq!(
            v.failed,
            [("ext2".to_string(), "insmod exit status 3".to_string())]
        );
    }

    #[test]
    fn a_tree_without_a_kernel_or_modules_is_named_with_what_it_lacks() {
        let d = tempfile::tempdir().unwrap();
        let opts = BootOptions {
            tree: d.path().to_path_buf(),
            out: d.path().join("out"),
            timeout: Duration::from_secs(1),
            accel: AccelChoice::Auto,
        };
        let e = format!("{:#}", run_boot(&opts).unwrap_err());
        assert!(
            e.contains("arch/x86/boot/bzImage") && e.contains("make"),
            "{e}"
        );
        let bz = d.path().join("arch/x86/boot/bzImage");
        std::fs::create_dir_all(bz.parent().unwrap()).unwrap();
        std::fs::write(&bz, b"").unwrap();
        let e = format!("{:#}", run_boot(&opts).unwrap_err());
        assert!(
            e.contains("modules.order") && e.contains("make modules"),
            "{e}"
        );
        std::fs::write(d.path().join("modules.order"), "fs/ext2/ext2.o\n").unwrap();
        let e = format!("{:#}", run_boot(&opts).unwrap_err());
        assert!(
            e.contains("fs/ext2/ext2.ko") && e.contains("cannot read"),
            "{e}"
        );
    }

    #[test]
    fn a_dynamic_executable_is_not_static() {
        // /bin/sh on any Debian is dynamically linked.
        let sh = std::fs::read(std::fs::canonicalize("/bin/sh").unwrap()).unwrap();
        assert!(!is_static_elf(&sh).unwrap());
        assert!(is_static_elf(b"not elf").is_err());
        // A static one, linked by the real clang and lld.
        let cc = thinlto_index::Toolchain::resolve_cc(&Default::default()).unwrap();
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("s.c"), "void _start(void) { for (;;) ; }\n").unwrap();
        let exe = d.path().join("s");
        let st = Command::new(&cc.argv[0])
            .args(&cc.argv[1..])
            .args(["-static", "-nostdlib", "-fuse-ld=lld", "-o"])
            .arg(&exe)
            .arg(d.path().join("s.c"))
            .status()
            .unwrap();
        assert!(st.success());
        assert!(is_static_elf(&std::fs::read(&exe).unwrap()).unwrap());
    }
}
