//! Reading ThreatQ's JSON defensively: both shapes of type, status, score and tags, `is_active` in all its
//! encodings, connector records, data collections and the three error body shapes.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, de};
use serde_json::Value;

use super::{ConnectorRecord, DataCollection, Error, FieldDef, Indicator, IndicatorRef};

/// A string, borrowed from the page when it holds no escape.
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> de::Visitor<'de> for StrVisitor {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        d.deserialize_str(StrVisitor).map(Str)
    }
}

/// A scalar ThreatQ may send as a string, a number or a boolean; kept as the text it was.
struct Text<'a>(Cow<'a, str>);

/// `"IP Address"` or `{"id": 15, "name": "IP Address", ...}`: types, statuses, tags, sources, adversaries.
enum Named<'a> {
    Plain(Cow<'a, str>),
    Object { name: Option<Cow<'a, str>> },
}

impl<'a> Named<'a> {
    fn into_name(self) -> Option<Cow<'a, str>> {
        match self {
            Named::Plain(s) => Some(s),
            Named::Object { name } => name,
        }
    }
}

/// `7`, `"6.50"` or `{"generated_score": "6.50", "manual_score": null}`.
enum Score<'a> {
    Plain(Text<'a>),
    Object { generated_score: Option<Text<'a>>, manual_score: Option<Text<'a>> },
}

impl<'a> Score<'a> {
    /// The manual score when an analyst set one, else the generated score.
    fn into_text(self) -> Option<Cow<'a, str>> {
        let set = |t: Option<Text<'a>>| t.map(|t| t.0).filter(|s| !s.trim().is_empty());
        match self {
            Score::Plain(t) => set(Some(t)),
            Score::Object { generated_score, manual_score } => set(manual_score).or_else(|| set(generated_score)),
        }
    }
}

/// The shapes above, read by hand rather than as `#[serde(untagged)]` enums: those buffer each value (and every
/// field of every tag, source and adversary object) before trying the shapes in turn, which was most of the cost
/// of decoding a page. What is accepted and refused is the same.
trait Shape<'de>: Sized {
    const EXPECTING: &'static str;
    /// A string (`quoted`) or a number or boolean, as text.
    fn scalar(text: Cow<'de, str>, quoted: bool) -> Option<Self>;
    /// An object, `None` if this shape has none.
    fn object<A: de::MapAccess<'de>>(map: A) -> Option<Result<Self, A::Error>>;
}

struct ShapeVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Shape<'de>> de::Visitor<'de> for ShapeVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(T::EXPECTING)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<T, E> {
        self.string(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        self.string(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<T, E> {
        self.string(Cow::Owned(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::scalar(serde_json::Number::from(v).to_string().into(), false)
            .ok_or_else(|| E::invalid_type(de::Unexpected::Unsigned(v), &self))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::scalar(serde_json::Number::from(v).to_string().into(), false)
            .ok_or_else(|| E::invalid_type(de::Unexpected::Signed(v), &self))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        serde_json::Number::from_f64(v)
            .and_then(|n| T::scalar(n.to_string().into(), false))
            .ok_or_else(|| E::invalid_type(de::Unexpected::Float(v), &self))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        T::scalar(v.to_string().into(), false).ok_or_else(|| E::invalid_type(de::Unexpected::Bool(v), &self))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::object(map).unwrap_or_else(|| Err(de::Error::invalid_type(de::Unexpected::Map, &self)))
    }
}

impl<'de, T: Shape<'de>> ShapeVisitor<T> {
    fn string<E: de::Error>(self, v: Cow<'de, str>) -> Result<T, E> {
        T::scalar(v, true).ok_or_else(|| E::invalid_type(de::Unexpected::Other("a string"), &self))
    }
}

/// Reads an object's fields named in `wanted` (each at most once) and skips the others.
fn fields<'de, A: de::MapAccess<'de>, V: Deserialize<'de>, const N: usize>(
    mut map: A,
    wanted: [&'static str; N],
) -> Result<[Option<V>; N], A::Error> {
    let mut values: [Option<Option<V>>; N] = std::array::from_fn(|_| None);
    while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
        match wanted.iter().position(|w| *w == key) {
            Some(i) if values[i].is_some() => return Err(de::Error::duplicate_field(wanted[i])),
            Some(i) => values[i] = Some(map.next_value()?),
            None => {
                map.next_value::<de::IgnoredAny>()?;
            }
        }
    }
    Ok(values.map(Option::flatten))
}

/// Reads the value of a field into its slot, refusing a field given twice.
fn put<'de, A: de::MapAccess<'de>, T: Deserialize<'de>>(
    map: &mut A,
    slot: &mut Option<T>,
    name: &'static str,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::duplicate_field(name));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

impl<'de> Shape<'de> for Text<'de> {
    const EXPECTING: &'static str = "a string, a number or a boolean";
    fn scalar(text: Cow<'de, str>, _: bool) -> Option<Self> {
        Some(Text(text))
    }
    fn object<A: de::MapAccess<'de>>(_: A) -> Option<Result<Self, A::Error>> {
        None
    }
}

impl<'de> Shape<'de> for Named<'de> {
    const EXPECTING: &'static str = "a name, or an object with a name";
    fn scalar(text: Cow<'de, str>, quoted: bool) -> Option<Self> {
        quoted.then_some(Named::Plain(text))
    }
    fn object<A: de::MapAccess<'de>>(map: A) -> Option<Result<Self, A::Error>> {
        Some(fields(map, ["name"]).map(|[name]: [Option<Str<'de>>; 1]| Named::Object { name: name.map(|n| n.0) }))
    }
}

impl<'de> Shape<'de> for Score<'de> {
    const EXPECTING: &'static str = "a score, or an object with generated_score and manual_score";
    fn scalar(text: Cow<'de, str>, _: bool) -> Option<Self> {
        Some(Score::Plain(Text(text)))
    }
    fn object<A: de::MapAccess<'de>>(map: A) -> Option<Result<Self, A::Error>> {
        Some(
            fields(map, ["generated_score", "manual_score"])
                .map(|[generated_score, manual_score]| Score::Object { generated_score, manual_score }),
        )
    }
}

macro_rules! deserialize_by_shape {
    ($($t:ident),*) => {$(
        impl<'de: 'a, 'a> Deserialize<'de> for $t<'a> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(ShapeVisitor::<$t<'de>>(std::marker::PhantomData))
            }
        }
    )*};
}
deserialize_by_shape!(Text, Named, Score);

/// Reads a list one element at a time as `R`, keeping what `keep` makes of each: no list of `R` in between.
fn kept<'de, D: Deserializer<'de>, R: Deserialize<'de>, T>(d: D, keep: fn(R) -> Option<T>) -> Result<Vec<T>, D::Error> {
    struct Kept<R, T>(fn(R) -> Option<T>);
    impl<'de, R: Deserialize<'de>, T> de::Visitor<'de> for Kept<R, T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list")
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut kept = Vec::new();
            while let Some(raw) = seq.next_element()? {
                kept.extend((self.0)(raw));
            }
            Ok(kept)
        }
    }
    d.deserialize_seq(Kept(keep))
}

/// Tags, sources or adversaries: the names given.
struct Names<'a>(Vec<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Names<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        kept(d, Named::<'de>::into_name).map(Names)
    }
}

/// An attribute's `(name, value)`, `None` if it has no name.
struct RawAttribute<'a>(Option<(Cow<'a, str>, Cow<'a, str>)>);

impl<'de: 'a, 'a> Deserialize<'de> for RawAttribute<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AttributeVisitor;
        impl<'de> de::Visitor<'de> for AttributeVisitor {
            type Value = RawAttribute<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an attribute")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<RawAttribute<'de>, A::Error> {
                let (mut name, mut value) = (None::<Option<Str>>, None::<Option<Text>>);
                while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
                    match &*key {
                        "name" => put(&mut map, &mut name, "name"),
                        "value" => put(&mut map, &mut value, "value"),
                        _ => map.next_value::<de::IgnoredAny>().map(drop),
                    }?;
                }
                let value = value.flatten().map(|v| v.0).unwrap_or_default();
                Ok(RawAttribute(name.flatten().map(|name| (name.0, value))))
            }
        }
        d.deserialize_map(AttributeVisitor)
    }
}

/// `(name, value)` of the attributes that have a name.
struct Attributes<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'de: 'a, 'a> Deserialize<'de> for Attributes<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        kept(d, |a: RawAttribute<'de>| a.0).map(Attributes)
    }
}

/// An indicator as ThreatQ sends it, read into its normalised form: either shape of type, status, score and tags;
/// `null` lists read as empty.
pub(super) struct RawIndicator<'a>(IndicatorRef<'a>);

impl<'de: 'a, 'a> Deserialize<'de> for RawIndicator<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(IndicatorVisitor).map(RawIndicator)
    }
}

struct IndicatorVisitor;

impl<'de> de::Visitor<'de> for IndicatorVisitor {
    type Value = IndicatorRef<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an indicator")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<IndicatorRef<'de>, A::Error> {
        let mut id = None;
        let (mut value, mut related_adversary_count) = (None::<Option<Text>>, None::<Option<Text>>);
        let (mut kind, mut status) = (None::<Option<Named>>, None::<Option<Named>>);
        let mut score = None::<Option<Score>>;
        let mut attributes = None::<Option<Attributes>>;
        let (mut adversaries, mut sources, mut tags) = (None::<Option<Names>>, None::<Option<Names>>, None);
        let [mut created_at, mut updated_at, mut expires_at, mut expired_at] = [const { None::<Option<Str>> }; 4];
        while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
            let m = &mut map;
            match &*key {
                "id" => put(m, &mut id, "id"),
                "value" => put(m, &mut value, "value"),
                "type" => put(m, &mut kind, "type"),
                "status" => put(m, &mut status, "status"),
                "score" => put(m, &mut score, "score"),
                "attributes" => put(m, &mut attributes, "attributes"),
                "adversaries" => put(m, &mut adversaries, "adversaries"),
                "related_adversary_count" => put(m, &mut related_adversary_count, "related_adversary_count"),
                "sources" => put(m, &mut sources, "sources"),
                "tags" => put(m, &mut tags, "tags"),
                "created_at" => put(m, &mut created_at, "created_at"),
                "updated_at" => put(m, &mut updated_at, "updated_at"),
                "expires_at" => put(m, &mut expires_at, "expires_at"),
                "expired_at" => put(m, &mut expired_at, "expired_at"),
                _ => m.next_value::<de::IgnoredAny>().map(drop),
            }?;
        }
        let id: u64 = id.ok_or_else(|| de::Error::missing_field("id"))?;
        let adversaries = adversaries.flatten();
        let adversaries_given = adversaries.is_some();
        let names = |list: Option<Names<'de>>| list.map(|n| n.0).unwrap_or_default();
        let adversaries = names(adversaries);
        // The count ThreatQ reports wins (it covers adversaries not embedded); otherwise count what came.
        let related_adversary_count = related_adversary_count
            .flatten()
            .and_then(|t| t.0.trim().parse::<u64>().ok())
            .or(adversaries_given.then_some(adversaries.len() as u64));
        let text = |s: Option<Option<Str<'de>>>| s.flatten().map(|s| s.0);
        Ok(Indicator {
            id,
            value: value.flatten().map(|t| t.0).unwrap_or_default(),
            type_name: kind.flatten().and_then(Named::into_name).unwrap_or_default(),
            status: status.flatten().and_then(Named::into_name).unwrap_or_default(),
            score: score.flatten().and_then(Score::into_text),
            attributes: attributes.flatten().map(|a| a.0).unwrap_or_default(),
            adversaries,
            related_adversary_count,
            sources: names(sources.flatten()),
            tags: names(tags.flatten()),
            created_at: text(created_at),
            updated_at: text(updated_at),
            expires_at: text(expires_at).or(text(expired_at)),
        })
    }
}

/// One indicator as ThreatQ's JSON gives it (either shape of type, status, score and tags).
pub fn indicator_from_json(value: Value) -> Result<Indicator, serde_json::Error> {
    RawIndicator::deserialize(&value).map(|raw| raw.0.into_owned())
}

/// A 2xx answer as read: what was asked for, or the message of the `errors` it carries instead.
#[derive(Debug, PartialEq)]
pub(super) enum Answer<T> {
    Value(T),
    Errors(String),
}

/// Reads a page of indicators from `body`, handing each to `each` as soon as it is read (nothing of the page is
/// kept here); returns the page's `total` as ThreatQ gave it, or the message of the `errors` it carries.
pub(super) fn page<'de>(
    body: &'de [u8],
    each: impl FnMut(IndicatorRef<'de>),
) -> Result<Answer<Option<u64>>, serde_json::Error> {
    fn read<'de, R: serde_json::de::Read<'de>>(
        mut reader: serde_json::Deserializer<R>,
        each: impl FnMut(IndicatorRef<'de>),
    ) -> Result<(Option<u64>, bool), serde_json::Error> {
        let read = de::DeserializeSeed::deserialize(PageSeed(each), &mut reader)?;
        reader.end()?;
        Ok(read)
    }
    let read = match std::str::from_utf8(body) {
        // Checked whole at once, the text needs no check string by string, which is much slower.
        Ok(text) => read(serde_json::Deserializer::from_str(text), each),
        // Bytes that are not UTF-8 may sit in a field skipped here: check only the strings kept, as before.
        Err(_) => read(serde_json::Deserializer::from_slice(body), each),
    };
    // The page's own keys tell whether it carries `errors`, without a scan of the whole page; an answer that is
    // not a page may still carry them.
    match read {
        Ok((_, true)) => Ok(Answer::Errors(error_message(body).unwrap_or_default())),
        Ok((total, false)) => Ok(Answer::Value(total)),
        Err(e) => errors_in_success(body).map(Answer::Errors).ok_or(e),
    }
}

/// `{"total": n, "data": [indicator, ...]}`, either part missing or `null`; with whether it has `errors`.
struct PageSeed<F>(F);

impl<'de, F: FnMut(IndicatorRef<'de>)> de::DeserializeSeed<'de> for PageSeed<F> {
    type Value = (Option<u64>, bool);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, F: FnMut(IndicatorRef<'de>)> de::Visitor<'de> for PageSeed<F> {
    type Value = (Option<u64>, bool);
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a page of indicators")
    }
    fn visit_map<A: de::MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut total, mut data, mut errors) = (None, false, false);
        while let Some(Str(key)) = map.next_key::<Str<'de>>()? {
            match &*key {
                "total" if total.is_some() => return Err(de::Error::duplicate_field("total")),
                "total" => total = Some(map.next_value::<Option<u64>>()?),
                "data" if data => return Err(de::Error::duplicate_field("data")),
                "data" => {
                    map.next_value_seed(Data(&mut self.0))?;
                    data = true;
                }
                key => {
                    errors |= key == "errors";
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok((total.flatten(), errors))
    }
}

/// The `data` list of a page, each indicator passed on as it is read.
struct Data<'f, F>(&'f mut F);

impl<'de, F: FnMut(IndicatorRef<'de>)> de::DeserializeSeed<'de> for Data<'_, F> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, F: FnMut(IndicatorRef<'de>)> de::Visitor<'de> for Data<'_, F> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of indicators")
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(RawIndicator(ioc)) = seq.next_element()? {
            (self.0)(ioc);
        }
        Ok(())
    }
}

/// Reads `is_active` however the instance encodes it; `None` for an encoding nobody documented.
pub fn parse_is_active(value: &Value) -> Option<bool> {
    match value {
        Value::Null => Some(false),
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_f64().map(|f| f != 0.0),
        Value::String(s) if s.trim().is_empty() => Some(false),
        Value::String(s) => crate::field::parse_bool(s),
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// The human part of an error body: `{"errors": [...]}`, `{"data": {"errors": {field: [...]}}}` or
/// `{"message": "..."}`.
pub(super) fn error_message(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    if let Some(errors) = value.get("errors") {
        return Some(flatten(errors, "; "));
    }
    if let Some(Value::Object(fields)) = value.get("data").and_then(|d| d.get("errors")) {
        let parts: Vec<String> =
            fields.iter().map(|(field, msgs)| format!("{field}: {}", flatten(msgs, ", "))).collect();
        return Some(parts.join("; "));
    }
    value.get("message").and_then(Value::as_str).map(str::to_owned)
}

/// The message of a 2xx body that carries an `errors` key; a cheap byte scan first, as pages are large.
pub(super) fn errors_in_success(body: &[u8]) -> Option<String> {
    memchr::memmem::find(body, b"\"errors\"")?;
    match serde_json::from_slice::<Value>(body).ok()? {
        Value::Object(map) if map.contains_key("errors") => error_message(body),
        _ => None,
    }
}

fn flatten(value: &Value, separator: &str) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(|v| flatten(v, " ")).collect::<Vec<_>>().join(separator),
        Value::Object(map) => {
            map.iter().map(|(k, v)| format!("{k}: {}", flatten(v, ", "))).collect::<Vec<_>>().join(separator)
        }
        other => other.to_string(),
    }
}

fn garbage(path: &str, detail: impl Into<String>) -> Error {
    Error::Garbage { path: path.to_owned(), detail: detail.into() }
}

fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A JSON value some instances send as a JSON-encoded string.
fn unstring(value: &Value) -> Option<Value> {
    match value {
        Value::String(s) => serde_json::from_str(s).ok(),
        other => Some(other.clone()),
    }
}

/// The `custom_fields` map: every value as text; `null` means "not set" and is left out.
fn custom_fields(value: &Value) -> BTreeMap<String, String> {
    match unstring(value) {
        Some(Value::Object(map)) => map.iter().filter_map(|(k, v)| Some((k.clone(), as_text(v)?))).collect(),
        // PHP sends an empty map as `[]`; anything else unreadable also means nothing configured yet.
        _ => BTreeMap::new(),
    }
}

pub(super) fn connector_record(path: &str, value: &Value) -> Result<ConnectorRecord, Error> {
    let id = value.get("id").and_then(as_u64).ok_or_else(|| garbage(path, "a connector without a numeric \"id\""))?;
    let text = |key: &str| value.get(key).and_then(as_text).unwrap_or_default();
    let raw_active = value.get("is_active").unwrap_or(&Value::Null);
    let is_active = parse_is_active(raw_active).unwrap_or_else(|| {
        tracing::warn!("ThreatQ connector {id}: unreadable is_active {raw_active}; treating the connector as off");
        false
    });
    // Fields stored in another shape are replaced by ours at registration, so unreadable means "differs".
    let user_fields = value
        .get("user_fields")
        .and_then(unstring)
        .and_then(|v| serde_json::from_value::<Vec<FieldDef>>(v).ok())
        .unwrap_or_default();
    Ok(ConnectorRecord {
        id,
        name: text("name"),
        display_name: text("display_name"),
        version: text("version"),
        is_active,
        custom_fields: value.get("custom_fields").map(custom_fields).unwrap_or_default(),
        user_fields,
        last_import_at: value.get("last_import_at").and_then(as_text),
        last_import_count: value.get("last_import_count").and_then(as_u64),
    })
}

pub(super) fn data_collection(path: &str, value: &Value) -> Result<DataCollection, Error> {
    let id = value.get("id").and_then(as_u64).ok_or_else(|| garbage(path, "a data collection without an \"id\""))?;
    let name = value.get("name").and_then(as_text).unwrap_or_default();
    let json = match value.get("json") {
        None | Some(Value::Null) => Value::Null,
        Some(raw) => unstring(raw).ok_or_else(|| {
            garbage(path, format!("data collection {name:?} holds a \"json\" string that is not JSON"))
        })?,
    };
    let query = json.get("api_query").cloned().unwrap_or(Value::Null);
    Ok(DataCollection {
        id,
        criteria: query.get("criteria").cloned().unwrap_or(Value::Null),
        filters: query.get("filters").cloned().unwrap_or(Value::Null),
        name,
    })
}

/// Up to three names close to `wanted`: containing it (or contained in it) case-insensitively, or within a
/// small edit distance; closest first.
pub(super) fn closest_names<'a>(wanted: &str, names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let wanted_lower = wanted.to_lowercase();
    let limit = (wanted.chars().count() / 3).max(3);
    let mut scored: Vec<(usize, String)> = names
        .filter_map(|name| {
            let lower = name.to_lowercase();
            let distance = strsim::levenshtein(&wanted_lower, &lower);
            let contains = !lower.is_empty() && (lower.contains(&wanted_lower) || wanted_lower.contains(&lower));
            (contains || distance <= limit).then(|| (if contains { 0 } else { distance }, name.to_owned()))
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(3).map(|(_, name)| name).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn indicator(value: Value) -> Indicator {
        indicator_from_json(value).expect("parses")
    }

    #[test]
    fn score_shapes() {
        let score = |s: Value| indicator(json!({"id": 1, "score": s})).score;
        assert_eq!(score(json!(7)), Some("7".into()));
        assert_eq!(score(json!("6.50")), Some("6.50".into()));
        assert_eq!(score(json!({"generated_score": "6.50", "manual_score": null})), Some("6.50".into()));
        assert_eq!(score(json!({"generated_score": "6.50", "manual_score": "9"})), Some("9".into()));
        assert_eq!(score(json!({"generated_score": "6.50", "manual_score": ""})), Some("6.50".into()));
        assert_eq!(score(json!({"generated_score": 3.25})), Some("3.25".into()));
        assert_eq!(score(json!(null)), None);
    }

    /// Read from the text as pages are, the shapes take what they took as untagged enums and refuse the rest.
    #[test]
    fn shapes_read_from_text_accept_and_refuse_as_before() {
        let parse = |json: &str| serde_json::from_str::<RawIndicator>(json).map(|r| r.0.into_owned());
        let ioc = parse(
            r#"{"id": 2, "value": 12.5, "type": {"id": 3, "name": "IP Address", "extra": {"name": 1}},
                "status": {"id": 1}, "score": {"generated_score": true, "other": [1, {}]},
                "tags": ["x", {"name": null}, {"name": "y\u00e9", "meta": null}], "related_adversary_count": "4"}"#,
        )
        .unwrap();
        assert_eq!((ioc.value.as_str(), ioc.type_name.as_str(), ioc.status.as_str()), ("12.5", "IP Address", ""));
        assert_eq!(
            (ioc.score.as_deref(), ioc.tags, ioc.related_adversary_count),
            (Some("true"), vec!["x".to_owned(), "yé".to_owned()], Some(4))
        );
        for refused in [
            r#"{"id": 1, "type": 5}"#,
            r#"{"id": 1, "type": {"name": 5}}"#,
            r#"{"id": 1, "tags": [{"name": "a", "name": "b"}]}"#,
            r#"{"id": 1, "value": {"v": 1}}"#,
            r#"{"id": 1, "score": {"manual_score": {}}}"#,
        ] {
            assert!(parse(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn type_status_tags_and_sources_in_both_shapes() {
        let objects = indicator(json!({
            "id": 1, "value": "a", "type": {"id": 15, "name": "IP Address"}, "status": {"id": 1, "name": "Active"},
            "tags": [{"name": "t1"}, {"id": 2, "name": "t2"}], "sources": [{"id": 3, "name": "Feed X"}],
        }));
        let strings = indicator(json!({
            "id": 1, "value": "a", "type": "IP Address", "status": "Active", "tags": ["t1", "t2"], "sources": ["Feed X"],
        }));
        assert_eq!(objects, strings);
        assert_eq!(objects.type_name, "IP Address");
        assert_eq!(objects.tags, vec!["t1", "t2"]);
    }

    #[test]
    fn attributes_repeat_and_adversaries_count() {
        let ioc = indicator(json!({
            "id": 5, "value": 12345,
            "attributes": [{"name": "Threat Type", "value": "Botnet"}, {"name": "Threat Type", "value": "C2"},
                           {"name": "Confidence", "value": 80}],
            "adversaries": [{"id": 29, "name": "APT 29"}], "expired_at": "2024-01-01 00:00:00", "tags": null,
        }));
        assert_eq!(ioc.value, "12345");
        assert_eq!(ioc.attribute("threat type").collect::<Vec<_>>(), vec!["Botnet", "C2"]);
        assert_eq!(ioc.attribute("Confidence").collect::<Vec<_>>(), vec!["80"]);
        assert_eq!(ioc.related_adversary_count, Some(1));
        assert_eq!(ioc.expires_at.as_deref(), Some("2024-01-01 00:00:00"));
        let counted = indicator(json!({"id": 5, "adversaries": [], "related_adversary_count": "4"}));
        assert_eq!(counted.related_adversary_count, Some(4));
        assert_eq!(indicator(json!({"id": 5})).related_adversary_count, None);
    }

    /// A page is read an indicator at a time, borrowing the text that holds no escape; `total` and `data` may
    /// come in any order, be `null` or be missing, and the page reads as a whole object or not at all.
    #[test]
    fn pages_hand_over_each_indicator_as_it_is_read() {
        let read = |body: &str| {
            let mut seen = Vec::new();
            page(body.as_bytes(), |ioc| {
                seen.push((matches!(ioc.value, Cow::Borrowed(_)), ioc.into_owned()));
            })
            .map(|total| (total, seen))
        };
        let (total, seen) =
            read(r#"{"data": [{"id": 1, "value": "a.b", "tags": ["t"]}, {"id": 2, "value": "\u0061"}], "total": 9}"#)
                .unwrap();
        assert_eq!(total, Answer::Value(Some(9)));
        let borrowed: Vec<(bool, &str)> = seen.iter().map(|(b, ioc)| (*b, ioc.value.as_str())).collect();
        assert_eq!(borrowed, [(true, "a.b"), (false, "a")]);
        assert_eq!(seen[0].1, indicator(json!({"id": 1, "value": "a.b", "tags": ["t"]})));
        for empty in [r#"{"total": 0, "data": null}"#, r#"{"total": null}"#, "{}"] {
            assert!(read(empty).unwrap().1.is_empty(), "{empty}");
        }
        let skipped = page(b"{\"data\": [{\"id\": 1, \"note\": \"\xff\"}]}", |ioc| assert_eq!(ioc.id, 1));
        assert_eq!(skipped.unwrap(), Answer::Value(None), "bytes not UTF-8 in a field not read");
        // What a scan of the whole answer for `errors` found, the page's own keys tell.
        let errors = |body: &str| page(body.as_bytes(), |_| {}).unwrap();
        assert_eq!(errors(r#"{"total": 1, "data": [{"id": 1, "value": "\"errors\""}]}"#), Answer::Value(Some(1)));
        for carrying in [r#"{"errors": ["Search failed"]}"#, r#"{"data": [], "errors": ["Search failed"]}"#] {
            assert_eq!(errors(carrying), Answer::Errors("Search failed".into()), "{carrying}");
        }
        let not_a_page = r#"{"errors": {"filter": ["bad"]}, "data": [{"value": "no id"}]}"#;
        assert_eq!(errors(not_a_page), Answer::Errors("filter: bad".into()));
        assert!(page(b"{\"data\": [{\"id\": 1, \"value\": \"\xff\"}]}", |_| {}).is_err());
        for refused in [r#"{"data": [], "data": []}"#, r#"{"data": [{"value": "x"}]}"#, r#"{"data": []} x"#, "[]"] {
            assert!(read(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn is_active_encodings() {
        for on in [json!(true), json!(1), json!("Y"), json!("true"), json!("1"), json!("yes")] {
            assert_eq!(parse_is_active(&on), Some(true), "{on}");
        }
        for off in [json!(false), json!(0), json!("N"), json!("false"), json!("0"), json!(""), json!(null)] {
            assert_eq!(parse_is_active(&off), Some(false), "{off}");
        }
        assert_eq!(parse_is_active(&json!("maybe")), None);
    }

    #[test]
    fn error_body_shapes() {
        let msg = |v: Value| error_message(v.to_string().as_bytes());
        assert_eq!(msg(json!({"errors": ["Bad filter", ["part", "two"]]})), Some("Bad filter; part two".into()));
        assert_eq!(
            msg(json!({"data": {"errors": {"name": ["The name has already been taken."]}}})),
            Some("name: The name has already been taken.".into())
        );
        assert_eq!(msg(json!({"message": "Unauthenticated."})), Some("Unauthenticated.".into()));
        assert_eq!(error_message(b"<html>"), None);
        assert_eq!(errors_in_success(br#"{"total": 1, "data": [{"value": "\"errors\""}]}"#), None);
        assert_eq!(errors_in_success(br#"{"errors": ["Search failed"]}"#), Some("Search failed".into()));
    }

    #[test]
    fn custom_fields_values_become_text() {
        let record = connector_record(
            "/api/connectors",
            &json!({"id": "7", "name": "x", "is_active": "Y",
                    "custom_fields": {"batch_size": 500, "dry": true, "name": "a", "unset": null}}),
        )
        .expect("parses");
        assert_eq!(record.id, 7);
        assert!(record.is_active);
        let fields: Vec<(&str, &str)> = record.custom_fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(fields, vec![("batch_size", "500"), ("dry", "true"), ("name", "a")]);
        let empty = connector_record("/api/connectors", &json!({"id": 1, "custom_fields": []})).expect("parses");
        assert!(empty.custom_fields.is_empty());
    }

    #[test]
    fn collection_json_as_object_or_string() {
        let query = json!({"api_query": {"criteria": {"+and": [{"type_name": "FQDN"}]}, "filters": null}});
        let object = data_collection("/api/search/query", &json!({"id": 1, "name": "c", "json": query})).unwrap();
        let string =
            data_collection("/api/search/query", &json!({"id": 1, "name": "c", "json": query.to_string()})).unwrap();
        assert_eq!(object, string);
        assert_eq!(object.criteria, json!({"+and": [{"type_name": "FQDN"}]}));
        let bad = data_collection("/api/search/query", &json!({"id": 1, "name": "c", "json": "{nope"}));
        assert!(matches!(bad, Err(Error::Garbage { .. })));
    }

    #[test]
    fn closest_names_by_containment_and_distance() {
        let names = ["High Score FQDNs", "Phishing URLs", "high score ips", "Everything", "Hi Score FQDN"];
        assert_eq!(
            closest_names("High Score FQDN", names.iter().copied()),
            vec!["High Score FQDNs", "Hi Score FQDN", "high score ips"]
        );
        assert!(closest_names("zzzzzzzzzzzz", names.iter().copied()).is_empty());
    }
}
