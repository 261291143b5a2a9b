//! Profile compilation (no filter is loaded here).
