//! Phoenix channel framing, as the official Supabase Realtime clients speak it: every message
//! is (join ref, ref, topic, event, payload), sent as a JSON array (`vsn=2.0.0`, the clients'
//! default) or a JSON object (`vsn=1.0.0`). With 2.0.0, user broadcasts also travel as binary
//! frames: kind 3 from the client, kind 4 to it (the only binary kind the clients decode).
//!
//! This module only frames; what a frame means is the Supabase protocol's business. Frames
//! come from the network: every length is checked, and anything malformed is a `FrameError`
//! with a message fit to show the client, never a panic.

use serde_json::Value;
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};

/// The serializer a connection asked for with `vsn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vsn {
    /// JSON objects, no binary frames.
    V1,
    /// JSON arrays, user broadcasts in binary frames.
    V2,
}

impl Vsn {
    /// From the `vsn` query parameter; Phoenix's default when it is absent.
    pub fn from_query(vsn: Option<&str>) -> Result<Vsn, FrameError> {
        match vsn {
            None | Some("1.0.0") => Ok(Vsn::V1),
            Some("2.0.0") => Ok(Vsn::V2),
            Some(other) => Err(FrameError(format!(
                "unsupported vsn {other:?}: 1.0.0 or 2.0.0"
            ))),
        }
    }
}

/// One message, either way.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub join_ref: Option<String>,
    pub reference: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

/// A user broadcast in a binary frame (kind 3): its payload is JSON text or raw bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct BinaryBroadcast {
    pub join_ref: Option<String>,
    pub reference: Option<String>,
    pub topic: String,
    pub event: String,
    /// Metadata the application allowed through (JSON text; empty when none).
    pub meta: String,
    pub payload: BroadcastPayload,
}

#[derive(Clone, Debug, PartialEq)]
pub enum BroadcastPayload {
    Json(String),
    Bytes(Vec<u8>),
}

/// What a client sent.
#[derive(Clone, Debug, PartialEq)]
pub enum Incoming {
    Frame(Frame),
    Broadcast(BinaryBroadcast),
}

/// A frame that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameError(pub String);

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The kinds of binary frames.
const USER_BROADCAST_PUSH: u8 = 3;
const USER_BROADCAST: u8 = 4;
/// How a binary broadcast's payload is encoded.
const ENCODING_BYTES: u8 = 0;
const ENCODING_JSON: u8 = 1;

/// Read a text frame.
pub fn parse_text(vsn: Vsn, text: &str) -> Result<Frame, FrameError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| FrameError(format!("message is not JSON: {e}")))?;
    let (join_ref, reference, topic, event, payload) = match (vsn, value) {
        (Vsn::V2, Value::Array(parts)) => {
            let Ok([join_ref, reference, topic, event, payload]) = <[Value; 5]>::try_from(parts)
            else {
                return Err(FrameError(
                    "a message is [join_ref, ref, topic, event, payload]".into(),
                ));
            };
            (join_ref, reference, topic, event, payload)
        }
        (Vsn::V1, Value::Object(mut fields)) => {
            let mut take = |key: &str| fields.remove(key).unwrap_or(Value::Null);
            (
                take("join_ref"),
                take("ref"),
                take("topic"),
                take("event"),
                take("payload"),
            )
        }
        (Vsn::V2, _) => return Err(FrameError("vsn 2.0.0 messages are JSON arrays".into())),
        (Vsn::V1, _) => return Err(FrameError("vsn 1.0.0 messages are JSON objects".into())),
    };
    Ok(Frame {
        join_ref: reference_of(join_ref, "join_ref")?,
        reference: reference_of(reference, "ref")?,
        topic: text_of(topic, "topic")?,
        event: text_of(event, "event")?,
        payload: match payload {
            Value::Null => Value::Object(Default::default()),
            payload => payload,
        },
    })
}

/// A ref: a string, as the clients send it, or null.
fn reference_of(value: Value, name: &str) -> Result<Option<String>, FrameError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) => Ok(Some(n.to_string())),
        _ => Err(FrameError(format!("{name} is a string or null"))),
    }
}

fn text_of(value: Value, name: &str) -> Result<String, FrameError> {
    match value {
        Value::String(s) => Ok(s),
        _ => Err(FrameError(format!("{name} is a string"))),
    }
}

/// Read a binary frame: only user broadcasts (kind 3) come this way.
pub fn parse_binary(bytes: &[u8]) -> Result<BinaryBroadcast, FrameError> {
    let truncated = || FrameError("binary message is cut short".into());
    let (&kind, rest) = bytes.split_first().ok_or_else(truncated)?;
    if kind != USER_BROADCAST_PUSH {
        return Err(FrameError(format!(
            "binary message of kind {kind}: only user broadcasts (kind 3) are binary"
        )));
    }
    let [join_ref, reference, topic, event, meta, encoding] =
        *rest.first_chunk::<6>().ok_or_else(truncated)?;
    let mut rest = &rest[6..];
    let mut field = |len: u8| -> Result<&[u8], FrameError> {
        let (field, after) = rest.split_at_checked(len as usize).ok_or_else(truncated)?;
        rest = after;
        Ok(field)
    };
    let text = |bytes: &[u8], name: &str| {
        String::from_utf8(bytes.to_vec()).map_err(|_| FrameError(format!("{name} is not UTF-8")))
    };
    let join_ref = text(field(join_ref)?, "join_ref")?;
    let reference = text(field(reference)?, "ref")?;
    let topic = text(field(topic)?, "topic")?;
    let event = text(field(event)?, "event")?;
    let meta = text(field(meta)?, "meta")?;
    let payload = match encoding {
        ENCODING_JSON => BroadcastPayload::Json(text(rest, "payload")?),
        ENCODING_BYTES => BroadcastPayload::Bytes(rest.to_vec()),
        other => return Err(FrameError(format!("unknown payload encoding {other}"))),
    };
    let some = |s: String| (!s.is_empty()).then_some(s);
    Ok(BinaryBroadcast {
        join_ref: some(join_ref),
        reference: some(reference),
        topic,
        event,
        meta,
        payload,
    })
}

/// The text frame for `frame`.
pub fn encode(vsn: Vsn, frame: &Frame) -> Utf8Bytes {
    let text = match vsn {
        Vsn::V2 => serde_json::json!([
            frame.join_ref,
            frame.reference,
            frame.topic,
            frame.event,
            frame.payload
        ]),
        Vsn::V1 => serde_json::json!({
            "join_ref": frame.join_ref,
            "ref": frame.reference,
            "topic": frame.topic,
            "event": frame.event,
            "payload": frame.payload,
        }),
    };
    text.to_string().into()
}

/// A user broadcast of `event` with `payload` (JSON text) on `topic`, as a pushed message: a
/// binary frame of kind 4 with vsn 2.0.0, else (or when a name is too long for its one-byte
/// length) the JSON `broadcast` message, which the clients take as well.
pub fn encode_broadcast(vsn: Vsn, topic: &str, event: &str, payload: &str) -> Message {
    if let (Vsn::V2, Ok(topic_len), Ok(event_len)) =
        (vsn, u8::try_from(topic.len()), u8::try_from(event.len()))
    {
        let mut bytes = Vec::with_capacity(5 + topic.len() + event.len() + payload.len());
        bytes.extend_from_slice(&[USER_BROADCAST, topic_len, event_len, 0, ENCODING_JSON]);
        bytes.extend_from_slice(topic.as_bytes());
        bytes.extend_from_slice(event.as_bytes());
        bytes.extend_from_slice(payload.as_bytes());
        return Message::Binary(Bytes::from(bytes));
    }
    let payload: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
    let payload = serde_json::json!({"type": "broadcast", "event": event, "payload": payload});
    let frame = Frame {
        join_ref: None,
        reference: None,
        topic: topic.to_string(),
        event: "broadcast".into(),
        payload,
    };
    Message::Text(encode(vsn, &frame))
}

#[cfg(test)]
mod unit {
    use super::*;
    use serde_json::json;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn a_join_reads_the_same_in_both_serializers() {
        let v2 = r#"["6","6","realtime:realtime:public:defects","phx_join",{"config":{"broadcast":{"ack":false,"self":false},"presence":{"key":"","enabled":false},"postgres_changes":[{"event":"*","schema":"public","table":"defects","filter":"score=gte.0.5"}],"private":false}}]"#;
        let frame = parse_text(Vsn::V2, v2).unwrap();
        assert_eq!(frame.join_ref.as_deref(), Some("6"));
        assert_eq!(frame.reference.as_deref(), Some("6"));
        assert_eq!(frame.topic, "realtime:realtime:public:defects");
        assert_eq!(frame.event, "phx_join");
        assert_eq!(
            frame.payload["config"]["postgres_changes"][0]["filter"],
            "score=gte.0.5"
        );
        let v1 = encode(Vsn::V1, &frame);
        assert_eq!(parse_text(Vsn::V1, &v1).unwrap(), frame);
        assert_eq!(
            parse_text(Vsn::V2, &encode(Vsn::V2, &frame)).unwrap(),
            frame
        );
    }

    #[test]
    fn a_heartbeat_has_no_join_ref_and_its_reply_carries_its_ref() {
        let beat = parse_text(Vsn::V2, r#"[null,"19","phoenix","heartbeat",{}]"#).unwrap();
        assert_eq!(
            (beat.join_ref, beat.reference.as_deref()),
            (None, Some("19"))
        );
        let reply = Frame {
            join_ref: None,
            reference: beat.reference,
            topic: beat.topic,
            event: "phx_reply".into(),
            payload: json!({"status": "ok", "response": {}}),
        };
        assert_eq!(
            encode(Vsn::V2, &reply).as_str(),
            r#"[null,"19","phoenix","phx_reply",{"response":{},"status":"ok"}]"#
        );
    }

    #[test]
    fn the_clients_binary_broadcast_is_read_and_ours_is_what_they_decode() {
        // Captured from realtime-js: room.send({type:'broadcast', event:'defect-flag', ...}).
        let push = hex("03 01 02 13 0b 00 01 39 3131 7265616c74696d653a726f6f6d3a6c696e6533 6465666563742d666c6167 7b226964223a372c226e6f7465223a227265636865636b227d");
        let broadcast = parse_binary(&push).unwrap();
        assert_eq!(
            broadcast,
            BinaryBroadcast {
                join_ref: Some("9".into()),
                reference: Some("11".into()),
                topic: "realtime:room:line3".into(),
                event: "defect-flag".into(),
                meta: String::new(),
                payload: BroadcastPayload::Json(r#"{"id":7,"note":"recheck"}"#.into()),
            }
        );
        // What the server sent both subscribers in the same capture.
        let sent = encode_broadcast(
            Vsn::V2,
            "realtime:room:line3",
            "defect-flag",
            r#"{"id":7,"note":"recheck"}"#,
        );
        let expected = hex("04 13 0b 00 01 7265616c74696d653a726f6f6d3a6c696e6533 6465666563742d666c6167 7b226964223a372c226e6f7465223a227265636865636b227d");
        assert_eq!(sent, Message::Binary(expected.into()));
    }

    #[test]
    fn a_broadcast_goes_as_json_where_binary_cannot_carry_it() {
        let json_frame = |message: Message| match message {
            Message::Text(text) => parse_text(Vsn::V1, &text)
                .or_else(|_| parse_text(Vsn::V2, &text))
                .unwrap(),
            other => panic!("expected text, got {other:?}"),
        };
        let v1 = json_frame(encode_broadcast(Vsn::V1, "realtime:a", "e", r#"{"x":1}"#));
        assert_eq!(v1.event, "broadcast");
        assert_eq!(
            v1.payload,
            json!({"type": "broadcast", "event": "e", "payload": {"x": 1}})
        );
        let long = "t".repeat(300);
        let v2 = json_frame(encode_broadcast(Vsn::V2, &long, "e", "[1]"));
        assert_eq!(
            (v2.topic, v2.payload["payload"].clone()),
            (long, json!([1]))
        );
    }

    #[test]
    fn malformed_frames_are_refused_with_a_reason() {
        let text_cases = [
            (Vsn::V2, "not json", "not JSON"),
            (Vsn::V2, r#"{"topic":"t"}"#, "JSON arrays"),
            (Vsn::V1, r#"["1","1","t","e",{}]"#, "JSON objects"),
            (
                Vsn::V2,
                r#"["1","1","t","e"]"#,
                "[join_ref, ref, topic, event, payload]",
            ),
            (Vsn::V2, r#"["1","1",7,"e",{}]"#, "topic is a string"),
            (Vsn::V2, r#"["1",{},"t","e",{}]"#, "ref is a string or null"),
            (Vsn::V1, r#"{"ref":"1","topic":"t"}"#, "event is a string"),
        ];
        for (vsn, text, reason) in text_cases {
            let error = parse_text(vsn, text).unwrap_err();
            assert!(error.0.contains(reason), "{text}: {error}");
        }
        let binary_cases: [(&[u8], &str); 5] = [
            (&[], "cut short"),
            (&[4, 1, 1, 0, 1, b't', b'e'], "kind 4"),
            (&[3, 1, 1], "cut short"),
            (&[3, 0, 0, 200, 1, 0, 1, b't', b'e'], "cut short"),
            (&[3, 0, 0, 1, 1, 0, 9, b't', b'e'], "encoding 9"),
        ];
        for (bytes, reason) in binary_cases {
            let error = parse_binary(bytes).unwrap_err();
            assert!(error.0.contains(reason), "{bytes:?}: {error}");
        }
        assert!(Vsn::from_query(Some("3.0.0")).is_err());
        assert_eq!(Vsn::from_query(None), Ok(Vsn::V1));
    }
}
