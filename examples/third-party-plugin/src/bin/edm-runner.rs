//! ndm's runner with this crate's plugins linked in statically.

use clap::Parser;
// Link the built-in plugins and ours: an unreferenced crate is not linked and its registrations
// vanish.
use ndm_plugins_all as _;
use third_party_plugin as _;

fn main() {
    let cli = runner::cli::Cli::parse();
    if let Err(e) = runner::run(cli) {
        let chain: Vec<String> = e.chain().map(|c| ndm_api::error::one_line(c)).collect();
        eprintln!("Error: {}", chain.join(": "));
        std::process::exit(1);
    }
}
