//! The saved-search filter language the stand-in evaluates: `+and`, `+or`, `type_name`, `status_name`,
//! `score` and `updated_at`/`created_at` with `+gt +gte +lt +lte`, `value` (exact or `+contains`). Compiled once
//! per request, then evaluated per indicator while paging.

use serde_json::{Map, Value};

#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    All(Vec<Filter>),
    Any(Vec<Filter>),
    TypeName(Vec<String>),
    StatusName(Vec<String>),
    Score(Op, f64),
    Value(Match),
    /// A timestamp field (`updated_at`, `created_at`), compared as text: the fixed format sorts as time does.
    Time(String, Op, String),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    Eq,
    Gt,
    Gte,
    Lt,
    Lte,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Match {
    Equals(String),
    Contains(String),
}

impl Op {
    fn parse(key: &str) -> Result<Op, String> {
        match key {
            "+eq" | "+equals" => Ok(Op::Eq),
            "+gt" => Ok(Op::Gt),
            "+gte" => Ok(Op::Gte),
            "+lt" => Ok(Op::Lt),
            "+lte" => Ok(Op::Lte),
            other => Err(format!("unsupported comparison {other:?}")),
        }
    }

    fn holds<T: PartialOrd>(self, left: &T, right: &T) -> bool {
        match self {
            Op::Eq => left == right,
            Op::Gt => left > right,
            Op::Gte => left >= right,
            Op::Lt => left < right,
            Op::Lte => left <= right,
        }
    }
}

impl Filter {
    /// Everything: `null`, `{}` and `[]` filter nothing.
    pub const EVERYTHING: Filter = Filter::All(Vec::new());

    pub fn is_everything(&self) -> bool {
        matches!(self, Filter::All(parts) if parts.is_empty())
    }

    /// The `criteria` and `filters` of a query, both of which must hold.
    pub fn compile_query(criteria: &Value, filters: &Value) -> Result<Filter, String> {
        let parts: Vec<Filter> =
            [compile(criteria)?, compile(filters)?].into_iter().filter(|f| !f.is_everything()).collect();
        Ok(if parts.len() == 1 { parts.into_iter().next().unwrap_or(Filter::EVERYTHING) } else { Filter::All(parts) })
    }

    pub fn matches(&self, ioc: &Value) -> bool {
        match self {
            Filter::All(parts) => parts.iter().all(|p| p.matches(ioc)),
            Filter::Any(parts) => parts.iter().any(|p| p.matches(ioc)),
            Filter::TypeName(names) => {
                name_of(&ioc["type"]).is_some_and(|n| names.iter().any(|w| w.eq_ignore_ascii_case(n)))
            }
            Filter::StatusName(names) => {
                name_of(&ioc["status"]).is_some_and(|n| names.iter().any(|w| w.eq_ignore_ascii_case(n)))
            }
            Filter::Score(op, wanted) => score_of(&ioc["score"]).is_some_and(|s| op.holds(&s, wanted)),
            Filter::Value(Match::Equals(wanted)) => ioc["value"].as_str() == Some(wanted.as_str()),
            Filter::Value(Match::Contains(part)) => ioc["value"].as_str().is_some_and(|v| v.contains(part.as_str())),
            Filter::Time(field, op, wanted) => {
                ioc.get(field).and_then(Value::as_str).is_some_and(|t| op.holds(&t, &wanted.as_str()))
            }
        }
    }
}

fn name_of(value: &Value) -> Option<&str> {
    value.as_str().or_else(|| value.get("name").and_then(Value::as_str))
}

/// The score a filter compares: the plain number, or the manual score if set, else the generated one.
fn score_of(value: &Value) -> Option<f64> {
    match value {
        Value::Object(map) => {
            map.get("manual_score").and_then(number).or_else(|| map.get("generated_score").and_then(number))
        }
        other => number(other),
    }
}

/// A score as ThreatQ writes it: a number, or a number in text (`"6.50"`).
fn number(value: &Value) -> Option<f64> {
    value.as_f64().or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
}

pub fn compile(value: &Value) -> Result<Filter, String> {
    match value {
        Value::Null => Ok(Filter::EVERYTHING),
        Value::Array(items) => Ok(Filter::All(items.iter().map(compile).collect::<Result<_, _>>()?)),
        Value::Object(map) => compile_object(map),
        other => Err(format!("a filter must be an object or a list, not {other}")),
    }
}

fn compile_object(map: &Map<String, Value>) -> Result<Filter, String> {
    let mut parts = Vec::new();
    for (key, value) in map {
        match key.as_str() {
            "+and" => parts.push(Filter::All(list(value)?)),
            "+or" => parts.push(Filter::Any(list(value)?)),
            "type_name" => parts.push(Filter::TypeName(names(key, value)?)),
            "status_name" => parts.push(Filter::StatusName(names(key, value)?)),
            "score" => {
                parts.extend(comparisons(key, value, number)?.into_iter().map(|(op, n)| Filter::Score(op, n)));
            }
            "updated_at" | "created_at" => {
                let text = |v: &Value| v.as_str().map(str::to_owned);
                let compared = comparisons(key, value, text)?;
                parts.extend(compared.into_iter().map(|(op, t)| Filter::Time(key.clone(), op, t)));
            }
            "value" => parts.push(Filter::Value(match value {
                Value::String(s) => Match::Equals(s.clone()),
                Value::Object(m) => match (m.get("+contains"), m.get("+equals")) {
                    (Some(Value::String(s)), None) => Match::Contains(s.clone()),
                    (None, Some(Value::String(s))) => Match::Equals(s.clone()),
                    _ => return Err(format!("value: expected {{\"+contains\": text}}, got {value}")),
                },
                other => return Err(format!("value: expected text, got {other}")),
            })),
            other => return Err(format!("unsupported filter key {other:?}")),
        }
    }
    Ok(if parts.len() == 1 { parts.pop().unwrap_or(Filter::EVERYTHING) } else { Filter::All(parts) })
}

fn list(value: &Value) -> Result<Vec<Filter>, String> {
    match value {
        Value::Array(items) => items.iter().map(compile).collect(),
        other => Ok(vec![compile(other)?]),
    }
}

fn names(key: &str, value: &Value) -> Result<Vec<String>, String> {
    let one = |v: &Value| v.as_str().map(str::to_owned).ok_or_else(|| format!("{key}: expected text, got {v}"));
    match value {
        Value::Array(items) => items.iter().map(one).collect(),
        other => Ok(vec![one(other)?]),
    }
}

/// `5` (equality) or `{"+gte": 5, "+lt": 9}` (every comparison must hold).
fn comparisons<T>(key: &str, value: &Value, read: impl Fn(&Value) -> Option<T>) -> Result<Vec<(Op, T)>, String> {
    let bad = |v: &Value| format!("{key}: cannot compare with {v}");
    match value {
        Value::Object(map) => map.iter().map(|(op, v)| Ok((Op::parse(op)?, read(v).ok_or_else(|| bad(v))?))).collect(),
        other => Ok(vec![(Op::Eq, read(other).ok_or_else(|| bad(other))?)]),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn evaluates_the_language() {
        let ioc = json!({"value": "evil.example.com", "type": {"name": "FQDN"}, "status": "Active",
                         "score": {"generated_score": "6.50", "manual_score": null}, "updated_at": "2024-05-01 10:00:00"});
        let holds = |f: Value| compile(&f).expect("compiles").matches(&ioc);
        assert!(holds(json!({"+and": [{"type_name": "FQDN"}, {"status_name": "Active"}]})));
        assert!(holds(json!({"+or": [{"type_name": "URL"}, {"score": {"+gte": 6}}]})));
        assert!(!holds(json!({"score": {"+gt": 6.5}})));
        assert!(holds(json!({"score": {"+gte": 6, "+lt": 7}})));
        assert!(holds(json!({"value": {"+contains": "evil"}})));
        assert!(!holds(json!({"value": "evil"})));
        assert!(holds(json!({"updated_at": {"+gt": "2024-04-30 23:59:59"}})));
        assert!(!holds(json!({"updated_at": {"+lte": "2024-04-30 23:59:59"}})));
        assert!(holds(json!({"type_name": ["IP Address", "FQDN"]})));
        assert!(holds(json!(null)) && holds(json!({})));
        assert!(compile(&json!({"colour": "red"})).is_err());
    }

    #[test]
    fn manual_score_wins() {
        let ioc = json!({"score": {"generated_score": "2.00", "manual_score": "9"}});
        assert!(compile(&json!({"score": {"+gte": 9}})).unwrap().matches(&ioc));
    }
}
