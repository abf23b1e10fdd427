//! Captured content in the console: redacted content is shown to token
//! holders (each read recorded in the trail as a `content_read` event);
//! sealed content never reaches the console. `leash audit show` has its
//! reads recorded here too, before it shows anything.

use std::{path::Path, sync::Arc};

use http::StatusCode;
use serde_json::{Value, json};

use super::Answer;
use crate::{
    capture::{
        Capture,
        store::{self, ReadError},
    },
    pipeline::Pipeline,
    record::{AuditRecord, Caller, CaptureClass, ContentRead, Event},
};

type Captured = (Arc<Capture>, Arc<Pipeline>);

fn read_event(pipeline: &Pipeline, record: &str, reader: &str) {
    let mut event = AuditRecord::event(Event::ContentRead, pipeline.host(), Caller::default());
    event.content_read = Some(ContentRead {
        record: record.to_owned(),
        reader: reader.to_owned(),
    });
    pipeline.audit_event(event);
}

/// `POST /api/audit/content-read` `{"record": ID, "reader": WHO}`.
pub fn record_read(capture: Option<&Captured>, body: &[u8]) -> Answer {
    let Some((_, pipeline)) = capture else {
        return Answer::error(StatusCode::CONFLICT, "content capture is off");
    };
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Answer::error(StatusCode::BAD_REQUEST, "the body is not JSON");
    };
    let (Some(record), Some(reader)) = (v["record"].as_str(), v["reader"].as_str()) else {
        return Answer::error(StatusCode::BAD_REQUEST, "give record and reader");
    };
    if record.len() > 64 || reader.len() > 256 {
        return Answer::error(StatusCode::BAD_REQUEST, "record or reader too long");
    }
    read_event(pipeline, record, &format!("cli: {reader}"));
    Answer::json(StatusCode::OK, &json!({"recorded": record}))
}

/// `GET /api/records/<id>/content`: redacted content only.
pub async fn show(capture: Option<&Captured>, dir: &Path, id: &str) -> Answer {
    let Some((capture, pipeline)) = capture else {
        return Answer::error(StatusCode::NOT_FOUND, "content capture is off");
    };
    let (dir, key) = (dir.to_owned(), id.to_owned());
    let found = tokio::task::spawn_blocking(move || crate::audit::read::find(&dir, &key)).await;
    let Ok(Ok(Some(record))) = found else {
        return Answer::error(StatusCode::NOT_FOUND, "no such record");
    };
    match store::class_of(&record) {
        Ok(CaptureClass::Redacted) => {}
        Ok(CaptureClass::Sealed) => {
            return Answer::error(
                StatusCode::FORBIDDEN,
                "sealed content never reaches the console: open it with `leash audit show --content --identity`",
            );
        }
        _ => return Answer::error(StatusCode::NOT_FOUND, "this record has no captured content"),
    }
    let dir = capture.store.dir().to_owned();
    let read = tokio::task::spawn_blocking(move || store::read_checked(&dir, &record)).await;
    let stored = match read {
        Ok(Ok((_, stored))) => stored,
        Ok(Err(ReadError::Gone(_))) => {
            return Answer::error(StatusCode::GONE, "the content was removed (retention)");
        }
        Ok(Err(ReadError::Altered)) => {
            return Answer::error(
                StatusCode::CONFLICT,
                "the content does not match the SHA-256 its record holds: it was altered",
            );
        }
        Ok(Err(e)) => return Answer::error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(_) => return Answer::error(StatusCode::INTERNAL_SERVER_ERROR, "content read failed"),
    };
    let Ok(doc) = serde_json::from_slice::<Value>(&stored) else {
        return Answer::error(
            StatusCode::CONFLICT,
            "the content is not a content document",
        );
    };
    read_event(pipeline, id, "console");
    Answer::json(StatusCode::OK, &doc)
}
