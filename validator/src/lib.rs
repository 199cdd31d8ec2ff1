//! Statement classification and result comparison.
