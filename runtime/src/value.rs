//! Client values (query-string text or JSON body values) checked against a column's kind and
//! turned into bind parameters. A value that cannot fit is a 400 naming the column.

use base64::Engine as _;
use serde_json::value::RawValue;

use crate::error::ApiError;
use crate::schema::{Column, ValueKind};
use crate::sql::BindValue;

fn wrong(column: &Column, got: &str) -> ApiError {
    let mut shown: String = got.chars().take(40).collect();
    if shown.len() < got.len() {
        shown.push('…');
    }
    ApiError::WrongType {
        column: column.name.clone(),
        expected: column.kind.describe(),
        got: format!("\"{shown}\""),
    }
}

fn is_decimal(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let (fraction, exponent) = match fraction.split_once(['e', 'E']) {
        Some((fraction, exponent)) => (fraction, Some(exponent)),
        None => (fraction, None),
    };
    let all_digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    !(whole.is_empty() && fraction.is_empty())
        && all_digits(whole)
        && all_digits(fraction)
        && exponent.is_none_or(|e| !e.is_empty() && all_digits(e.strip_prefix(['-', '+']).unwrap_or(e)))
}

/// A value written in a URL (filter or primary key) for `column`.
pub fn from_text(column: &Column, text: &str) -> Result<BindValue, ApiError> {
    Ok(match column.kind {
        ValueKind::Integer => BindValue::Integer(text.parse().map_err(|_| wrong(column, text))?),
        ValueKind::Float => BindValue::Float(text.parse().map_err(|_| wrong(column, text))?),
        ValueKind::Decimal if is_decimal(text) => BindValue::Text(text.to_owned()),
        ValueKind::Decimal => return Err(wrong(column, text)),
        ValueKind::Boolean => BindValue::Boolean(match text.to_ascii_lowercase().as_str() {
            "true" | "t" | "1" => true,
            "false" | "f" | "0" => false,
            _ => return Err(wrong(column, text)),
        }),
        ValueKind::Binary => BindValue::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| wrong(column, text))?,
        ),
        _ => BindValue::Text(text.to_owned()),
    })
}

/// A value from a JSON body for `column`. Decimals keep the exact digits the client sent.
pub fn from_json(column: &Column, raw: &RawValue) -> Result<BindValue, ApiError> {
    let text = raw.get();
    if column.kind == ValueKind::Json {
        return Ok(if text == "null" {
            BindValue::Null
        } else {
            BindValue::Text(text.to_owned())
        });
    }
    if column.kind == ValueKind::Array {
        return match serde_json::from_str(text).map_err(|_| wrong(column, text))? {
            serde_json::Value::Null => Ok(BindValue::Null),
            serde_json::Value::Array(items) => Ok(BindValue::Text(postgres_array_literal(&items))),
            // A string is taken as an array literal already, e.g. "{1,2}".
            serde_json::Value::String(literal) => Ok(BindValue::Text(literal)),
            _ => Err(wrong(column, text)),
        };
    }
    if column.kind == ValueKind::Decimal && is_decimal(text) {
        return Ok(BindValue::Text(text.to_owned()));
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|_| wrong(column, text))?;
    Ok(match (&value, column.kind) {
        (serde_json::Value::Null, _) => BindValue::Null,
        (serde_json::Value::Number(number), ValueKind::Integer) => {
            BindValue::Integer(number.as_i64().ok_or_else(|| wrong(column, text))?)
        }
        (serde_json::Value::Number(number), ValueKind::Float) => {
            BindValue::Float(number.as_f64().ok_or_else(|| wrong(column, text))?)
        }
        (serde_json::Value::Bool(flag), ValueKind::Boolean) => BindValue::Boolean(*flag),
        (serde_json::Value::String(inner), _) => match column.kind {
            ValueKind::Text | ValueKind::Date | ValueKind::Time | ValueKind::Uuid => BindValue::Text(inner.clone()),
            ValueKind::Timestamp | ValueKind::TimestampTz => BindValue::Text(inner.clone()),
            _ => from_text(column, inner)?,
        },
        _ => return Err(wrong(column, text)),
    })
}

/// A JSON array as PostgreSQL array input (`{1,"a b",NULL,{2,3}}`), which the bound text is
/// cast from. Strings are quoted and escaped; nested arrays become nested braces.
fn postgres_array_literal(items: &[serde_json::Value]) -> String {
    let elements: Vec<String> = items
        .iter()
        .map(|item| match item {
            serde_json::Value::Null => "NULL".to_owned(),
            serde_json::Value::Array(inner) => postgres_array_literal(inner),
            serde_json::Value::String(text) => quote_array_element(text),
            serde_json::Value::Object(_) => quote_array_element(&item.to_string()),
            other => other.to_string(),
        })
        .collect();
    format!("{{{}}}", elements.join(","))
}

fn quote_array_element(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Timestamps are stored as `YYYY-MM-DD HH:MM:SS[.f]`, in UTC when an offset is given: MySQL
/// and MariaDB do not read RFC 3339 offsets, and SQLite compares timestamps as text, so one
/// spelling keeps its ordering and filters right.
pub fn normalise_timestamp(column: &Column, value: BindValue) -> BindValue {
    let BindValue::Text(text) = &value else { return value };
    if !matches!(column.kind, ValueKind::Timestamp | ValueKind::TimestampTz) {
        return value;
    }
    if let Ok(moment) = chrono::DateTime::parse_from_rfc3339(text) {
        return BindValue::Text(
            moment
                .with_timezone(&chrono::Utc)
                .format("%Y-%m-%d %H:%M:%S%.f")
                .to_string(),
        );
    }
    match chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f") {
        Ok(naive) => BindValue::Text(naive.format("%Y-%m-%d %H:%M:%S%.f").to_string()),
        Err(_) => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(kind: ValueKind) -> Column {
        Column {
            name: "c".into(),
            db_type: "t".into(),
            cast_type: String::new(),
            kind,
            nullable: true,
            default: None,
            generated: false,
        }
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).expect("valid JSON")
    }

    #[test]
    fn decimals_keep_every_digit() {
        let decimal = column(ValueKind::Decimal);
        assert_eq!(
            from_json(&decimal, &raw("12345678901234567890.125")).ok(),
            Some(BindValue::Text("12345678901234567890.125".into()))
        );
        assert_eq!(
            from_json(&decimal, &raw("\"0.10\"")).ok(),
            Some(BindValue::Text("0.10".into()))
        );
        assert!(from_json(&decimal, &raw("\"1; DROP TABLE x\"")).is_err());
    }

    #[test]
    fn wrong_types_name_the_column() {
        let error = from_text(&column(ValueKind::Integer), "abc").expect_err("rejected");
        assert!(error.to_string().contains("column \"c\" expects an integer"));
        assert!(from_json(&column(ValueKind::Boolean), &raw("\"yes\"")).is_err());
        assert!(from_json(&column(ValueKind::Integer), &raw("1.5")).is_err());
        assert!(from_json(&column(ValueKind::Text), &raw("{}")).is_err());
    }

    #[test]
    fn json_columns_take_any_value() {
        assert_eq!(
            from_json(&column(ValueKind::Json), &raw("{\"a\":[1]}")).ok(),
            Some(BindValue::Text("{\"a\":[1]}".into()))
        );
    }

    #[test]
    fn json_arrays_become_postgres_array_literals() {
        let array = column(ValueKind::Array);
        let value = from_json(&array, &raw(r#"[1, "a \"b\"", null, [2, 3], "x\\y"]"#)).expect("an array");
        assert_eq!(value, BindValue::Text(r#"{1,"a \"b\"",NULL,{2,3},"x\\y"}"#.into()));
        assert!(from_json(&array, &raw("5")).is_err());
    }

    #[test]
    fn timestamps_are_stored_in_one_spelling() {
        let timestamp = column(ValueKind::Timestamp);
        let value = normalise_timestamp(&timestamp, BindValue::Text("2024-01-02T03:04:05+02:00".into()));
        assert_eq!(value, BindValue::Text("2024-01-02 01:04:05".into()));
        let value = normalise_timestamp(&timestamp, BindValue::Text("2024-01-02T03:04:05.5".into()));
        assert_eq!(value, BindValue::Text("2024-01-02 03:04:05.500".into()));
        let date = BindValue::Text("2024-01-02".into());
        assert_eq!(normalise_timestamp(&column(ValueKind::Date), date.clone()), date);
    }
}
