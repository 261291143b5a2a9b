//! nestbox CNI library.
