//! The `ringrelay` binary: everything is in the library; see `ringrelay::cli`.

fn main() -> std::process::ExitCode {
    ringrelay::cli::main(std::env::args().skip(1).collect())
}
