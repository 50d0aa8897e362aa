//! The closed set of errors on the request path, each mapped in one place to an
//! HTTP status, a short reason (for the client and the audit record) and whether
//! the connection must be closed.

/// An error answered locally by portcullis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// Malformed request; the reason is static text for the client.
    BadRequest(&'static str),
    BadHost,
    BadVersion,
    TooManyHeaders,
    HeadersTooLarge,
    UriTooLong,
    MethodNotAllowed,
    NotImplemented(&'static str),
    ExpectationFailed,
    PayloadTooLarge,
    /// The request body did not arrive in time.
    RequestTimeout,
    NoRoute,
    /// The upstream could not be reached or broke the exchange.
    BadGateway(&'static str),
    GatewayTimeout,
    ServiceUnavailable,
    /// Refused before authentication matters (e.g. a disallowed Origin).
    Forbidden(&'static str),
    /// No valid token (401 with `WWW-Authenticate`).
    Unauthorized(&'static str),
    /// A valid token without a required scope (403 with `WWW-Authenticate`).
    InsufficientScope,
    /// A policy's rate limit (429 with `Retry-After`).
    RateLimited,
    /// A policy denied the call: answered as a JSON-RPC error (HTTP 200) so
    /// the client shows it and the session stays usable.
    PolicyDenied,
    /// A policy denied a call POSTed on the legacy HTTP+SSE transport: 403
    /// with the same JSON-RPC error. That transport's clients read answers
    /// only on their GET stream and ignore the body of a successful POST, so
    /// a 200 would leave the call waiting for the client's own timeout.
    LegacyPolicyDenied,
    /// A deny rule refused a request that carries no call (GET, DELETE): 403.
    PolicyForbidden,
    /// A `step_up` rule refused: 401 `insufficient_user_authentication`, so
    /// the user authorizes again before the agent goes on.
    StepUp,
    /// The caller has no usable token at the route's upstream service: a
    /// JSON-RPC error (HTTP 200) whose message says where to connect.
    UpstreamNotConnected,
    /// A policy denied a notification: 202 as for any notification, with no
    /// body (nothing answers a notification); it is not forwarded.
    NotificationDenied,
    /// An MCP body that is not a valid JSON-RPC message (HTTP 400 with this
    /// JSON-RPC error code).
    InvalidJsonRpc {
        code: i32,
        message: &'static str,
    },
}

impl HttpError {
    pub fn status(self) -> u16 {
        match self {
            HttpError::BadRequest(_)
            | HttpError::BadHost
            | HttpError::TooManyHeaders
            | HttpError::InvalidJsonRpc { .. } => 400,
            HttpError::BadVersion => 505,
            HttpError::HeadersTooLarge => 431,
            HttpError::UriTooLong => 414,
            HttpError::MethodNotAllowed => 405,
            HttpError::NotImplemented(_) => 501,
            HttpError::ExpectationFailed => 417,
            HttpError::PayloadTooLarge => 413,
            HttpError::RequestTimeout => 408,
            HttpError::NoRoute => 404,
            HttpError::BadGateway(_) => 502,
            HttpError::GatewayTimeout => 504,
            HttpError::ServiceUnavailable => 503,
            HttpError::Forbidden(_)
            | HttpError::InsufficientScope
            | HttpError::PolicyForbidden
            | HttpError::LegacyPolicyDenied => 403,
            HttpError::Unauthorized(_) | HttpError::StepUp => 401,
            HttpError::RateLimited => 429,
            HttpError::PolicyDenied | HttpError::UpstreamNotConnected => 200,
            HttpError::NotificationDenied => 202,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            HttpError::BadRequest(r)
            | HttpError::NotImplemented(r)
            | HttpError::BadGateway(r)
            | HttpError::Forbidden(r)
            | HttpError::Unauthorized(r) => r,
            HttpError::InsufficientScope => "insufficient scope",
            HttpError::StepUp => "the user must authorize again",
            HttpError::RateLimited => "rate limit exceeded",
            HttpError::PolicyDenied
            | HttpError::LegacyPolicyDenied
            | HttpError::NotificationDenied
            | HttpError::PolicyForbidden => "denied by policy",
            HttpError::InvalidJsonRpc { message, .. } => message,
            HttpError::BadHost => "invalid Host header",
            HttpError::BadVersion => "HTTP version not supported",
            HttpError::TooManyHeaders => "too many header fields",
            HttpError::HeadersTooLarge => "request header fields too large",
            HttpError::UriTooLong => "request target too long",
            HttpError::MethodNotAllowed => "method not allowed",
            HttpError::ExpectationFailed => "unsupported Expect",
            HttpError::PayloadTooLarge => "request body too large",
            HttpError::RequestTimeout => "request timed out",
            HttpError::NoRoute => "no route for this host and path",
            HttpError::GatewayTimeout => "upstream timed out",
            HttpError::ServiceUnavailable => "shutting down",
            HttpError::UpstreamNotConnected => {
                "the upstream service is not connected for this user"
            }
        }
    }

    /// Whether framing may be in doubt afterwards, so the connection must close.
    /// Errors raised after the body was fully read may keep it (`NoRoute` is
    /// answered before the body, so the caller closes when a body is pending).
    pub fn must_close(self) -> bool {
        !matches!(
            self,
            HttpError::NoRoute
                | HttpError::BadGateway(_)
                | HttpError::GatewayTimeout
                | HttpError::Forbidden(_)
                | HttpError::Unauthorized(_)
                | HttpError::InsufficientScope
                | HttpError::RateLimited
                | HttpError::PolicyDenied
                | HttpError::LegacyPolicyDenied
                | HttpError::NotificationDenied
                | HttpError::PolicyForbidden
                | HttpError::UpstreamNotConnected
                | HttpError::StepUp
        ) && !self.judged_whole_body()
    }

    /// How this answer counts in the metrics.
    pub fn decision(self) -> crate::metrics::Decision {
        use crate::metrics::Decision;
        match self {
            HttpError::PolicyDenied
            | HttpError::LegacyPolicyDenied
            | HttpError::RateLimited
            | HttpError::NotificationDenied
            | HttpError::UpstreamNotConnected
            | HttpError::StepUp
            | HttpError::PolicyForbidden => Decision::Denied,
            HttpError::Unauthorized(_) | HttpError::InsufficientScope | HttpError::Forbidden(_) => {
                Decision::Unauthenticated
            }
            HttpError::BadGateway(_)
            | HttpError::GatewayTimeout
            | HttpError::ServiceUnavailable => Decision::Failed,
            _ => Decision::Invalid,
        }
    }

    /// Errors raised only once the whole body was read and judged: the
    /// connection's framing is intact and it may be kept alive.
    pub fn judged_whole_body(self) -> bool {
        matches!(
            self,
            HttpError::InvalidJsonRpc { .. }
                | HttpError::PolicyDenied
                | HttpError::LegacyPolicyDenied
                | HttpError::NotificationDenied
                | HttpError::RateLimited
                | HttpError::UpstreamNotConnected
                | HttpError::StepUp
        )
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status(), self.reason())
    }
}

impl std::error::Error for HttpError {}
