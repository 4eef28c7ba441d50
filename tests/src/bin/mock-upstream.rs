//! The mock OpenAI-compatible upstream (see `palisade_tests::mock` and
//! `docs/mock-upstream.md`): `mock-upstream --listen ADDR --name NAME --dialect D`.

// The stdout lines are the port handshake the test harness reads.
#![allow(clippy::print_stdout)]

use clap::Parser;
use palisade_tests::mock::{Dialect, Options, serve};

#[derive(Parser, Debug)]
#[command(
    name = "mock-upstream",
    about = "Mock OpenAI-compatible upstream for tests"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    #[arg(long, default_value = "mock")]
    name: String,
    #[arg(
        long,
        default_value = "gpt-4o-mini,gpt-4o,text-embedding-3-small",
        value_delimiter = ','
    )]
    models: Vec<String>,
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// What a request without `x-mock-dialect` gets: openai, litellm, starlette,
    /// llamacpp, lastchunk.
    #[arg(long, default_value = "openai")]
    dialect: Dialect,
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let opts = Options {
        listen: args.listen,
        name: args.name,
        models: args.models,
        workers: args.workers,
        dialect: args.dialect,
    };
    serve(opts, |addrs| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for addr in addrs {
            writeln!(out, "mock-upstream listening on {addr}")?;
        }
        out.flush()
    })
    .await
}
