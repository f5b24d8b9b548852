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

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sluice_crds::apirole::{FieldMask, MaskStrategy};

use crate::error::ApiError;
use crate::rows::Rows;

/// Which output keys of a row are masked, and how; nested for embedded rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MaskTree {
    entries: Vec<(String, MaskNode)>,
}

#[derive(Clone, Debug, PartialEq)]
enum MaskNode {
    Value(FieldMask),
    Embedded(MaskTree),
}

impl MaskTree {
    /// Masks the value under output key `key`.
    pub fn mask(&mut self, key: impl Into<String>, mask: FieldMask) {
        self.entries.push((key.into(), MaskNode::Value(mask)));
    }

    /// Masks inside the embedded row or rows under output key `key`.
    pub fn embed(&mut self, key: impl Into<String>, inner: MaskTree) {
        if !inner.is_empty() {
            self.entries.push((key.into(), MaskNode::Embedded(inner)));
        }
    }

    /// Whether nothing is masked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Masks every row, each one JSON object text as the database rendered it.
    pub fn apply(&self, rows: &mut Rows) -> Result<(), ApiError> {
        rows.rewrite(|row| {
            let mut value: Value = serde_json::from_str(row).map_err(|error| {
                tracing::error!(%error, "the database rendered a row that is not JSON");
                ApiError::Internal
            })?;
            self.apply_to(&mut value);
            Ok(value.to_string())
        })
    }

    /// Masks one row (an object) or the rows of an embedded array.
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
                MaskNode::Embedded(inner) => inner.apply_to(value),
            }
        }
    }
}

/// The value `mask` shows instead of `value`. NULL stays NULL except for `fixed`, which always
/// shows its text, so a fixed mask does not even tell whether a value exists.
pub fn masked(mask: &FieldMask, value: &Value) -> Value {
    let text = || match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    match mask.strategy {
        MaskStrategy::Fixed => Value::String(mask.with.clone().unwrap_or_default()),
        _ if value.is_null() => Value::Null,
        MaskStrategy::Null => Value::Null,
        MaskStrategy::Hash => Value::String(hex::encode(Sha256::digest(text().as_bytes()))),
        MaskStrategy::KeepLast => Value::String(keep_last(&text(), mask.keep_last.unwrap_or(0) as usize)),
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
        tree.embed("orders", orders);
        tree.embed("unmasked", MaskTree::default());
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
        tree.embed("customer", customer);
        tree.apply_to(&mut to_one);
        assert_eq!(to_one, json!({"customer": {"mail": null}}));
    }
}
