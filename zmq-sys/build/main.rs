//! Builds libzmq from source with the draft API and CURVE (linked against the
//! libsodium that `libsodium-sys-stable` built), and tells `mdsub` (through
//! the `links = "zmq"` metadata and rustc cfgs) what the build has.

use std::env;
use std::path::PathBuf;

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
    let mut cxxflags = env::var("CXXFLAGS").unwrap_or_else(|_| "-w".into());
    // zeromq-src writes an empty platform.hpp and defines only a few
    // features itself; on Linux it leaves out what libzmq's own CMake build
    // detects there. Without them libzmq signals between its threads through
    // a Unix socket pair instead of an eventfd (a heavier wake-up on every
    // hand-over between an application thread and an I/O thread), silently
    // ignores ZMQ_TCP_KEEPALIVE*, ZMQ_PRIORITY and ZMQ_BUSY_POLL, and fails
    // every socket given ZMQ_BINDTODEVICE (ENOTSUP). Thread naming stays off on purpose: a
    // libzmq I/O thread keeps the name of the mdsub thread that made its
    // context (`shard0-io`), which the per-thread CPU accounting reads.
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        for feature in LINUX_FEATURES {
            cxxflags.push_str(" -D");
            cxxflags.push_str(feature);
            cxxflags.push_str("=1");
        }
    }
    env::set_var("CXXFLAGS", cxxflags);
    if env::var_os("CFLAGS").is_none() {
        env::set_var("CFLAGS", "-w");
    }
    zeromq_src::Build::new().enable_draft(true).with_libsodium(sodium).build();
    // Build metadata for dependents (DEP_ZMQ_DRAFT / DEP_ZMQ_CURVE).
    println!("cargo:draft=1");
    println!("cargo:curve={}", if curve { 1 } else { 0 });
}

/// What libzmq's CMake build defines on Linux (glibc 2.9+, kernel 2.6.37+)
/// and zeromq-src does not.
const LINUX_FEATURES: &[&str] = &[
    "ZMQ_HAVE_EVENTFD",
    "ZMQ_HAVE_EVENTFD_CLOEXEC",
    "ZMQ_HAVE_SOCK_CLOEXEC",
    "ZMQ_HAVE_SO_KEEPALIVE",
    "ZMQ_HAVE_TCP_KEEPCNT",
    "ZMQ_HAVE_TCP_KEEPIDLE",
    "ZMQ_HAVE_TCP_KEEPINTVL",
    "ZMQ_HAVE_SO_PEERCRED",
    "ZMQ_HAVE_SO_PRIORITY",
    "ZMQ_HAVE_SO_BINDTODEVICE",
    "ZMQ_HAVE_BUSY_POLL",
    "ZMQ_HAVE_PTHREAD_SET_AFFINITY",
];
