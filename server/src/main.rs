use std::process::ExitCode;

use clap::Parser;

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
