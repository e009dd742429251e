//! The `portcullis` command line: the binary's edge over the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// jemalloc's thread caches make the small, short-lived allocations of a
/// proxied request (header values, channels, buffers) cheaper than glibc
/// malloc: about 2.5x fewer instructions spent allocating per request (see
/// docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}
