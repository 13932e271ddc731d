//! `runner`: train, sample, evaluate and list ndm models. Errors print as one line and exit 1.

fn main() {
    // Keep freed buffers for reuse: fresh pages for every layer's output cost a third of a step.
    ndm_api::kernels::retain_freed_memory();
    // Before any tensor op: candle's second pool of spinning threads would take cores from rayon's.
    ndm_api::kernels::keep_cores_for_rayon();
    runner::main_entry();
}
