//! (owner: to be written)
