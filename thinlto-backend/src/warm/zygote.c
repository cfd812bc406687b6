/*
 * The warm compiler of `thinlto-backend --warm`: an LD_PRELOAD shim that
 * turns the compiler into a fork server (a "zygote").
 *
 * The compiler is started once with this shim preloaded. The shim hooks
 * __libc_start_main: the dynamic loader has then mapped and relocated
 * every library and run their static constructors, and the real
 * __libc_start_main runs the executable's own constructors before calling
 * what it takes for main -- our zygote_main. There, instead of compiling,
 * the process serves jobs: for each, it forks one child, which calls the
 * compiler's real main with the job's argv, environment, working directory
 * and standard streams, and exits with its return value. Each child thus
 * starts exactly where a fresh `clang ...` would enter main, minus the
 * start-up cost.
 *
 * Without THINLTO_ZYGOTE_FD in the environment the shim serves no jobs.
 *
 * The same shim traces, for the backend cache (src/cache/), the files a
 * compile reads: with THINLTO_TRACE=FILE (or THINLTO_TRACE_FD=N, a
 * descriptor a worker made, whose file has no path) in a compile's environment (a
 * plain spawn preloads the shim; a job of the zygote gets it in its job
 * environment, with LD_PRELOAD for the programs the job spawns), every
 * process of the compile appends to FILE, each line in one write:
 *   "thinlto-trace 2 PID"  first, when the process starts being traced;
 *   "r PATH"  a regular file it opened read-only;
 *   "w PATH"  a regular file it opened for writing (the reader tells the
 *             compile's own intermediates, such as the .s that `as`
 *             reads under -fno-integrated-as, from its inputs);
 *   "x PATH"  a program it execs (execve) or spawns (posix_spawn[p]);
 *   "s PID"   the process posix_spawn started (LLVM runs `as` so; the
 *             exec inside glibc is seen by no preload): its own header
 *             must follow, or that process was not traced;
 *   "! WHY"   a line could not be written whole (a path over PATH_MAX, a
 *             failed or short write): the trace is incomplete;
 *   "end PID" the process exits (exit, _exit) or execs having written
 *             every line (one that ends otherwise is not trusted).
 * PATH is as the process named it, made absolute against the working
 * directory or the directory descriptor, symlinks NOT resolved: the cache
 * digests the file later through the same links, so retargeting a link is
 * a change. That is how a file that inline asm `.incbin`s -- read by the
 * backend, though in no input list -- becomes part of the cache entry. A
 * trace without a header means the shim did not load (a static compiler),
 * and one whose headers and ends do not pair (a full disk) is
 * incomplete: the cache then does not store the result.
 *
 * Protocol (SOCK_SEQPACKET unix sockets, native byte order):
 *   zygote -> client on the control socket, once:
 *     'H' dev:u64 ino:u64 size:i64 mtime_s:i64 mtime_ns:i64 pid:i32   ready
 *     'R' text                                                        refused
 *   client -> zygote on the control socket, one message per job:
 *     'J' argc:u32 envc:u32 argv strings\0... env strings\0...
 *     with SCM_RIGHTS [connection, stdin, stdout, stderr, cwd] and, for a
 *     worker's job, a sixth: its trace, which the child puts at the number
 *     THINLTO_TRACE_FD in the job's environment names
 *   zygote -> client on that job's connection:
 *     'P' pid:i32 with SCM_RIGHTS [pidfd of the child]                forked
 *     'S' wait-status:i32                                             exited
 *     'E' text                                                        refused
 *   The client closes the connection once it has the status; only then
 *   does the zygote reap the child (until then the pid stays a zombie, so
 *   the client's kill-by-pid never hits a recycled pid). A connection
 *   closed before the child exits kills the child. EOF on the control
 *   socket (the client exited) kills every child and ends the zygote; so
 *   does the death of the client's thread that started it (PDEATHSIG), and
 *   the children die with the zygote (PDEATHSIG).
 *
 * The zygote is single-threaded and must stay so: fork() copies only the
 * calling thread, so a thread that held a lock (malloc's, LLVM's) at fork
 * time would leave the child deadlocked or inconsistent. Before each fork
 * it checks that /proc/self/task has exactly one entry and refuses the job
 * otherwise (the client then falls back to plain spawns).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

#define EXPORT __attribute__((visibility("default")))
#define MAX_JOBS 512
#define MAX_REQUEST (1 << 20)

typedef int (*main_fn)(int, char **, char **);
typedef int (*start_fn)(main_fn, int, char **, void (*)(void), void (*)(void),
                        void (*)(void), void *);

static main_fn real_main;

struct job {
    int conn;     /* the client's connection, -1 once closed */
    pid_t pid;
    int pidfd;    /* -1 once the exit is reported (or abandoned) */
    int exited;   /* the status went to the client */
};

static struct job jobs[MAX_JOBS];
static int njobs;
static int ctl = -1;
static char request[MAX_REQUEST];
/* Tracing (below): -2 not looked up yet in this process (or job), -1 off,
 * else the trace file's descriptor. */
static volatile int trace_fd = -2;
/* A trace line of this process could not be written whole. */
static volatile int trace_failed;

static void send_msg(int fd, const void *buf, size_t len, int pass_fd)
{
    struct iovec iov = {(void *)buf, len};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (pass_fd >= 0) {
        memset(&u, 0, sizeof u);
        msg.msg_control = u.buf;
        msg.msg_controllen = sizeof u.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
    }
    while (sendmsg(fd, &msg, MSG_NOSIGNAL) < 0 && errno == EINTR)
        ;
}

static void send_text(int fd, char tag, const char *text)
{
    char buf[512];
    buf[0] = tag;
    size_t n = strlen(text);
    if (n > sizeof buf - 1)
        n = sizeof buf - 1;
    memcpy(buf + 1, text, n);
    send_msg(fd, buf, n + 1, -1);
}

static int task_count(void)
{
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* The wait status (as waitpid encodes it) from waitid's siginfo. */
static int wait_status(const siginfo_t *si)
{
    switch (si->si_code) {
    case CLD_EXITED:
        return (si->si_status & 0xff) << 8;
    case CLD_DUMPED:
        return (si->si_status & 0x7f) | 0x80;
    default:
        return si->si_status & 0x7f;
    }
}

/* ---- a worker's job in its sandbox (worker/sandbox.rs says why) ----
 *
 * With THINLTO_SANDBOX_VIEW in the job's environment (a worker running as
 * root), the child enters, before the compiler's main, the view a plain
 * spawn gets from bwrap: new mount, ipc, uts, network and pid namespaces;
 * a tmpfs at VIEW becomes the root, holding read-only binds of the paths
 * of THINLTO_SANDBOX_RO (one a line; a symlink is recreated as one), the
 * input root THINLTO_SANDBOX_ROOT writable at its own path, /dev/null,
 * /dev/zero, /dev/urandom and a /tmp; then the rlimits of
 * THINLTO_SANDBOX_LIMITS (address space:file size:processes), no groups,
 * uid and gid of THINLTO_SANDBOX_ID (uid:gid; every capability dropped),
 * no new privileges, not dumpable; then a fork: the compile is the first
 * process of its pid namespace, and this process waits for it and ends
 * as it ended. Any failure ends the job (exit 127, said on stderr). */

static void sandbox_fail(const char *what)
{
    dprintf(2, "thinlto-backend zygote: cannot enter the sandbox: %s: %s\n", what,
            strerror(errno));
    _exit(127);
}

static void make_dirs(const char *path, int last)
{
    char p[PATH_MAX];
    if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p) {
        errno = ENAMETOOLONG;
        sandbox_fail(path);
    }
    for (char *s = p + 1; *s; s++) {
        if (*s == '/') {
            *s = 0;
            mkdir(p, 0755);
            *s = '/';
        }
    }
    if (last)
        mkdir(p, 0755);
}

static void view_path(char *dst, const char *view, const char *p)
{
    if (snprintf(dst, PATH_MAX, "%s%s", view, p) >= PATH_MAX) {
        errno = ENAMETOOLONG;
        sandbox_fail(p);
    }
}

static void bind_into(const char *view, const char *src, unsigned long flags)
{
    char dst[PATH_MAX];
    view_path(dst, view, src);
    struct stat st;
    if (lstat(src, &st) < 0) {
        if (!(flags & MS_RDONLY))
            sandbox_fail(src); /* the root, or a device: must be there */
        return; /* not on this host: nothing to show */
    }
    if (S_ISLNK(st.st_mode)) {
        char target[PATH_MAX];
        ssize_t k = readlink(src, target, sizeof target - 1);
        if (k < 0)
            sandbox_fail(src);
        target[k] = 0;
        make_dirs(dst, 0);
        if (symlink(target, dst) < 0 && errno != EEXIST)
            sandbox_fail(dst);
        return;
    }
    if (S_ISDIR(st.st_mode)) {
        make_dirs(dst, 1);
    } else {
        make_dirs(dst, 0);
        int fd = open(dst, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
        if (fd < 0)
            sandbox_fail(dst);
        close(fd);
    }
    if (mount(src, dst, NULL, MS_BIND | MS_REC, NULL) < 0)
        sandbox_fail(src);
    if (flags && mount(NULL, dst, NULL, MS_BIND | MS_REMOUNT | flags, NULL) < 0)
        sandbox_fail(dst);
}

static void enter_sandbox(pid_t zygote)
{
    const char *v = getenv("THINLTO_SANDBOX_VIEW");
    if (!v)
        return;
    const char *r = getenv("THINLTO_SANDBOX_ROOT"), *ro = getenv("THINLTO_SANDBOX_RO");
    const char *id = getenv("THINLTO_SANDBOX_ID"), *lim = getenv("THINLTO_SANDBOX_LIMITS");
    unsigned uid, gid;
    unsigned long long as, fsize, nproc;
    errno = EINVAL;
    if (!r || !ro || !id || !lim || sscanf(id, "%u:%u", &uid, &gid) != 2 ||
        sscanf(lim, "%llu:%llu:%llu", &as, &fsize, &nproc) != 3 || strlen(v) >= PATH_MAX ||
        strlen(r) >= PATH_MAX)
        sandbox_fail("an incomplete sandbox in the job's environment");
    char view[PATH_MAX], root[PATH_MAX];
    strcpy(view, v);
    strcpy(root, r);
    char *paths = strdup(ro);
    unsetenv("THINLTO_SANDBOX_VIEW");
    unsetenv("THINLTO_SANDBOX_ROOT");
    unsetenv("THINLTO_SANDBOX_RO");
    unsetenv("THINLTO_SANDBOX_ID");
    unsetenv("THINLTO_SANDBOX_LIMITS");
    if (unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWPID) < 0)
        sandbox_fail("unshare");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        sandbox_fail("mount --make-rprivate /");
    if (mount("tmpfs", view, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m") < 0)
        sandbox_fail(view);
    /* /tmp first: a bind below it (a root or a compiler there) must not
     * be covered by it. */
    char tmp[PATH_MAX];
    view_path(tmp, view, "/tmp");
    make_dirs(tmp, 1);
    if (mount("tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=256m") < 0)
        sandbox_fail(tmp);
    for (char *line = paths, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = 0;
        bind_into(view, line, MS_RDONLY | MS_NOSUID | MS_NODEV);
    }
    free(paths);
    bind_into(view, root, MS_NOSUID | MS_NODEV);
    static const char *const devs[] = {"/dev/null", "/dev/zero", "/dev/urandom"};
    for (size_t i = 0; i < sizeof devs / sizeof *devs; i++)
        bind_into(view, devs[i], MS_NOSUID | MS_NOEXEC);
    if (chdir(view) < 0)
        sandbox_fail(view);
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        sandbox_fail("pivot_root");
    if (umount2(".", MNT_DETACH) < 0)
        sandbox_fail("umount the old root");
    if (chdir(root) < 0)
        sandbox_fail("chdir into the root in its view");
    struct rlimit rl;
    const struct { int res; unsigned long long v; } lims[] = {
        {RLIMIT_AS, as}, {RLIMIT_FSIZE, fsize}, {RLIMIT_NPROC, nproc}, {RLIMIT_CORE, 0}};
    for (size_t i = 0; i < sizeof lims / sizeof *lims; i++) {
        rl.rlim_cur = rl.rlim_max = lims[i].v;
        if (setrlimit(lims[i].res, &rl) < 0)
            sandbox_fail("setrlimit");
    }
    if (setgroups(0, NULL) < 0 || setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0)
        sandbox_fail("switch to the sandbox uid");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        sandbox_fail("no_new_privs");
    /* A new uid clears the parent-death signal: again, and the race. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != zygote)
        _exit(127);
    prctl(PR_SET_DUMPABLE, 0);
    pid_t c = fork();
    if (c < 0)
        sandbox_fail("fork into the pid namespace");
    if (c > 0) {
        int st;
        while (waitpid(c, &st, 0) < 0)
            if (errno != EINTR)
                _exit(127);
        if (WIFEXITED(st))
            _exit(WEXITSTATUS(st));
        int sig = WTERMSIG(st);
        signal(sig, SIG_DFL);
        kill(getpid(), sig);
        _exit(128 + sig);
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
}

/* In the child: become the job, then run the compiler's main. */
static void child(int argc, char **argv, char **env, const int *fds, int nfds, pid_t zygote)
{
    /* Die with the zygote (and so with thinlto-backend). */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != zygote)
        _exit(127);
    /* As a fresh exec would have it: default dispositions, nothing blocked. */
    for (int s = 1; s < NSIG; s++)
        if (s != SIGKILL && s != SIGSTOP)
            signal(s, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (fchdir(fds[4]) < 0) {
        dprintf(fds[3], "thinlto-backend zygote: fchdir: %s\n", strerror(errno));
        _exit(127);
    }
    for (int i = 0; i < 3; i++)
        if (dup2(fds[1 + i], i) < 0)
            _exit(127);
    /* A worker's trace descriptor, at the number the job's environment
     * names (looked up in the job's environment, not the zygote's). */
    int trace_at = -1;
    if (nfds == 6) {
        for (char **e = env; *e; e++)
            if (strncmp(*e, "THINLTO_TRACE_FD=", 17) == 0)
                trace_at = atoi(*e + 17);
        if (trace_at <= 2 || dup2(fds[5], trace_at) < 0) {
            dprintf(2, "thinlto-backend zygote: a trace descriptor but no THINLTO_TRACE_FD\n");
            _exit(127);
        }
    }
    /* Nothing of the zygote's stays open: only what the compiler itself
     * opened before main (as in a fresh process) and the job's 0, 1, 2
     * (and its trace). */
    for (int i = 0; i < nfds; i++)
        if (fds[i] != trace_at)
            close(fds[i]);
    close(ctl);
    for (int i = 0; i < njobs; i++) {
        if (jobs[i].conn >= 0)
            close(jobs[i].conn);
        if (jobs[i].pidfd >= 0)
            close(jobs[i].pidfd);
    }
    environ = env;
    enter_sandbox(zygote);
    /* The job's THINLTO_TRACE, not the zygote's (looked up afresh). */
    trace_fd = -2;
    trace_failed = 0;
    program_invocation_name = argv[0];
    char *slash = strrchr(argv[0], '/');
    program_invocation_short_name = slash ? slash + 1 : argv[0];
    exit(real_main(argc, argv, environ));
}

static void close_fds(const int *fds, int n)
{
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

/* One request from the control socket; returns 0 on EOF. */
static int take_request(pid_t self)
{
    struct iovec iov = {request, sizeof request - 1};
    union {
        char buf[CMSG_SPACE(6 * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = u.buf;
    msg.msg_controllen = sizeof u.buf;
    ssize_t n = recvmsg(ctl, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0)
        return errno == EINTR || errno == EAGAIN ? 1 : 0;
    if (n == 0)
        return 0;
    int fds[6] = {-1, -1, -1, -1, -1, -1};
    int nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (int i = 0; i < k; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                if (nfds < 6)
                    fds[nfds++] = fd;
                else
                    close(fd);
            }
        }
    }
    if ((nfds != 5 && nfds != 6) || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || n < 9 ||
        request[0] != 'J') {
        if (fds[0] >= 0)
            send_text(fds[0], 'E', "malformed request");
        close_fds(fds, nfds);
        return 1;
    }
    request[n] = 0;
    uint32_t argc, envc;
    memcpy(&argc, request + 1, 4);
    memcpy(&envc, request + 5, 4);
    if (argc == 0 || argc > (uint32_t)n || envc > (uint32_t)n || njobs == MAX_JOBS) {
        send_text(fds[0], 'E', njobs == MAX_JOBS ? "too many jobs" : "malformed request");
        close_fds(fds, nfds);
        return 1;
    }
    char **argv = malloc((argc + 1) * sizeof *argv);
    char **env = malloc((envc + 1) * sizeof *env);
    char *p = request + 9, *end = request + n;
    uint32_t i;
    for (i = 0; i < argc + envc && p < end; i++) {
        if (i < argc)
            argv[i] = p;
        else
            env[i - argc] = p;
        p += strlen(p) + 1;
    }
    if (i != argc + envc) {
        send_text(fds[0], 'E', "malformed request");
        close_fds(fds, nfds);
        free(argv);
        free(env);
        return 1;
    }
    argv[argc] = NULL;
    env[envc] = NULL;
    /* fork() copies the calling thread only: with another thread running
     * (one that may hold a lock) the child could deadlock, so there must be
     * exactly one task here. Checked before every fork; refused otherwise,
     * and the client runs the job (and the rest) by plain spawns. */
    int tasks = task_count();
    if (tasks != 1) {
        char why[128];
        snprintf(why, sizeof why, "%d threads in the warm compiler (must be 1 to fork)", tasks);
        send_text(fds[0], 'E', why);
        close_fds(fds, nfds);
        free(argv);
        free(env);
        return 1;
    }
    pid_t pid = fork();
    if (pid == 0)
        child((int)argc, argv, env, fds, nfds, self);
    free(argv);
    free(env);
    if (pid < 0) {
        char why[128];
        snprintf(why, sizeof why, "fork: %s", strerror(errno));
        send_text(fds[0], 'E', why);
        close_fds(fds, nfds);
        return 1;
    }
    close_fds(fds + 1, nfds - 1);
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    char msgbuf[5];
    msgbuf[0] = 'P';
    memcpy(msgbuf + 1, &pid, 4);
    send_msg(fds[0], msgbuf, sizeof msgbuf, pidfd);
    if (pidfd < 0) {
        /* Too old a kernel: not expected (pidfd_open is Linux 5.3); the
         * job still completes, reaped in the loop below by waitpid. */
    }
    jobs[njobs].conn = fds[0];
    jobs[njobs].pid = pid;
    jobs[njobs].pidfd = pidfd;
    jobs[njobs].exited = 0;
    njobs++;
    return 1;
}

static void drop_job(int i)
{
    if (jobs[i].conn >= 0)
        close(jobs[i].conn);
    if (jobs[i].pidfd >= 0)
        close(jobs[i].pidfd);
    jobs[i] = jobs[--njobs];
}

static void serve(pid_t self)
{
    static struct pollfd pfd[1 + 2 * MAX_JOBS];
    static int who[1 + 2 * MAX_JOBS]; /* job index * 2 (+1 for the pidfd) */
    for (;;) {
        int n = 0;
        pfd[n].fd = ctl;
        pfd[n].events = POLLIN;
        who[n++] = -1;
        for (int i = 0; i < njobs; i++) {
            if (jobs[i].conn >= 0) {
                pfd[n].fd = jobs[i].conn;
                pfd[n].events = POLLIN;
                who[n++] = 2 * i;
            }
            if (jobs[i].pidfd >= 0) {
                pfd[n].fd = jobs[i].pidfd;
                pfd[n].events = POLLIN;
                who[n++] = 2 * i + 1;
            }
        }
        /* Without pidfds (old kernels), poll the children every 10 ms. */
        int no_pidfd = 0;
        for (int i = 0; i < njobs; i++)
            if (jobs[i].pidfd < 0 && !jobs[i].exited)
                no_pidfd = 1;
        int r = poll(pfd, n, no_pidfd ? 10 : -1);
        if (r < 0 && errno != EINTR)
            break;
        int eof = 0;
        /* Children first (indexes stay valid: jobs are dropped after). */
        for (int i = 0; i < njobs; i++) {
            if (jobs[i].exited)
                continue;
            siginfo_t si;
            si.si_pid = 0;
            if (waitid(P_PID, jobs[i].pid, &si, WEXITED | WNOWAIT | WNOHANG) == 0 && si.si_pid) {
                int st = wait_status(&si);
                char msg[5];
                msg[0] = 'S';
                memcpy(msg + 1, &st, 4);
                if (jobs[i].conn >= 0)
                    send_msg(jobs[i].conn, msg, sizeof msg, -1);
                jobs[i].exited = 1;
                if (jobs[i].pidfd >= 0) {
                    close(jobs[i].pidfd);
                    jobs[i].pidfd = -1;
                }
            }
        }
        for (int k = 1; k < n && r > 0; k++) {
            if (!pfd[k].revents || who[k] % 2)
                continue;
            struct job *j = &jobs[who[k] / 2];
            char c;
            ssize_t got = recv(j->conn, &c, 1, MSG_DONTWAIT);
            if (got > 0 || (got < 0 && (errno == EAGAIN || errno == EINTR)))
                continue;
            /* The client closed its connection. */
            close(j->conn);
            j->conn = -1;
            if (!j->exited)
                kill(j->pid, SIGKILL); /* abandoned: reaped when it exits */
        }
        /* Reap and forget the jobs that are over on both sides. */
        for (int i = njobs - 1; i >= 0; i--) {
            if (jobs[i].exited && jobs[i].conn < 0) {
                waitpid(jobs[i].pid, NULL, 0);
                drop_job(i);
            }
        }
        if (pfd[0].revents) {
            if (!take_request(self))
                eof = 1;
        }
        if (eof)
            break;
    }
    /* The client is gone: so are its jobs. */
    for (int i = 0; i < njobs; i++)
        kill(jobs[i].pid, SIGKILL);
    while (njobs > 0) {
        waitpid(jobs[njobs - 1].pid, NULL, 0);
        drop_job(njobs - 1);
    }
}

static int zygote_main(int argc, char **argv, char **envp)
{
    const char *fd_s = getenv("THINLTO_ZYGOTE_FD");
    if (!fd_s)
        return real_main(argc, argv, envp);
    ctl = atoi(fd_s);
    const char *want = getenv("THINLTO_ZYGOTE_EXE");
    const char *parent = getenv("THINLTO_ZYGOTE_PARENT");
    pid_t self = getpid();
    struct stat st;
    char have[160];
    if (stat("/proc/self/exe", &st) < 0) {
        send_text(ctl, 'R', "cannot stat /proc/self/exe");
        _exit(0);
    }
    snprintf(have, sizeof have, "%llu:%llu:%lld:%lld:%ld", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino, (long long)st.st_size,
             (long long)st.st_mtim.tv_sec, (long)st.st_mtim.tv_nsec);
    if (!want || strcmp(want, have) != 0) {
        /* Another program loaded the shim: a wrapper (a shell script,
         * ccache ...) in front of the compiler. It must not serve jobs. */
        char exe[PATH_MAX];
        ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
        exe[k > 0 ? k : 0] = 0;
        char text[PATH_MAX + 64];
        snprintf(text, sizeof text, "the compiler is a wrapper (%s runs first)", exe);
        send_text(ctl, 'R', text);
        _exit(0);
    }
    /* Gone with the thread that started it (and it checks the race). */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (parent && getppid() != (pid_t)atoi(parent))
        _exit(0);
    /* Ctrl-C (or a kill of the process group) reaches the jobs, which die
     * of it as plain compiles would; the zygote stays to report them and
     * ends with its control socket (or SIGKILL). */
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    /* Children stay zombies until reaped (never auto-reaped), whatever
     * the compiler's constructors did: their status is read by waitid. */
    signal(SIGCHLD, SIG_DFL);
    unsetenv("THINLTO_ZYGOTE_FD");
    unsetenv("THINLTO_ZYGOTE_EXE");
    unsetenv("THINLTO_ZYGOTE_PARENT");
    unsetenv("LD_PRELOAD");
    {
        char hello[1 + 8 * 5 + 4];
        uint64_t v[5] = {(uint64_t)st.st_dev, (uint64_t)st.st_ino, (uint64_t)st.st_size,
                         (uint64_t)st.st_mtim.tv_sec, (uint64_t)st.st_mtim.tv_nsec};
        hello[0] = 'H';
        memcpy(hello + 1, v, sizeof v);
        memcpy(hello + 1 + sizeof v, &self, 4);
        send_msg(ctl, hello, sizeof hello, -1);
    }
    serve(self);
    _exit(0);
}


/* ---- tracing: the files a compile reads (THINLTO_TRACE) ---- */


/* Writes one whole line; on failure the trace is marked incomplete: a
 * "!" line if it can still be written, and no "end" line in any case. */
static void trace_write(int fd, const char *line, size_t n)
{
    ssize_t k = write(fd, line, n); /* one write: lines of concurrent writers do not mix */
    if (k != (ssize_t)n) {
        trace_failed = 1;
        static const char why[] = "! a trace line could not be written\n";
        (void)!write(fd, why, sizeof why - 1);
    }
}

static int trace_init(void);

/* Marks the trace incomplete (see trace_write). */
static void trace_fail(const char *why)
{
    int fd = trace_init();
    if (fd < 0)
        return;
    trace_failed = 1;
    char line[128];
    int n = snprintf(line, sizeof line, "! %s\n", why);
    (void)!write(fd, line, n);
}

static int trace_init(void)
{
    int fd = trace_fd;
    if (fd != -2)
        return fd;
    const char *path = getenv("THINLTO_TRACE");
    const char *at = getenv("THINLTO_TRACE_FD");
    fd = -1;
    if (at && *at) {
        /* A worker's trace: a descriptor it made, with no path anywhere. */
        int n = atoi(at);
        if (n > 2 && fcntl(n, F_GETFD) >= 0) {
            char header[64];
            int k = snprintf(header, sizeof header, "thinlto-trace 2 %d\n", (int)getpid());
            if (write(n, header, k) == k)
                fd = n;
        }
    } else if (path && *path) {
        fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC,
                          0600);
        if (fd >= 0) {
            char header[64];
            int n = snprintf(header, sizeof header, "thinlto-trace 2 %d\n", (int)getpid());
            if (write(fd, header, n) != n) {
                close(fd);
                fd = -1;
            }
        }
    }
    /* Two threads may race here: the loser's descriptor is closed. */
    if (!__sync_bool_compare_and_swap(&trace_fd, -2, fd) && fd >= 0)
        close(fd);
    return trace_fd;
}

static void trace_line(char kind, const char *path)
{
    int fd = trace_init();
    if (fd < 0)
        return;
    char line[PATH_MAX + 4];
    int n = snprintf(line, sizeof line, "%c %s\n", kind, path);
    if (n > 0 && n < (int)sizeof line)
        trace_write(fd, line, n);
    else
        trace_fail("a path too long to trace");
}

/* The process ends (or execs) with every line written: says so. */
static void trace_end(void)
{
    int fd = trace_fd;
    if (fd < 0 || trace_failed)
        return;
    char line[64];
    int n = snprintf(line, sizeof line, "end %d\n", (int)getpid());
    trace_write(fd, line, n);
}

/* A forked child (a shell's subshell) is a process of its own: its
 * header, so that its "end" pairs (vfork children, which only exec, get
 * none: their exec's "end" then closes nothing, and the reader ignores
 * it). */
static void trace_forked(void)
{
    if (trace_fd < 0 || trace_failed)
        return;
    char header[64];
    int n = snprintf(header, sizeof header, "thinlto-trace 2 %d\n", (int)getpid());
    trace_write(trace_fd, header, n);
}

__attribute__((constructor)) static void trace_setup(void)
{
    pthread_atfork(NULL, NULL, trace_forked);
}

/* At exit (exit() or main's return; a zygote job exits so too). */
__attribute__((destructor)) static void trace_at_exit(void)
{
    trace_end();
}

/* `p` made absolute against `dir` (AT_FDCWD: the working directory),
 * symlinks left as they are; 0 on success, -1 if it does not fit. */
static int absolute(int dir, const char *p, char *out, size_t size)
{
    if (p[0] == '/') {
        if (strlen(p) >= size)
            return -1;
        strcpy(out, p);
        return 0;
    }
    char base[PATH_MAX];
    if (dir == AT_FDCWD) {
        if (!getcwd(base, sizeof base))
            return -1;
    } else {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", dir);
        ssize_t k = readlink(link, base, sizeof base - 1);
        if (k <= 0 || k >= (ssize_t)sizeof base - 1)
            return -1;
        base[k] = 0;
    }
    int n = snprintf(out, size, "%s%s%s", base, strcmp(base, "/") ? "/" : "", p);
    return n > 0 && (size_t)n < size ? 0 : -1;
}

static void trace_open(int dir, const char *p, int fd, int flags)
{
    if (fd < 0 || (flags & O_DIRECTORY) || trace_fd == -1)
        return;
    if (trace_init() < 0)
        return;
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
        return;
    char path[PATH_MAX];
    if (absolute(dir, p, path, sizeof path) < 0) {
        trace_fail("a path too long to trace");
        return;
    }
    trace_line((flags & O_ACCMODE) == O_RDONLY ? 'r' : 'w', path);
}

#define REAL(name, type) \
    static type real_##name; \
    if (!real_##name) \
        real_##name = (type)dlsym(RTLD_NEXT, #name)

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef int (*open2_fn)(const char *, int);
typedef int (*openat2_fn)(int, const char *, int);
typedef FILE *(*fopen_fn)(const char *, const char *);
typedef int (*execve_fn)(const char *, char *const[], char *const[]);
typedef int (*posix_spawn_fn)(pid_t *, const char *, const posix_spawn_file_actions_t *,
                              const posix_spawnattr_t *, char *const[], char *const[]);

static mode_t mode_arg(int flags, va_list ap)
{
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

#define OPEN_HOOK(name)                                   \
    EXPORT int name(const char *p, int flags, ...)        \
    {                                                     \
        va_list ap;                                       \
        va_start(ap, flags);                              \
        mode_t m = mode_arg(flags, ap);                   \
        va_end(ap);                                       \
        REAL(name, open_fn);                              \
        int fd = real_##name(p, flags, m);                \
        trace_open(AT_FDCWD, p, fd, flags);               \
        return fd;                                        \
    }
#define OPENAT_HOOK(name)                                         \
    EXPORT int name(int dir, const char *p, int flags, ...)       \
    {                                                             \
        va_list ap;                                               \
        va_start(ap, flags);                                      \
        mode_t m = mode_arg(flags, ap);                           \
        va_end(ap);                                               \
        REAL(name, openat_fn);                                    \
        int fd = real_##name(dir, p, flags, m);                   \
        trace_open(dir, p, fd, flags);                            \
        return fd;                                                \
    }
OPEN_HOOK(open)
OPEN_HOOK(open64)
OPENAT_HOOK(openat)
OPENAT_HOOK(openat64)

/* _FORTIFY_SOURCE's variants (no mode argument). */
EXPORT int __open_2(const char *p, int flags)
{
    REAL(__open_2, open2_fn);
    int fd = real___open_2(p, flags);
    trace_open(AT_FDCWD, p, fd, flags);
    return fd;
}
EXPORT int __open64_2(const char *p, int flags)
{
    REAL(__open64_2, open2_fn);
    int fd = real___open64_2(p, flags);
    trace_open(AT_FDCWD, p, fd, flags);
    return fd;
}
EXPORT int __openat_2(int dir, const char *p, int flags)
{
    REAL(__openat_2, openat2_fn);
    int fd = real___openat_2(dir, p, flags);
    trace_open(dir, p, fd, flags);
    return fd;
}

/* libc's own fopen opens through an internal call no preload sees. */
static FILE *traced_fopen(const char *p, FILE *f, const char *mode)
{
    if (f)
        trace_open(AT_FDCWD, p, fileno(f), mode[0] == 'r' && !strchr(mode, '+') ? O_RDONLY : O_WRONLY);
    return f;
}
EXPORT FILE *fopen(const char *p, const char *mode)
{
    REAL(fopen, fopen_fn);
    return traced_fopen(p, real_fopen(p, mode), mode);
}
EXPORT FILE *fopen64(const char *p, const char *mode)
{
    REAL(fopen64, fopen_fn);
    return traced_fopen(p, real_fopen64(p, mode), mode);
}

/* The program `p` names, absolute (searched on PATH when it has no
 * slash, as execvp and posix_spawnp do); 0 on success. */
static int program_path(const char *p, int search, char *out, size_t size)
{
    if (!search || strchr(p, '/'))
        return absolute(AT_FDCWD, p, out, size);
    const char *path = getenv("PATH");
    if (!path)
        path = "/bin:/usr/bin";
    while (*path) {
        const char *colon = strchrnul(path, ':');
        int n = snprintf(out, size, "%.*s/%s", (int)(colon - path), path, p);
        if (n > 0 && (size_t)n < size && access(out, X_OK) == 0)
            return absolute(AT_FDCWD, out, out, size) == 0 ? 0 : -1;
        path = *colon ? colon + 1 : colon;
    }
    return -1;
}

/* A wrapper script's compiler: the program it execs is an input too. The
 * process ends here as far as its trace goes; the new program (if it
 * loads the shim) starts its own, with the same pid. */
EXPORT int execve(const char *p, char *const argv[], char *const envp[])
{
    REAL(execve, execve_fn);
    int traced = trace_init() >= 0 && access(p, X_OK) == 0;
    if (traced) {
        char abs[PATH_MAX];
        if (absolute(AT_FDCWD, p, abs, sizeof abs) == 0)
            trace_line('x', abs);
        else
            trace_fail("a path too long to trace");
        trace_end();
    }
    int r = real_execve(p, argv, envp);
    if (traced) {
        /* Still this program: its trace goes on. */
        int e = errno;
        char header[64];
        int n = snprintf(header, sizeof header, "thinlto-trace 2 %d\n", (int)getpid());
        trace_write(trace_fd, header, n);
        errno = e;
    }
    return r;
}

/* A process that ends by _exit (a shell does) runs no destructor. */
typedef void (*exit_fn)(int);
EXPORT void _exit(int status)
{
    REAL(_exit, exit_fn);
    trace_end();
    real__exit(status);
    __builtin_unreachable();
}
EXPORT void _Exit(int status)
{
    REAL(_Exit, exit_fn);
    trace_end();
    real__Exit(status);
    __builtin_unreachable();
}

/* LLVM runs `as` (-fno-integrated-as) and the like by posix_spawn, whose
 * exec inside glibc no preload sees: the program is an input, and the
 * child must show up in the trace ("s PID"), or it was not traced. */
static int traced_spawn(posix_spawn_fn real, int search, pid_t *pid, const char *p,
                        const posix_spawn_file_actions_t *fa, const posix_spawnattr_t *attr,
                        char *const argv[], char *const envp[])
{
    pid_t child;
    int r = real(&child, p, fa, attr, argv, envp);
    if (pid)
        *pid = child;
    if (r == 0 && trace_init() >= 0) {
        char abs[PATH_MAX], line[32];
        if (program_path(p, search, abs, sizeof abs) == 0)
            trace_line('x', abs);
        else
            trace_fail("a spawned program's path could not be traced");
        snprintf(line, sizeof line, "%d", (int)child);
        trace_line('s', line);
    }
    return r;
}
EXPORT int posix_spawn(pid_t *pid, const char *p, const posix_spawn_file_actions_t *fa,
                       const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    REAL(posix_spawn, posix_spawn_fn);
    return traced_spawn(real_posix_spawn, 0, pid, p, fa, attr, argv, envp);
}
EXPORT int posix_spawnp(pid_t *pid, const char *p, const posix_spawn_file_actions_t *fa,
                        const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    REAL(posix_spawnp, posix_spawn_fn);
    return traced_spawn(real_posix_spawnp, 1, pid, p, fa, attr, argv, envp);
}

EXPORT int __libc_start_main(main_fn main, int argc, char **argv, void (*init)(void),
                             void (*fini)(void), void (*rtld_fini)(void), void *stack_end)
{
    start_fn real = (start_fn)dlsym(RTLD_NEXT, "__libc_start_main");
    real_main = main;
    /* A traced process says so at once (a spawned one must show up in
     * the trace even if it opens nothing). */
    trace_init();
    return real(zygote_main, argc, argv, init, fini, rtld_fini, stack_end);
}
