//! Untagged start-up packets: StartupMessage, SSLRequest, GSSENCRequest, CancelRequest.
//! Int32 length (counting itself), then the body; no type byte.

use crate::error::FrameError;

/// Largest start-up packet accepted (PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// Smallest start-up packet: the length and a 4-byte code (SSLRequest, GSSENCRequest).
pub const MIN_STARTUP_PACKET: usize = 8;

/// Request codes carried in the place of a protocol version.
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// Length of the start-up packet at the start of `buf`, once its length is known.
///
/// `Ok(None)` before four bytes have arrived; `Err` when the length is outside
/// `8..=MAX_STARTUP_PACKET`.  Whether the whole packet has arrived is [`parse`]'s business.
#[inline]
pub fn packet_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(head) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = i32::from_be_bytes(*head);
    match usize::try_from(len) {
        Ok(n) if (MIN_STARTUP_PACKET..=MAX_STARTUP_PACKET).contains(&n) => Ok(Some(n)),
        _ => Err(FrameError::BadStartupLength { len }),
    }
}

/// Length of the whole start-up packet at the start of `buf`, or `Ok(None)` if it has not fully
/// arrived.  The packet is `buf[..n]`, length field included.
#[inline]
pub fn parse(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    Ok(packet_len(buf)?.filter(|&n| buf.len() >= n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(len: i32, total: usize) -> Vec<u8> {
        let mut v = len.to_be_bytes().to_vec();
        v.resize(total, 0);
        v
    }

    #[test]
    fn ssl_request_is_whole_at_eight_bytes() {
        let mut p = 8i32.to_be_bytes().to_vec();
        p.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
        for n in 0..8 {
            assert_eq!(parse(&p[..n]), Ok(None));
        }
        assert_eq!(parse(&p), Ok(Some(8)));
        p.push(b'x');
        assert_eq!(parse(&p), Ok(Some(8)));
    }

    #[test]
    fn length_bounds() {
        assert_eq!(
            parse(&packet(7, 7)),
            Err(FrameError::BadStartupLength { len: 7 })
        );
        assert_eq!(
            parse(&packet(-8, 8)),
            Err(FrameError::BadStartupLength { len: -8 })
        );
        assert_eq!(
            parse(&packet(10_001, 4)),
            Err(FrameError::BadStartupLength { len: 10_001 })
        );
        assert_eq!(parse(&packet(10_000, 9_999)), Ok(None));
        assert_eq!(parse(&packet(10_000, 10_000)), Ok(Some(10_000)));
        assert_eq!(packet_len(&packet(10_000, 4)), Ok(Some(10_000)));
    }
}
