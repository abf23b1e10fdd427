//! Request hygiene both front doors apply before anything else: the methods
//! an LLM API uses, no `CONNECT`, no absolute-form targets (Leash is not a
//! forward proxy on its HTTP side).

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::{body::LeashBody, json_response};
use crate::provider::ErrorCode;

fn refusal(status: StatusCode, message: &str) -> Response<LeashBody> {
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "code": ErrorCode::BadRequest.as_str()}});
    json_response(status, Bytes::from(body.to_string()))
}

/// The answer to a request no provider call can be, or `None` when it may
/// go on.
pub fn check<B>(req: &Request<B>) -> Option<Response<LeashBody>> {
    if req.method() == Method::CONNECT {
        return Some(refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            "leash: CONNECT is not supported",
        ));
    }
    if !matches!(
        *req.method(),
        Method::GET
            | Method::POST
            | Method::PUT
            | Method::PATCH
            | Method::DELETE
            | Method::HEAD
            | Method::OPTIONS
    ) {
        return Some(refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("leash: method {} is not allowed", req.method()),
        ));
    }
    if req.version() < http::Version::HTTP_2 && req.uri().scheme().is_some() {
        return Some(refusal(
            StatusCode::BAD_REQUEST,
            "leash: absolute-form request targets are not accepted; Leash is not a forward proxy (send the path only)",
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_connect_odd_methods_and_absolute_form() {
        let req = |m: &str, uri: &str| Request::builder().method(m).uri(uri).body(()).unwrap();
        assert!(check(&req("POST", "/v1/chat/completions")).is_none());
        assert_eq!(
            check(&req("CONNECT", "api.openai.com:443"))
                .unwrap()
                .status(),
            405
        );
        assert_eq!(check(&req("TRACE", "/")).unwrap().status(), 405);
        assert_eq!(
            check(&req("POST", "http://api.openai.com/v1/chat/completions"))
                .unwrap()
                .status(),
            400
        );
    }
}
