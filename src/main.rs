//! The `mdsub` command line: parses arguments and calls the library.

use anyhow::Context;
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
    /// Last Value Cache proxy: XSUB (publishers) ⇄ XPUB (subscribers), answering
    /// each new subscription with the cached last value of every matching topic.
    Lvc(mdsub::lvc::LvcArgs),
    /// Throughput through the LVC vs direct PUB→SUB in the same run (lossless), as a ratio.
    LvcBench(mdsub::lvc::bench::LvcBenchArgs),
    /// Espresso tap: XSUB ⇄ XPUB proxy that prints, filters, counts or records what passes.
    Tap(mdsub::tap::TapArgs),
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
        Cmd::Lvc(args) => {
            mdsub::lvc::run(args).context("mdsub lvc")?;
        }
        Cmd::LvcBench(args) => {
            mdsub::lvc::bench::run(args).context("mdsub lvc-bench")?;
        }
        Cmd::Tap(args) => {
            mdsub::tap::run(args).context("mdsub tap")?;
        }
    }
    Ok(())
}
