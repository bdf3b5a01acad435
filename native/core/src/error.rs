//! The error of malformed framing.  A short read is never an error (see [`crate::Header::parse`]).

use std::fmt;

/// Malformed input on the wire; the connection that produced it must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// A tagged message whose Int32 length (which counts itself) is below 4.
    LengthTooSmall { tag: u8, len: i32 },
    /// A tagged message whose body is longer than the configured maximum.
    MessageTooLarge { tag: u8, len: i32, max_body: usize },
    /// An untagged start-up packet whose length is outside `8..=MAX_STARTUP_PACKET`.
    BadStartupLength { len: i32 },
    /// A DataRow or CopyData with no masking plan while masking is required
    /// ([`crate::Framer::set_mask_required`]).
    UnmaskedRow { tag: u8 },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::LengthTooSmall { tag, len } => {
                write!(
                    f,
                    "message {} has invalid length {len} (below 4)",
                    TagDisplay(tag)
                )
            }
            Self::MessageTooLarge { tag, len, max_body } => write!(
                f,
                "message {} of length {len} exceeds the maximum body size {max_body}",
                TagDisplay(tag)
            ),
            Self::BadStartupLength { len } => {
                write!(f, "invalid start-up packet length {len}")
            }
            Self::UnmaskedRow { tag } => write!(
                f,
                "message {} arrived with no masking plan while masking is required",
                TagDisplay(tag)
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// `'Q'` for printable tags, `0x00` otherwise.
struct TagDisplay(u8);

impl fmt::Display for TagDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", char::from(self.0))
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_tag() {
        let e = FrameError::LengthTooSmall { tag: b'Q', len: 3 };
        assert_eq!(e.to_string(), "message 'Q' has invalid length 3 (below 4)");
        let e = FrameError::MessageTooLarge {
            tag: 0,
            len: 99,
            max_body: 10,
        };
        assert!(e.to_string().contains("0x00"));
        let e = FrameError::BadStartupLength { len: 7 };
        assert!(e.to_string().contains('7'));
    }
}
