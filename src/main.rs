//! The `pgbb` binary: everything is in the library; this maps its result to an exit code.

fn main() {
    pgbb::signals::exit(pgbb::run(std::env::args_os()));
}
