//! `nestbox`: the runc-compatible CLI. Thin: parse (after normalising go-runc's single-dash long
//! flags), set up logging, run one library call, turn errors into runc's log line + exit 1.

#[path = "../cli/mod.rs"]
mod cli;

use std::sync::Arc;

use clap::Parser;
use nestbox_runtime::logging::{self, Format, LogSink};

fn main() {
    // Rust starts with SIGPIPE ignored, and an ignored signal survives execve: restore the
    // default so the container process (and our own output to a closed pipe) behave normally.
    // SAFETY: setting a signal disposition to SIG_DFL has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let args = cli::normalise_args(std::env::args_os());
    // Before anything else: a command that starts container processes re-execs from a
    // sealed view of the binary (returns here only once sealed, or on error).
    let sealed = match cli::starts_container(&args) {
        true => nestbox_runtime::memfd::ensure_sealed_exe().err(),
        false => None,
    };
    let cli = cli::Cli::parse_from(args);
    let format = match cli.log_format {
        cli::LogFormat::Json => Format::Json,
        cli::LogFormat::Text => Format::Text,
    };
    let sink = match LogSink::open(cli.log.as_deref(), format) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("nestbox: opening log file: {e}");
            std::process::exit(1);
        }
    };
    let debug = cli.debug || cli.log_level.as_deref() == Some("debug");
    logging::init(sink.clone(), debug);
    let result = match sealed {
        Some(e) => Err(anyhow::Error::from(e)),
        None => cli::dispatch(&cli),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            let msg = one_line(&e);
            sink.line("error", &msg);
            if sink.is_file {
                eprintln!("{msg}");
            }
            1
        }
    };
    std::process::exit(code);
}

/// The error and its causes on one line; a cause already spelled out by its parent's message
/// (as the library's errors do) is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg.replace('\n', " ")
}
