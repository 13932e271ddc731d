//! placeholder-free smoke: runner list names every registered plugin (filled below)
