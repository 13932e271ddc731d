//! `runner`: train, sample, evaluate and list ndm models. Errors print as one line and exit 1.

use clap::Parser;

fn main() {
    let cli = runner::cli::Cli::parse();
    if let Err(e) = runner::run(cli) {
        let chain: Vec<String> = e.chain().map(|c| ndm_api::error::one_line(c)).collect();
        eprintln!("Error: {}", chain.join(": "));
        std::process::exit(1);
    }
}

// candle allocates a fresh buffer for every op result; glibc's malloc serves large ones with
// mmap/munmap, and the page faults cost more system time than the math on small models.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
