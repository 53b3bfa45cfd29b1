//! Builds libzmq from source with the draft API and CURVE (linked against the
//! libsodium that `libsodium-sys-stable` built), and tells `mdsub` (through
//! the `links = "zmq"` metadata and rustc cfgs) what the build has. On Linux
//! it adds what zeromq-src leaves out: the platform features libzmq's CMake
//! build detects (`LINUX_FEATURES`) and code generation as cheap per message
//! as Debian's libzmq or cheaper (`LINUX_CODEGEN`, and with gcc in optimised
//! builds, link-time optimisation across the whole library).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build/main.rs");
    println!("cargo:rerun-if-env-changed=PROFILE");

    let sodium_include = env::var_os("DEP_SODIUM_INCLUDE").map(PathBuf::from);
    let sodium_lib = env::var_os("DEP_SODIUM_LIB").map(PathBuf::from);
    let sodium = match (sodium_lib, sodium_include) {
        (Some(lib), Some(include)) => Some(zeromq_src::LibLocation::new(lib, include)),
        _ => {
            println!(
                "cargo:warning=libsodium-sys-stable gave no include/lib directories: building libzmq without CURVE"
            );
            None
        }
    };
    let curve = sodium.is_some();
    // libzmq's sources warn a lot under -Wextra; cargo shows a path
    // dependency's compiler warnings on every fresh build, so quiet them.
    // cc puts CXXFLAGS after its own flags, so what is set here wins; a
    // CXXFLAGS from the environment comes last and wins over ours (e.g.
    // `CXXFLAGS=-fno-omit-frame-pointer` for frame-pointer call graphs).
    let mut cxxflags = String::from("-w");
    // zeromq-src writes an empty platform.hpp and defines only a few
    // features itself; on Linux it leaves out what libzmq's own CMake build
    // detects there. Without them libzmq signals between its threads through
    // a Unix socket pair instead of an eventfd (a heavier wake-up on every
    // hand-over between an application thread and an I/O thread), silently
    // ignores ZMQ_TCP_KEEPALIVE*, ZMQ_PRIORITY and ZMQ_BUSY_POLL, fails
    // every socket given ZMQ_BINDTODEVICE (ENOTSUP), cannot bind to an
    // interface by name (`tcp://eth0:5555`: ENODEV), and reads its timers off
    // the wall clock (gettimeofday) instead of CLOCK_MONOTONIC. Thread naming
    // stays off on purpose: a libzmq I/O thread keeps the name of the mdsub
    // thread that made its context (`shard0-io`), which the per-thread CPU
    // accounting reads. See LINUX_FEATURES and LINUX_CODEGEN.
    let linux = env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    if linux {
        for flag in LINUX_CODEGEN {
            cxxflags.push(' ');
            cxxflags.push_str(flag);
        }
        for feature in LINUX_FEATURES {
            cxxflags.push_str(" -D");
            cxxflags.push_str(feature);
        }
    }
    let user = env::var("CXXFLAGS").ok();
    if env::var_os("CFLAGS").is_none() {
        env::set_var("CFLAGS", "-w");
    }
    let build = |flags: &str| {
        let mut all = format!("{cxxflags}{flags}");
        if let Some(user) = &user {
            all.push(' ');
            all.push_str(user);
        }
        env::set_var("CXXFLAGS", all);
        zeromq_src::Build::new().enable_draft(true).with_libsodium(sodium.clone()).build();
    };
    // Link-time optimisation inside libzmq, for optimised builds with gcc on
    // Linux: the sources are compiled to GCC's intermediate form, then one
    // relocatable link (`-r`) optimises them as a whole into a single plain
    // object, which becomes libzmq.a. libzmq's per-message path crosses its
    // files constantly (socket_base → xpub → dist → pipe → msg, encoder →
    // msg), and without this every msg_t::size(), data() or flags() is a
    // call; with it the anchors' C publisher and subscriber run ~200 fewer
    // instructions per message each (benches/README.md, "libzmq build").
    // Rust's own LTO cannot do this (it sees only LLVM code), and the final
    // link stays an ordinary one: the archive holds no GCC intermediate code.
    // ZMQ_SYS_NO_LTO (any value) turns it off; if compiling with -flto or
    // the whole-library link fails, the library is rebuilt without it (with
    // a warning), never left half-made. The cost: the one-partition link is
    // serial, ~25-45 s of one core on each fresh build of zmq-sys here.
    println!("cargo:rerun-if-env-changed=ZMQ_SYS_NO_LTO");
    let lto = linux
        && env::var("OPT_LEVEL").map_or(false, |level| level != "0")
        && env::var_os("ZMQ_SYS_NO_LTO").is_none()
        && cc::Build::new().cpp(true).get_compiler().is_like_gnu();
    if lto {
        // cc panics when a compile fails (a gcc without LTO support): catch
        // that, and build plain.
        let compiled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| build(" -flto")));
        let lib_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("lib");
        let whole = match compiled {
            Ok(()) => link_whole(&lib_dir),
            Err(_) => Err("compiling with -flto failed (see above)".to_string()),
        };
        if let Err(why) = whole {
            println!("cargo:warning=libzmq without link-time optimisation: {why}");
            build("");
        }
    } else {
        build("");
    }
    // Build metadata for dependents (DEP_ZMQ_DRAFT / DEP_ZMQ_CURVE).
    println!("cargo:draft=1");
    println!("cargo:curve={}", if curve { 1 } else { 0 });
}

/// Replaces `lib_dir/libzmq.a` (members compiled with `-flto`) by an archive
/// of one object: the members linked with `-r` and optimised as a whole.
fn link_whole(lib_dir: &Path) -> Result<(), String> {
    let archive = lib_dir.join("libzmq.a");
    let run = |mut cmd: Command| -> Result<Vec<u8>, String> {
        let out = cmd.output().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    };
    let archiver = || cc::Build::new().cpp(true).get_archiver();
    let mut list = archiver();
    list.arg("t").arg(&archive);
    let members = String::from_utf8(run(list)?).map_err(|e| format!("ar t: {e}"))?;
    let whole = lib_dir.join("libzmq-whole.o");
    let mut link = cc::Build::new().cpp(true).get_compiler().to_command();
    // One partition: gcc 12 stops with an internal error partitioning
    // libzmq for a relocatable link (lto-partition.cc:215); one partition
    // also gives the optimiser the whole library at once.
    link.args(["-r", "-nostdlib", "-flto", "-flto-partition=one", "-flinker-output=nolto-rel"])
        .arg("-o")
        .arg(&whole)
        .current_dir(lib_dir);
    link.args(members.lines().filter(|m| !m.is_empty()));
    run(link)?;
    fs::remove_file(&archive).map_err(|e| format!("remove {}: {e}", archive.display()))?;
    // Deterministic (zero dates and ids) where the archiver knows `D`, as cc's
    // own archives are; plain `crs` elsewhere.
    let mut pack = archiver();
    pack.arg("crsD").arg(&archive).arg(&whole);
    if run(pack).is_err() {
        let mut pack = archiver();
        pack.arg("crs").arg(&archive).arg(&whole);
        run(pack)?;
    }
    Ok(())
}

/// Code generation for libzmq's C++ on Linux (gcc or clang), on top of what
/// cc derives from the cargo profile (`-O3 -fPIC`, `-g` because the release
/// profile keeps line tables). Measured with the anchors' C `cpub` → `csub`
/// linked against each build (benches/README.md, "libzmq build"), user-space
/// instructions per message of each whole process (callgrind): publisher
/// ~1970 → ~1730, subscriber ~1365 → ~1160, now below the same programs on
/// Debian's shared libzmq5 4.3.4 (~1840 / ~1225).
const LINUX_CODEGEN: &[&str] = &[
    // -fPIC alone makes gcc treat every exported libzmq function as
    // replaceable at load time (ELF interposition), so it inlines none of
    // them into their callers in the same file: msg_t::size(), data(),
    // flags(), pipe_t::check_write() … stay calls on every message. A static
    // library linked into an executable cannot be interposed, so the
    // assumption buys nothing; this flag drops it (~110 instructions per
    // message on each side).
    "-fno-semantic-interposition",
    // cc adds -fno-omit-frame-pointer whenever the profile has debug info
    // (ours does, for profiling Rust); in libzmq's small hot functions the
    // frame set-up costs ~90-100 instructions per message on each side.
    // Debian and libzmq's CMake Release build omit it too; perf's DWARF
    // unwinding (`--call-graph dwarf`) still walks libzmq's frames.
    "-fomit-frame-pointer",
];

/// What libzmq's CMake build (4.3.5, this machine: `cmake -DENABLE_DRAFTS=ON
/// -DWITH_LIBSODIUM=ON`) writes into platform.hpp on Linux (glibc 2.9+,
/// kernel 2.6.37+) and zeromq-src does not define. Each `NAME` or
/// `NAME=VALUE`, passed as `-DNAME` (an empty #define is what CMake writes;
/// libzmq tests these with #ifdef).
const LINUX_FEATURES: &[&str] = &[
    // Inter-thread signalling through an eventfd (one syscall, no socket
    // buffers) instead of a Unix socket pair; created close-on-exec.
    "ZMQ_HAVE_EVENTFD",
    "ZMQ_HAVE_EVENTFD_CLOEXEC",
    // Sockets created with SOCK_CLOEXEC (no fd leaks into exec'd children).
    "ZMQ_HAVE_SOCK_CLOEXEC",
    // With SOCK_CLOEXEC: accept4(…, SOCK_CLOEXEC) instead of accept + fcntl.
    "HAVE_ACCEPT4",
    // The I/O thread's epoll made with epoll_create1(EPOLL_CLOEXEC).
    "ZMQ_IOTHREAD_POLLER_USE_EPOLL_CLOEXEC",
    // ZMQ_TCP_KEEPALIVE, _CNT, _IDLE, _INTVL take effect (ignored without).
    "ZMQ_HAVE_SO_KEEPALIVE",
    "ZMQ_HAVE_TCP_KEEPCNT",
    "ZMQ_HAVE_TCP_KEEPIDLE",
    "ZMQ_HAVE_TCP_KEEPINTVL",
    // IPC peers' credentials (ZMQ_IPC_FILTER_*) and ZMQ_PRIORITY.
    "ZMQ_HAVE_SO_PEERCRED",
    "ZMQ_HAVE_SO_PRIORITY",
    // ZMQ_BINDTODEVICE works instead of failing every socket with ENOTSUP.
    "ZMQ_HAVE_SO_BINDTODEVICE",
    // ZMQ_BUSY_POLL takes effect.
    "ZMQ_HAVE_BUSY_POLL",
    // ZMQ_THREAD_AFFINITY_CPU_ADD pins libzmq's I/O threads.
    "ZMQ_HAVE_PTHREAD_SET_AFFINITY",
    // Interface names in endpoints (`tcp://eth0:5555`) resolved through
    // getifaddrs; without it every such bind or connect fails with ENODEV.
    "ZMQ_HAVE_IFADDRS",
    // IPv6 zone ids given by interface name (`fe80::1%eth0`) and UDP
    // multicast interfaces resolved through if_nametoindex.
    "HAVE_IF_NAMETOINDEX",
    // libzmq's clock (timers, heartbeats, reconnect intervals, RCVTIMEO)
    // reads CLOCK_MONOTONIC; without it, gettimeofday, which jumps with the
    // wall clock.
    "HAVE_CLOCK_GETTIME",
    // Message queue chunks (yqueue_t) and commands allocated on their own
    // 64-byte cache lines (posix_memalign), so the writer's and the reader's
    // ends of a pipe do not share a line between the two threads.
    "HAVE_POSIX_MEMALIGN",
    // CMake measures the line size; 64 is right on x86-64 and most aarch64
    // (ppc64 and s390x have larger lines: still correct there, less apart).
    "ZMQ_CACHELINE_SIZE=64",
    // zmq_ppoll (draft API): poll with a signal mask.
    "ZMQ_HAVE_PPOLL",
    // Move constructors declared noexcept (C++11), as CMake's check finds.
    "ZMQ_HAVE_NOEXCEPT",
    // `ipc://*` binds in a fresh 0700 directory from mkdtemp rather than at
    // a name mkstemp reserved and then closed (which another user could
    // take in between).
    "HAVE_MKDTEMP",
    // Left out on purpose although CMake sets them: HAVE_FORK (a getpid()
    // system call on every signal between threads, to notice a fork; mdsub
    // never forks with a live context), ZMQ_HAVE_PTHREAD_SETNAME_* (see
    // above), ZMQ_USE_RADIX_TREE (CMake's draft-build choice of subscription
    // store; libzmq's default trie stays), ZMQ_HAVE_LIBBSD,
    // ZMQ_USE_GNUTLS/ZMQ_HAVE_WSS and ZMQ_HAVE_TIPC (libraries and sources
    // zeromq-src does not build).
];
