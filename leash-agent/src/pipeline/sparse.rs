//! A JSON document read with only the object members whose names a reader
//! asks for: everything else is skipped as it is parsed, never allocated.
//! The usage module reads every answer and stream event this way — it needs
//! a few dozen names (usage counts, finish reasons, tool names), while a
//! full `serde_json::Value` of an answer allocates a string for every key
//! and every text.
//!
//! The result is a `Value` like `serde_json::from_slice` gives, minus the
//! members whose names are not kept (at any depth): code written against
//! the full document reads the same from it, as long as every name it
//! reads is kept.

use std::{borrow::Cow, fmt};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// `json` as a `Value` holding only the members whose names `keep`
/// accepts; `None` if it is not JSON.
pub fn from_slice(json: &[u8], keep: fn(&str) -> bool) -> Option<Value> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let v = Sparse { keep }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(v)
}

#[derive(Clone, Copy)]
struct Sparse {
    /// A `match` on the names (a length switch, then one comparison) costs
    /// a fraction of a search through a list, for every member name read.
    keep: fn(&str) -> bool,
}

impl<'de> DeserializeSeed<'de> for Sparse {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// A member name, borrowed from the input unless it had escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> Visitor<'de> for Sparse {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(Key(name)) = map.next_key::<Key<'de>>()? {
            if (self.keep)(&name) {
                let v = map.next_value_seed(self)?;
                members.insert(name.into_owned(), v);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_named_members_at_any_depth() {
        let doc = br#"{"id":"a","skip":{"id":"deep"},"x":[{"id":1,"no":"text"},2.5,-3,null,true],"k\u0065y":"escaped"}"#;
        let v = from_slice(doc, |n| matches!(n, "id" | "x" | "key")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id":"a","x":[{"id":1},2.5,-3,null,true],"key":"escaped"})
        );
    }

    #[test]
    fn not_json_is_none() {
        let a = |n: &str| n == "a";
        assert_eq!(from_slice(b"{\"a\":", a), None);
        assert_eq!(from_slice(b"{} trailing", a), None);
        assert_eq!(from_slice(b"", a), None);
    }
}
