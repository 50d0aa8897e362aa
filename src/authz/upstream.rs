//! The answer the control plane gives a core asking for a user's token at a
//! route's upstream service (issue 12): the token to inject, or why there is
//! none. The token itself lives only in `Zeroizing` memory.

/// What a core gets back for (user, route).
pub enum UpstreamAnswer {
    /// The token to send, valid until `expires` (unix s).
    Token {
        value: zeroize::Zeroizing<String>,
        expires: i64,
    },
    /// No usable token: never connected, disconnected (`why`), or refused
    /// by the upstream. The user connects at `connect_url`.
    NotConnected { why: String, connect_url: String },
    /// The vault or store cannot be read now.
    Unavailable,
}

impl std::fmt::Debug for UpstreamAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamAnswer::Token { expires, .. } => {
                write!(f, "Token {{ expires: {expires}, .. }}")
            }
            UpstreamAnswer::NotConnected { why, connect_url } => {
                write!(
                    f,
                    "NotConnected {{ why: {why:?}, connect_url: {connect_url:?} }}"
                )
            }
            UpstreamAnswer::Unavailable => f.write_str("Unavailable"),
        }
    }
}
