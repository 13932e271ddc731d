//! `runner`: train, sample, evaluate and list ndm models. Errors print as one line and exit 1.

fn main() {
    // Before any tensor op: freed buffers kept for reuse (fresh pages for every layer's output cost
    // a third of a step), and candle's second pool of spinning threads kept off rayon's cores.
    ndm_api::kernels::prepare_process();
    runner::main_entry();
}
