//! The `l4` command: l4lab's entry point for users.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// l4lab: a research framework for Llama 4 with hand-written CUDA kernels.
#[derive(Debug, Parser)]
#[command(name = "l4", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the devices found, NVRTC availability and the built-in presets.
    Info,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Info => {
            print!("{}", l4_experiments::info::report());
            ExitCode::SUCCESS
        }
    }
}
