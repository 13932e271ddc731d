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
