//! Answers in the profile's shapes: JSON helpers, the refusals a request can end in and how each
//! error shape words them, and the `ININ-Correlation-Id` header of the genesys profile.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::profile::ErrorShape;

/// Genesys's correlation header: the execution id of a success, the `contextId` of an error.
pub(crate) const CORRELATION_ID: HeaderName = HeaderName::from_static("inin-correlation-id");

/// A JSON answer with the reference's headers.
pub(crate) fn json(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => json_bytes(status, bytes),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

pub(crate) fn json_bytes(status: StatusCode, bytes: Vec<u8>) -> Response {
    let content_type = [(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    )];
    (status, content_type, bytes).into_response()
}

/// Why a request is refused. Each error shape words it its own way; the seed's words are the
/// reference's, byte for byte.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Refusal<'a> {
    /// The client broke off its body.
    UnreadableBody,
    NotFound,
    TooLarge,
    /// No `Authorization: Bearer` at all.
    NoToken,
    /// A bearer token the simulator did not issue, or one that expired.
    BadToken,
    RateLimited,
    /// `status-NNN` data action ids.
    Forced(StatusCode),
    Unavailable,
    /// The body is not JSON.
    InvalidJson,
    /// The seed's catch-all: no string payload and content type, or a payload that is not
    /// strict padded base64.
    InvalidPayload,
    /// A body problem with its own explanation (flat bodies, chunk fields).
    BadBody(&'a str),
    /// A data action id that is not valid percent-encoded UTF-8.
    InvalidActionId,
}

impl Refusal<'_> {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NoToken | Self::BadToken => StatusCode::UNAUTHORIZED,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Forced(status) => *status,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::UnreadableBody
            | Self::InvalidJson
            | Self::InvalidPayload
            | Self::BadBody(_)
            | Self::InvalidActionId => StatusCode::BAD_REQUEST,
        }
    }

    fn seed_message(&self) -> String {
        let text = match self {
            Self::UnreadableBody => "unreadable body",
            Self::NotFound => "not found",
            Self::TooLarge => "payload too large",
            Self::NoToken | Self::BadToken => "invalid_token",
            Self::RateLimited => "rate limited",
            Self::Forced(status) => return format!("forced {}", status.as_u16()),
            Self::Unavailable => "unavailable",
            Self::InvalidJson => "invalid json",
            Self::InvalidPayload => "invalid base64 payload",
            Self::BadBody(message) => message,
            Self::InvalidActionId => "invalid data action id",
        };
        text.to_owned()
    }

    /// Genesys's code and message. The codes are the ones its Platform API answers with for
    /// these statuses; a forced status takes the code of its status.
    fn genesys_words(&self) -> (&'static str, String) {
        let (code, text) = match self {
            Self::UnreadableBody => ("bad.request", "The request body could not be read."),
            Self::NotFound => ("not.found", "The requested resource was not found."),
            Self::TooLarge => (
                "request.entity.too.large",
                "The request is larger than the server accepts.",
            ),
            Self::NoToken => (
                "authentication.required",
                "No authentication bearer token specified in authorization header.",
            ),
            Self::BadToken => ("bad.credentials", "Invalid login credentials."),
            Self::RateLimited => (
                "too.many.requests",
                "Rate limit exceeded the maximum. Retry the request after the time in Retry-After.",
            ),
            Self::Forced(status) => {
                return (genesys_code(*status), format!("forced {}", status.as_u16()));
            }
            Self::Unavailable => (
                "service.unavailable",
                "The service is currently unavailable.",
            ),
            Self::InvalidJson => (
                "bad.request",
                "The request could not be understood by the server due to malformed syntax.",
            ),
            Self::InvalidPayload => ("bad.request", "The payload is not standard padded base64."),
            Self::BadBody(message) => ("bad.request", *message),
            Self::InvalidActionId => ("bad.request", "The action id is not valid."),
        };
        (code, text.to_owned())
    }
}

/// The code Genesys gives an error status, for statuses forced by `status-NNN`.
fn genesys_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad.request",
        401 => "authentication.required",
        403 => "missing.permissions",
        404 => "not.found",
        408 => "request.timeout",
        409 => "conflict",
        413 => "request.entity.too.large",
        415 => "unsupported.media.type",
        422 => "unprocessable.entity",
        429 => "too.many.requests",
        500 => "internal.server.error",
        502 => "bad.gateway",
        503 => "service.unavailable",
        504 => "gateway.timeout",
        _ if status.is_server_error() => "internal.server.error",
        _ => "bad.request",
    }
}

#[derive(Serialize)]
struct SeedError<'a> {
    error: &'a str,
}

/// Genesys's `ErrorBody` (the platform SDKs' model): `contextId` is the correlation id.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenesysError<'a> {
    message: &'a str,
    code: &'a str,
    status: u16,
    message_with_params: &'a str,
    message_params: serde_json::Map<String, serde_json::Value>,
    context_id: &'a str,
    details: [(); 0],
    errors: [(); 0],
}

impl ErrorShape {
    /// The error answer of `refusal` in this shape.
    pub(crate) fn refuse(self, refusal: Refusal<'_>) -> Response {
        let status = refusal.status();
        match self {
            Self::Seed => json(
                status,
                &SeedError {
                    error: &refusal.seed_message(),
                },
            ),
            Self::Genesys => {
                let (code, message) = refusal.genesys_words();
                genesys_error(status, code, &message)
            }
        }
    }
}

/// A Genesys error body whose `contextId` is also its `ININ-Correlation-Id`.
pub(crate) fn genesys_error(status: StatusCode, code: &str, message: &str) -> Response {
    let context_id = random_uuid().to_string();
    let body = GenesysError {
        message,
        code,
        status: status.as_u16(),
        message_with_params: message,
        message_params: serde_json::Map::new(),
        context_id: &context_id,
        details: [],
        errors: [],
    };
    with_correlation_id(json(status, &body), &context_id)
}

pub(crate) fn with_correlation_id(mut answer: Response, id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(id) {
        answer.headers_mut().insert(CORRELATION_ID, value);
    }
    answer
}

/// Gives an answer that has no `ININ-Correlation-Id` yet a fresh one: Genesys sends it on
/// every answer, the token endpoint's and the simulator's own included.
pub(crate) async fn ensure_correlation_id(answer: Response) -> Response {
    if answer.headers().contains_key(CORRELATION_ID) {
        return answer;
    }
    with_correlation_id(answer, &random_uuid().to_string())
}

/// A v4 UUID from the thread-local generator; `Uuid::new_v4` would make a system call each time.
pub(crate) fn random_uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}
