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
    if env::var_os("CXXFLAGS").is_none() {
        env::set_var("CXXFLAGS", "-w");
    }
    if env::var_os("CFLAGS").is_none() {
        env::set_var("CFLAGS", "-w");
    }
    zeromq_src::Build::new().enable_draft(true).with_libsodium(sodium).build();
    // Build metadata for dependents (DEP_ZMQ_DRAFT / DEP_ZMQ_CURVE).
    println!("cargo:draft=1");
    println!("cargo:curve={}", if curve { 1 } else { 0 });
}
