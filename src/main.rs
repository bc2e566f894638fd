//! The `cafe` command line.

// Output goes through `cafe_base::out!`/`outln!`: `print!` panics on a closed pipe.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cafe::cli::Cli::parse();
    cafe::runtime::logging::init(cli.log_format());
    match cafe::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            cafe_base::output::error_line(format_args!("error: {e}"));
            std::process::ExitCode::FAILURE
        }
    }
}
