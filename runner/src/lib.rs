//! The `runner` command line: argument parsing, printing, progress bars and run directories. The
//! engine (training loop, sampling, evaluation, spec overrides, registry files and plugin
//! libraries) is in `ndm-api`; a Rust program uses that directly, not this crate.

pub mod cli;
mod commands;
mod env;
mod plot;

use cli::{Cli, Command};
use env::Env;

/// How a command ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    /// Training was interrupted (Ctrl-C) and its checkpoint saved: exit status 130.
    Interrupted,
}

/// The whole program: parse the command line, run it, print an error as one `Error:` line and
/// exit 1 (130 after Ctrl-C, once the checkpoint is saved).
pub fn main_entry() {
    main_with_plugins(&[]);
}

/// [`main_entry`] for a binary that links plugin crates of its own: their `PluginInfo`s are
/// registered by value, so no linker anchor (`use my_plugins as _;`) is needed.
pub fn main_with_plugins(plugins: &[ndm_api::PluginInfo]) {
    use clap::{CommandFactory, FromArgMatches};
    // clap takes &'static strings without its `string` feature; the text lives for the process.
    let version: &'static str = Box::leak(version_text().into_boxed_str());
    let matches = Cli::command().long_version(version).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let code = match run(cli, plugins) {
        Ok(Outcome::Done) => 0,
        Ok(Outcome::Interrupted) => 130,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| ndm_api::error::one_line(c)).collect();
            eprintln!("Error: {}", chain.join(": "));
            1
        }
    };
    std::process::exit(code);
}

/// `runner --version`: this runner's version and the values a plugin library must match.
fn version_text() -> String {
    use ndm_api::sdk;
    format!(
        "{}\nndm-api {} (source fingerprint {})\nrustc: {}\ncandle: {}\ntarget: {}\nfeatures: {}\nplugin ABI: {}",
        env!("CARGO_PKG_VERSION"),
        ndm_api::VERSION,
        sdk::FINGERPRINT,
        sdk::RUSTC_VERSION,
        sdk::CANDLE_VERSION,
        sdk::TARGET,
        if sdk::FEATURES.is_empty() { "(none)" } else { sdk::FEATURES },
        sdk::ABI_VERSION
    )
}

fn run(cli: Cli, plugins: &[ndm_api::PluginInfo]) -> anyhow::Result<Outcome> {
    let env = Env::new(&cli.global, plugins)?;
    match cli.command {
        Some(Command::Train(a)) => commands::train::run(&env, &a),
        Some(Command::Sample(a)) => commands::sample::run(&env, &a).map(|_| Outcome::Done),
        Some(Command::Eval(a)) => commands::eval::run(&env, &a).map(|_| Outcome::Done),
        Some(Command::Matrix(a)) => commands::matrix::run(&env, &a),
        Some(Command::Classifier(a)) => commands::classifier::run(&env, &a).map(|_| Outcome::Done),
        Some(Command::List) => {
            print!("{}", commands::list::render(&env));
            Ok(Outcome::Done)
        }
        None => commands::train::run(&env, &cli.flat),
    }
}
