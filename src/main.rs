//! The `marco` command line. Results go to stdout; progress, timings and errors to stderr.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Mesa's Vulkan device-select layer complains on stderr when XDG_RUNTIME_DIR is unset; we
    // choose adapters ourselves. Set before any thread starts.
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
