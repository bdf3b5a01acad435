//! Which peer a byte stream comes from.  The same tag means different messages in the two
//! directions, so everything that looks at tags is told the direction.

/// The sender of a byte stream, as seen by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Frontend messages, received from the client.
    Client,
    /// Backend messages, received from the upstream server.
    Server,
}

impl Direction {
    /// Index for per-direction arrays (client 0, server 1).
    #[inline]
    pub fn index(self) -> usize {
        match self {
            Direction::Client => 0,
            Direction::Server => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_distinct() {
        assert_eq!(Direction::Client.index(), 0);
        assert_eq!(Direction::Server.index(), 1);
    }
}
