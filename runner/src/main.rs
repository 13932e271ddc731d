//! `runner`: train, sample, evaluate and list ndm models. Errors print as one line and exit 1.

fn main() {
    // Keep freed buffers for reuse: fresh pages for every layer's output cost a third of a step.
    ndm_api::kernels::retain_freed_memory();
    runner::main_entry();
}
