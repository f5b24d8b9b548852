//! Field masks: values a role may see only disguised, replaced in every row that leaves the
//! runtime (REST bodies, MCP results), nested rows of embedded tables included.
//!
//! Masks are applied to the JSON rows the database rendered, after execution and before any
//! transport shapes a response, so every transport returns the same masked values. Rows of a
//! role without masks are passed through untouched: the JSON is only parsed when a mask applies.
//!
//! A masked value is never a function of anything but the value: `hash` gives the same digest
//! for equal values (so masked columns can still be grouped or joined on by clients), which also
//! means a low-entropy value (a year, a short code) can be found by hashing candidates. Use
//! `null` or `fixed` where that matters.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sluice_crds::apirole::{FieldMask, MaskStrategy};

use crate::error::ApiError;
use crate::rows::Rows;

/// Which output keys of a row are masked, and how; nested for embedded rows, whose number a
/// role's `maxRows` on the embedded table caps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MaskTree {
    entries: Vec<(String, MaskNode)>,
}

#[derive(Clone, Debug, PartialEq)]
enum MaskNode {
    Value(FieldMask),
    Embedded { inner: MaskTree, max_rows: Option<usize> },
}

impl MaskTree {
    /// Masks the value under output key `key`.
    pub fn mask(&mut self, key: impl Into<String>, mask: FieldMask) {
        self.entries.push((key.into(), MaskNode::Value(mask)));
    }

    /// Masks inside the embedded row or rows under output key `key`, and keeps at most
    /// `max_rows` of them.
    pub fn embed(&mut self, key: impl Into<String>, inner: MaskTree, max_rows: Option<u64>) {
        if !inner.is_empty() || max_rows.is_some() {
            let max_rows = max_rows.map(|cap| usize::try_from(cap).unwrap_or(usize::MAX));
            self.entries.push((key.into(), MaskNode::Embedded { inner, max_rows }));
        }
    }

    /// Whether nothing is masked or capped.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn node(&self, key: &str) -> Option<&MaskNode> {
        self.entries.iter().find(|(name, _)| name == key).map(|(_, node)| node)
    }

    /// Masks every row, each one JSON object text as the database rendered it. Only masked
    /// values are parsed: every other value keeps the database's text (a decimal its digits, a
    /// JSON document however deeply it nests), and keys keep their order.
    pub fn apply(&self, rows: &mut Rows) -> Result<(), ApiError> {
        rows.rewrite(|row| {
            self.rewrite_object(row).map_err(|error| {
                tracing::error!(%error, "the database rendered a row that is not JSON");
                ApiError::Internal
            })
        })
    }

    /// One row object's text, masked.
    fn rewrite_object(&self, text: &str) -> Result<String, serde_json::Error> {
        let Members(members) = serde_json::from_str(text)?;
        let mut out = String::with_capacity(text.len());
        out.push('{');
        for (index, (key, raw)) in members.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(key)?);
            out.push(':');
            match self.node(key) {
                None => out.push_str(raw.get()),
                Some(MaskNode::Value(mask)) => out.push_str(&masked_text(mask, raw)?),
                Some(MaskNode::Embedded { inner, max_rows }) => out.push_str(&inner.rewrite_embedded(raw, *max_rows)?),
            }
        }
        out.push('}');
        Ok(out)
    }

    /// An embedded row (an object), or embedded rows (an array, cut to `max_rows`), masked.
    fn rewrite_embedded(&self, raw: &RawValue, max_rows: Option<usize>) -> Result<String, serde_json::Error> {
        let text = raw.get();
        match text.trim_start().as_bytes().first() {
            Some(b'{') => self.rewrite_object(text),
            Some(b'[') => {
                let items: Vec<&RawValue> = serde_json::from_str(text)?;
                let mut out = String::with_capacity(text.len());
                out.push('[');
                for (index, item) in items.iter().take(max_rows.unwrap_or(usize::MAX)).enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    match item.get().trim_start().as_bytes().first() {
                        Some(b'{') => out.push_str(&self.rewrite_object(item.get())?),
                        _ => out.push_str(item.get()),
                    }
                }
                out.push(']');
                Ok(out)
            }
            _ => Ok(text.to_owned()),
        }
    }

    /// Masks one row (an object) or the rows of an embedded array, parsed.
    pub fn apply_to(&self, value: &mut Value) {
        match value {
            Value::Object(object) => self.apply_to_object(object),
            Value::Array(rows) => rows.iter_mut().for_each(|row| self.apply_to(row)),
            _ => {}
        }
    }

    fn apply_to_object(&self, object: &mut Map<String, Value>) {
        for (key, node) in &self.entries {
            let Some(value) = object.get_mut(key) else { continue };
            match node {
                MaskNode::Value(mask) => *value = masked(mask, value),
                MaskNode::Embedded { inner, max_rows } => {
                    if let (Value::Array(rows), Some(cap)) = (&mut *value, max_rows) {
                        rows.truncate(*cap);
                    }
                    inner.apply_to(value);
                }
            }
        }
    }
}

/// A JSON object's members in their order, values unparsed.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;

            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

/// [`masked`] for a value as the database wrote it: numbers are masked by their exact text.
fn masked_text(mask: &FieldMask, raw: &RawValue) -> Result<String, serde_json::Error> {
    let text = raw.get().trim();
    let value = if text.starts_with('"') {
        let string: String = serde_json::from_str(text)?;
        masked_as(mask, Some(&string))
    } else if text == "null" {
        masked_as(mask, None)
    } else {
        masked_as(mask, Some(text))
    };
    serde_json::to_string(&value)
}

/// The value `mask` shows instead of `value`. NULL stays NULL except for `fixed`, which always
/// shows its text, so a fixed mask does not even tell whether a value exists.
pub fn masked(mask: &FieldMask, value: &Value) -> Value {
    match value {
        Value::Null => masked_as(mask, None),
        Value::String(text) => masked_as(mask, Some(text)),
        other => masked_as(mask, Some(&other.to_string())),
    }
}

/// [`masked`] for a value given as its text (a string's contents, another scalar's JSON), or
/// `None` for NULL.
fn masked_as(mask: &FieldMask, text: Option<&str>) -> Value {
    match (mask.strategy, text) {
        (MaskStrategy::Fixed, _) => Value::String(mask.with.clone().unwrap_or_default()),
        (_, None) | (MaskStrategy::Null, _) => Value::Null,
        (MaskStrategy::Hash, Some(text)) => Value::String(hex::encode(Sha256::digest(text.as_bytes()))),
        (MaskStrategy::KeepLast, Some(text)) => Value::String(keep_last(text, mask.keep_last.unwrap_or(0) as usize)),
    }
}

/// All but the last `kept` characters replaced by `*`; a value no longer than `kept` is masked
/// whole, since keeping all of it would hide nothing.
fn keep_last(text: &str, kept: usize) -> String {
    let length = text.chars().count();
    if length <= kept {
        return "*".repeat(length);
    }
    text.chars()
        .enumerate()
        .map(|(index, c)| if index < length - kept { '*' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn mask(strategy: MaskStrategy, with: Option<&str>, keep_last: Option<u32>) -> FieldMask {
        FieldMask {
            field: "f".into(),
            strategy,
            with: with.map(str::to_owned),
            keep_last,
        }
    }

    #[test]
    fn strategies() {
        let fixed = mask(MaskStrategy::Fixed, Some("***"), None);
        assert_eq!(masked(&fixed, &json!("secret")), json!("***"));
        assert_eq!(masked(&fixed, &Value::Null), json!("***"));
        assert_eq!(masked(&mask(MaskStrategy::Null, None, None), &json!(42)), Value::Null);
        let hash = mask(MaskStrategy::Hash, None, None);
        assert_eq!(
            masked(&hash, &json!("abc")),
            json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(masked(&hash, &json!("abc")), masked(&hash, &json!("abc")));
        assert_eq!(masked(&hash, &Value::Null), Value::Null);
        let last4 = mask(MaskStrategy::KeepLast, None, Some(4));
        assert_eq!(masked(&last4, &json!("+44 20 7946 0958")), json!("************0958"));
        assert_eq!(masked(&last4, &json!(1234567)), json!("***4567"));
        assert_eq!(
            masked(&last4, &json!("abc")),
            json!("***"),
            "short values are masked whole"
        );
        assert_eq!(masked(&last4, &json!("ééééé")), json!("*éééé"), "characters, not bytes");
    }

    #[test]
    fn trees_mask_renamed_keys_and_embedded_rows_only() {
        let mut orders = MaskTree::default();
        orders.mask("note", mask(MaskStrategy::Null, None, None));
        let mut tree = MaskTree::default();
        tree.mask("mail", mask(MaskStrategy::Fixed, Some("hidden"), None));
        tree.embed("orders", orders, None);
        tree.embed("unmasked", MaskTree::default(), None);
        let mut rows: Rows = [
            json!({"id": 1, "mail": "a@b.c", "orders": [{"id": 10, "note": "gift"}, {"id": 11, "note": null}]})
                .to_string(),
            json!({"id": 2, "mail": null, "orders": []}).to_string(),
        ]
        .into_iter()
        .collect();
        tree.apply(&mut rows).expect("rows are JSON");
        let rows: Vec<Value> = rows.iter().map(|r| serde_json::from_str(r).expect("json")).collect();
        assert_eq!(
            rows,
            [
                json!({"id": 1, "mail": "hidden", "orders": [{"id": 10, "note": null}, {"id": 11, "note": null}]}),
                json!({"id": 2, "mail": "hidden", "orders": []}),
            ]
        );
        let mut to_one = json!({"customer": {"mail": "x"}});
        let mut customer = MaskTree::default();
        customer.mask("mail", mask(MaskStrategy::Null, None, None));
        let mut tree = MaskTree::default();
        tree.embed("customer", customer, None);
        tree.apply_to(&mut to_one);
        assert_eq!(to_one, json!({"customer": {"mail": null}}));
    }

    #[test]
    fn rows_keep_the_databases_text_except_where_masked_and_embeds_are_capped() {
        let mut orders = MaskTree::default();
        orders.mask("total", mask(MaskStrategy::KeepLast, None, Some(2)));
        let mut tree = MaskTree::default();
        tree.mask("balance", mask(MaskStrategy::Hash, None, None));
        tree.embed("orders", orders, Some(2));
        let deep = format!("{}1{}", "[".repeat(900), "]".repeat(900));
        let row = format!(
            r#"{{"z": 37.00, "balance": 1250.50, "doc": {deep}, "orders": [{{"total": 99.90}}, {{"total": 15.00}}, {{"total": 1.00}}]}}"#
        );
        let mut rows: Rows = [row].into_iter().collect();
        tree.apply(&mut rows).expect("rows are JSON");
        let expected = format!(
            r#"{{"z":37.00,"balance":"{}","doc":{deep},"orders":[{{"total":"***90"}},{{"total":"***00"}}]}}"#,
            hex::encode(Sha256::digest(b"1250.50"))
        );
        assert_eq!(rows.first(), Some(expected.as_str()));
    }
}
