//! The exposed part of a database, as introspection found it: the only names SQL may use.

use std::collections::BTreeMap;

/// What kind of JSON value a column holds, deciding how values are validated, bound and rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// Whole numbers of any width.
    Integer,
    /// Exact decimals (`numeric`, `decimal`).
    Decimal,
    /// Binary floating point.
    Float,
    /// `true`/`false` (MySQL `tinyint(1)`, SQLite declared `BOOLEAN`).
    Boolean,
    /// Text and anything without a better match.
    Text,
    /// A calendar date.
    Date,
    /// A time of day.
    Time,
    /// A date and time without zone.
    Timestamp,
    /// A date and time with zone, rendered in UTC.
    TimestampTz,
    /// A UUID.
    Uuid,
    /// A JSON document, rendered as JSON.
    Json,
    /// A PostgreSQL array, rendered and written as a JSON array.
    Array,
    /// Bytes, rendered as base64.
    Binary,
}

impl ValueKind {
    /// A human phrase used in error messages.
    pub fn describe(self) -> &'static str {
        match self {
            ValueKind::Integer => "an integer",
            ValueKind::Decimal => "a decimal number",
            ValueKind::Float => "a number",
            ValueKind::Boolean => "true or false",
            ValueKind::Text => "a string",
            ValueKind::Date => "a date (YYYY-MM-DD)",
            ValueKind::Time => "a time (HH:MM:SS)",
            ValueKind::Timestamp | ValueKind::TimestampTz => "an RFC 3339 timestamp",
            ValueKind::Uuid => "a UUID",
            ValueKind::Json => "any JSON value",
            ValueKind::Array => "a JSON array",
            ValueKind::Binary => "base64-encoded bytes",
        }
    }
}

/// One column.
#[derive(Clone, Debug)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// The engine's type name, as shown in OpenAPI.
    pub db_type: String,
    /// PostgreSQL only: the quoted type to cast bound text to; empty elsewhere.
    pub cast_type: String,
    /// How its values are handled.
    pub kind: ValueKind,
    /// Accepts NULL.
    pub nullable: bool,
    /// Default expression, if any (auto-increment counts).
    pub default: Option<String>,
    /// Computed by the database; never written.
    pub generated: bool,
}

/// Whether a relation is a table or a view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelationKind {
    /// A base table.
    Table,
    /// A view.
    View,
}

/// A foreign key from `columns` of the owning table to `referenced_columns` of `referenced_table`.
#[derive(Clone, Debug)]
pub struct ForeignKey {
    /// Constraint name, usable as an embedding hint (`table!name(...)`).
    pub name: String,
    /// Referencing columns, in order.
    pub columns: Vec<String>,
    /// Exposed name of the referenced table.
    pub referenced_table: String,
    /// Referenced columns, in order.
    pub referenced_columns: Vec<String>,
}

/// A table or view as exposed.
#[derive(Clone, Debug)]
pub struct Table {
    /// Exposed name (the path segment).
    pub name: String,
    /// Database schema holding it.
    pub db_schema: String,
    /// Table or view.
    pub kind: RelationKind,
    /// The engine says rows can be inserted, updated and deleted through it.
    pub updatable: bool,
    /// Columns in declaration order.
    pub columns: Vec<Column>,
    /// Primary-key columns in key order; empty when there is none.
    pub primary_key: Vec<String>,
    /// Foreign keys owned by this table.
    pub foreign_keys: Vec<ForeignKey>,
}

impl Table {
    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|column| column.name == name)
    }
}

/// Every exposed table and view, by exposed name.
#[derive(Clone, Debug, Default)]
pub struct Schema {
    /// The tables and views.
    pub tables: BTreeMap<String, Table>,
}

/// How an embedded table relates to the table it is embedded in.
#[derive(Clone, Debug)]
pub enum Relationship {
    /// The outer table holds the foreign key: at most one embedded row.
    ToOne {
        /// Outer (referencing) columns.
        outer: Vec<String>,
        /// Embedded (referenced) columns.
        inner: Vec<String>,
    },
    /// The embedded table holds the foreign key: an array of embedded rows.
    ToMany {
        /// Outer (referenced) columns.
        outer: Vec<String>,
        /// Embedded (referencing) columns.
        inner: Vec<String>,
    },
}

impl Schema {
    /// Finds how `inner` relates to `outer` through foreign keys in either direction. `hint`
    /// picks one by constraint name or referencing column when several exist.
    pub fn relationship(&self, outer: &Table, inner: &Table, hint: Option<&str>) -> Result<Relationship, String> {
        let matches_hint = |fk: &ForeignKey| match hint {
            None => true,
            Some(hint) => fk.name == hint || (fk.columns.len() == 1 && fk.columns[0] == hint),
        };
        let mut found: Vec<Relationship> = Vec::new();
        for fk in outer
            .foreign_keys
            .iter()
            .filter(|fk| fk.referenced_table == inner.name && matches_hint(fk))
        {
            found.push(Relationship::ToOne {
                outer: fk.columns.clone(),
                inner: fk.referenced_columns.clone(),
            });
        }
        if outer.name != inner.name || found.is_empty() {
            for fk in inner
                .foreign_keys
                .iter()
                .filter(|fk| fk.referenced_table == outer.name && matches_hint(fk))
            {
                found.push(Relationship::ToMany {
                    outer: fk.referenced_columns.clone(),
                    inner: fk.columns.clone(),
                });
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(format!(
                "no foreign key relates \"{}\" and \"{}\"",
                outer.name, inner.name
            )),
            _ => Err(format!(
                "several foreign keys relate \"{}\" and \"{}\"; name one as {}!<constraint or column>(...)",
                outer.name, inner.name, inner.name
            )),
        }
    }
}
