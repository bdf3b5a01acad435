//! Message type bytes.  The same byte means different messages in the two directions (`'S'` is
//! Sync from a client and ParameterStatus from a server), so the constants live in two modules.

/// Frontend (client → server) message tags.
pub mod frontend {
    pub const BIND_TAG: u8 = b'B';
    pub const CLOSE_TAG: u8 = b'C';
    pub const COPY_DATA_TAG: u8 = b'd';
    pub const COPY_DONE_TAG: u8 = b'c';
    pub const COPY_FAIL_TAG: u8 = b'f';
    pub const DESCRIBE_TAG: u8 = b'D';
    pub const EXECUTE_TAG: u8 = b'E';
    pub const FLUSH_TAG: u8 = b'H';
    pub const FUNCTION_CALL_TAG: u8 = b'F';
    pub const PARSE_TAG: u8 = b'P';
    /// PasswordMessage, SASLInitialResponse, SASLResponse, GSSResponse.
    pub const PASSWORD_TAG: u8 = b'p';
    pub const QUERY_TAG: u8 = b'Q';
    pub const SYNC_TAG: u8 = b'S';
    pub const TERMINATE_TAG: u8 = b'X';
}

/// Backend (server → client) message tags.
pub mod backend {
    pub const AUTHENTICATION_TAG: u8 = b'R';
    pub const BACKEND_KEY_DATA_TAG: u8 = b'K';
    pub const BIND_COMPLETE_TAG: u8 = b'2';
    pub const CLOSE_COMPLETE_TAG: u8 = b'3';
    pub const COMMAND_COMPLETE_TAG: u8 = b'C';
    pub const COPY_BOTH_RESPONSE_TAG: u8 = b'W';
    pub const COPY_DATA_TAG: u8 = b'd';
    pub const COPY_DONE_TAG: u8 = b'c';
    pub const COPY_IN_RESPONSE_TAG: u8 = b'G';
    pub const COPY_OUT_RESPONSE_TAG: u8 = b'H';
    pub const DATA_ROW_TAG: u8 = b'D';
    pub const EMPTY_QUERY_RESPONSE_TAG: u8 = b'I';
    pub const ERROR_RESPONSE_TAG: u8 = b'E';
    pub const FUNCTION_CALL_RESPONSE_TAG: u8 = b'V';
    pub const NEGOTIATE_PROTOCOL_VERSION_TAG: u8 = b'v';
    pub const NO_DATA_TAG: u8 = b'n';
    pub const NOTICE_RESPONSE_TAG: u8 = b'N';
    pub const NOTIFICATION_RESPONSE_TAG: u8 = b'A';
    pub const PARAMETER_DESCRIPTION_TAG: u8 = b't';
    pub const PARAMETER_STATUS_TAG: u8 = b'S';
    pub const PARSE_COMPLETE_TAG: u8 = b'1';
    pub const PORTAL_SUSPENDED_TAG: u8 = b's';
    pub const READY_FOR_QUERY_TAG: u8 = b'Z';
    pub const ROW_DESCRIPTION_TAG: u8 = b'T';
}
