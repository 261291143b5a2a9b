//! Shared helpers for the end-to-end tests: test netns guards, bundles, peers.
