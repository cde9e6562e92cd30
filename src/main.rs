//! The `statusd` binary: parse the command line and hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    statusd::cli::main(statusd::cli::Cli::parse())
}
