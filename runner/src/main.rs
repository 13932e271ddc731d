//! `runner`: train, sample, evaluate and list ndm models. Errors print as one line and exit 1.

fn main() {
    runner::main_entry();
}
