//! Rewriting result rows (DataRow, CopyData) through a column plan of [`crate::mask::ValueMask`]s.
