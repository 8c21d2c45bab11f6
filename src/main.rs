//! The `wakegate` binary: everything lives in the library; see `cli.rs`.

fn main() -> std::process::ExitCode {
    wakegate::cli::main()
}
