//! The `portcullis` command line: the binary's edge over the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// jemalloc's thread caches make the small, short-lived allocations of a
/// proxied request (header values, channels, buffers) cheaper than glibc
/// malloc: about 2.5x fewer instructions spent allocating per request (see
/// docs/benchmarks.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`. A background thread hands freed
/// pages back to the kernel about a second after they were freed (by
/// default only an allocation does, ten seconds later), so the memory of
/// connections that closed leaves the process even when nothing else
/// happens (docs/benchmarks.md, "Memory per connection").
#[cfg(feature = "jemalloc")]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: MallocConf =
    MallocConf(c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// A C string pointer jemalloc reads as `const char *malloc_conf`.
#[cfg(feature = "jemalloc")]
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: it points to a static string that is never written.
#[cfg(feature = "jemalloc")]
unsafe impl Sync for MallocConf {}

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // The public listener's requests run on per-core workers of their own
    // (`portcullis::worker`); this runtime has the rest: the admin
    // listener, the audit writer, health checks, reloads, the commands.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
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
