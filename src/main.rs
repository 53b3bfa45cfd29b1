//! The `mdsub` command line: parses arguments and calls the library.

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mdsub: a high-throughput market-data subscriber engine on ZeroMQ.
#[derive(Parser)]
#[command(name = "mdsub", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print what this build and host are: mdsub and libzmq versions, cores.
    Info,
    /// Serve a clone (CHP) key-value store, alone or as half of a Binary Star pair.
    CloneServer(mdsub::clone::cli::ServerArgs),
    /// Set, get, delete, dump or watch keys in a clone store.
    CloneClient(mdsub::clone::cli::ClientArgs),
    /// Measure the clone stack: update throughput, snapshot time, failover time.
    CloneBench(mdsub::clone::bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Info => {
            let (maj, min, pat) = zmq::version();
            println!("mdsub {}", env!("CARGO_PKG_VERSION"));
            println!("libzmq {maj}.{min}.{pat}");
            println!("cores {}", core_affinity::get_core_ids().map(|c| c.len()).unwrap_or(0));
        }
        Cmd::CloneServer(args) => mdsub::clone::cli::run_server(&args)?,
        Cmd::CloneBench(args) => mdsub::clone::bench::run(&args)?,
        Cmd::CloneClient(args) => {
            let code = mdsub::clone::cli::run_client(&args)?;
            if code != 0 {
                std::process::exit(code);
            }
        }
    }
    Ok(())
}
