use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's allocator: a proxied request allocates and frees
/// many small buffers across threads (headers, bodies, futures), and glibc's
/// `malloc`/`free`/`malloc_consolidate` were the largest items in the gateway's
/// profile at saturation (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // One TLS stack, one crypto provider: install ring before anything uses rustls.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = palisade::cli::Cli::parse();
    let system = actix_rt::System::new();
    match system.block_on(palisade::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "palisade: {e}");
            ExitCode::from(e.code())
        }
    }
}
