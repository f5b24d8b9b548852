//! Plans become parameterised SQL per dialect. Identifiers come only from the introspected
//! schema and are always quoted; values are always bound. MySQL and SQLite render each row as
//! one JSON text (JSON_OBJECT / json_object), and so does PostgreSQL for written rows
//! (json_build_object); a PostgreSQL read selects one column per field, which the runtime renders
//! ([`crate::render`]). Either way numbers keep the digits the database holds.

use std::borrow::Cow;

use sluice_crds::dataapi::Engine;

use crate::plan::{Comparison, Field, Filter, InsertPlan, Order, ReadPlan, UpdatePlan};
use crate::query::IsValue;
use crate::render::{Encoding, Member};
use crate::schema::{Column, Relationship, Table, ValueKind};
use crate::value;

/// A value bound to a statement parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum BindValue {
    /// SQL NULL.
    Null,
    /// A whole number.
    Integer(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Boolean(bool),
    /// Text, including exact decimals, dates and JSON documents.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
}

impl BindValue {
    /// The value as PostgreSQL input text; `None` for NULL.
    pub fn as_text(&self) -> Option<Cow<'_, str>> {
        match self {
            BindValue::Null => None,
            BindValue::Integer(number) => Some(Cow::Owned(number.to_string())),
            BindValue::Float(number) => Some(Cow::Owned(number.to_string())),
            BindValue::Boolean(flag) => Some(Cow::Borrowed(if *flag { "true" } else { "false" })),
            BindValue::Text(text) => Some(Cow::Borrowed(text)),
            BindValue::Bytes(bytes) => Some(Cow::Owned(format!("\\x{}", hex::encode(bytes)))),
        }
    }
}

/// SQL text and its parameters, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    /// The SQL.
    pub text: String,
    /// Parameter values.
    pub binds: Vec<BindValue>,
    /// The members of each row's JSON object, one per output column, when the runtime renders
    /// the rows (PostgreSQL reads); `None` when the first column already holds each row's JSON text.
    pub members: Option<Vec<Member>>,
}

/// Most key/value pairs rendered by one JSON-object call (PostgreSQL allows 100 arguments).
const PAIRS_PER_CALL: usize = 50;

/// PostgreSQL types whose binary form is their text, which the runtime escapes itself.
const POSTGRES_TEXT_TYPES: [&str; 4] = [
    "\"pg_catalog\".\"text\"",
    "\"pg_catalog\".\"varchar\"",
    "\"pg_catalog\".\"bpchar\"",
    "\"pg_catalog\".\"name\"",
];

struct Builder {
    engine: Engine,
    binds: Vec<BindValue>,
    aliases: usize,
}

impl Builder {
    fn new(engine: Engine) -> Self {
        Self {
            engine,
            binds: Vec::new(),
            aliases: 0,
        }
    }

    fn finish(self, text: String) -> Statement {
        Statement {
            text,
            binds: self.binds,
            members: None,
        }
    }

    fn ident(&self, name: &str) -> String {
        let mut quoted = String::with_capacity(name.len() + 2);
        self.push_ident(&mut quoted, name);
        quoted
    }

    /// Appends `name` quoted: the statement text is built per request, so identifiers go
    /// straight into their buffer rather than through intermediate strings.
    fn push_ident(&self, out: &mut String, name: &str) {
        let quote = match self.engine {
            Engine::Mysql => '`',
            _ => '"',
        };
        out.push(quote);
        for character in name.chars() {
            if character == quote {
                out.push(quote);
            }
            out.push(character);
        }
        out.push(quote);
    }

    fn literal(&self, text: &str) -> String {
        let mut literal = String::with_capacity(text.len() + 2);
        literal.push('\'');
        for character in text.chars() {
            match character {
                '\'' => literal.push_str("''"),
                // MySQL treats backslashes in string literals as escapes.
                '\\' if self.engine == Engine::Mysql => literal.push_str("\\\\"),
                _ => literal.push(character),
            }
        }
        literal.push('\'');
        literal
    }

    fn table_ref(&self, table: &Table) -> String {
        self.column_ref(Some(&table.db_schema), &table.name)
    }

    fn next_alias(&mut self) -> String {
        let alias = format!("t{}", self.aliases);
        self.aliases += 1;
        alias
    }

    fn column_ref(&self, qualifier: Option<&str>, name: &str) -> String {
        let mut reference = String::with_capacity(name.len() + qualifier.map_or(0, str::len) + 5);
        self.push_column_ref(&mut reference, qualifier, name);
        reference
    }

    fn push_column_ref(&self, out: &mut String, qualifier: Option<&str>, name: &str) {
        if let Some(alias) = qualifier {
            self.push_ident(out, alias);
            out.push('.');
        }
        self.push_ident(out, name);
    }

    /// A parameter for `value`, cast to the column's type on PostgreSQL.
    fn bind(&mut self, value: BindValue, column: Option<&Column>) -> String {
        let mut placeholder = String::new();
        self.push_bind(&mut placeholder, value, column);
        placeholder
    }

    fn push_bind(&mut self, out: &mut String, value: BindValue, column: Option<&Column>) {
        let value = match (self.engine, column) {
            (Engine::Mysql | Engine::Sqlite, Some(column)) => value::normalise_timestamp(column, value),
            _ => value,
        };
        let cast = column.filter(|_| !matches!(value, BindValue::Bytes(_)));
        self.binds.push(value);
        match self.engine {
            Engine::Postgres => {
                if cast.is_some() {
                    out.push_str("CAST(");
                }
                out.push('$');
                out.push_str(&self.binds.len().to_string());
                if let Some(column) = cast {
                    out.push_str(" AS ");
                    out.push_str(&column.cast_type);
                    out.push(')');
                }
            }
            _ => out.push('?'),
        }
    }

    /// The column's value as it should appear in the JSON output.
    fn rendered(&self, column: &Column, qualifier: Option<&str>) -> String {
        let reference = self.column_ref(qualifier, &column.name);
        match (self.engine, column.kind) {
            (Engine::Postgres, ValueKind::Binary) => format!("translate(encode({reference}, 'base64'), E'\\n', '')"),
            (Engine::Mysql, ValueKind::Boolean) => {
                format!(
                    "IF({reference} IS NULL, NULL, IF({reference}, JSON_EXTRACT('true', '$'), JSON_EXTRACT('false', '$')))"
                )
            }
            (Engine::Mysql, ValueKind::Json) => format!("JSON_EXTRACT({reference}, '$')"),
            (Engine::Mysql, ValueKind::Timestamp) => format!("DATE_FORMAT({reference}, '%Y-%m-%dT%H:%i:%s')"),
            (Engine::Mysql, ValueKind::TimestampTz) => format!("DATE_FORMAT({reference}, '%Y-%m-%dT%H:%i:%sZ')"),
            (Engine::Mysql, ValueKind::Binary) => format!("REPLACE(TO_BASE64({reference}), CHAR(10), '')"),
            (Engine::Sqlite, ValueKind::Boolean) => {
                format!(
                    "CASE WHEN {reference} IS NULL THEN NULL WHEN {reference} THEN json('true') ELSE json('false') END"
                )
            }
            (Engine::Sqlite, ValueKind::Json) => {
                format!("CASE WHEN json_valid({reference}) THEN json({reference}) ELSE {reference} END")
            }
            (Engine::Sqlite, ValueKind::Binary) => format!("hex({reference})"),
            // SQLite keeps timestamps as text, usually `YYYY-MM-DD HH:MM:SS`; RFC 3339 puts a T there.
            (Engine::Sqlite, ValueKind::Timestamp | ValueKind::TimestampTz) => format!(
                "CASE WHEN typeof({reference}) = 'text' AND substr({reference}, 11, 1) = ' ' \
                 THEN substr({reference}, 1, 10) || 'T' || substr({reference}, 12) ELSE {reference} END"
            ),
            _ => reference,
        }
    }

    /// The SQL expression of `field`'s value: its column as rendered, or its embedded rows.
    fn field_value(&mut self, field: &Field, qualifier: Option<&str>) -> String {
        match field {
            Field::Column { column, .. } => self.rendered(column, qualifier),
            Field::Embed {
                table,
                relationship,
                fields,
                filters,
                ..
            } => self.embedded(table, relationship, fields, filters, qualifier),
        }
    }

    /// One JSON object per row of `qualifier`.
    fn object(&mut self, fields: &[Field], qualifier: Option<&str>) -> String {
        let mut pairs = Vec::with_capacity(fields.len());
        for field in fields {
            let (Field::Column { key, .. } | Field::Embed { key, .. }) = field;
            pairs.push((key.clone(), self.field_value(field, qualifier)));
        }
        self.object_of(pairs)
    }

    fn object_of(&self, pairs: Vec<(String, String)>) -> String {
        let function = match self.engine {
            Engine::Postgres => "json_build_object",
            Engine::Mysql => "JSON_OBJECT",
            Engine::Sqlite => "json_object",
        };
        let arguments = |pairs: &[(String, String)]| {
            let mut arguments = String::new();
            for (key, value) in pairs {
                if !arguments.is_empty() {
                    arguments.push_str(", ");
                }
                arguments.push_str(&self.literal(key));
                arguments.push_str(", ");
                arguments.push_str(value);
            }
            arguments
        };
        if pairs.len() <= PAIRS_PER_CALL || self.engine == Engine::Mysql {
            return format!("{function}({})", arguments(&pairs));
        }
        match self.engine {
            // row_to_json has no argument limit and keeps column order.
            Engine::Postgres => {
                let columns = pairs
                    .iter()
                    .map(|(key, value)| format!("{value} AS {}", self.ident(key)))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("(SELECT row_to_json(wide) FROM (SELECT {columns}) wide)")
            }
            _ => {
                let mut expression = format!("{function}({})", arguments(&pairs[..PAIRS_PER_CALL]));
                for chunk in pairs[PAIRS_PER_CALL..].chunks(PAIRS_PER_CALL) {
                    let settings = chunk
                        .iter()
                        .map(|(key, value)| {
                            format!(
                                "{}, {value}",
                                self.literal(&format!("$.\"{}\"", key.replace('"', "\\\"")))
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    expression = format!("json_set({expression}, {settings})");
                }
                expression
            }
        }
    }

    fn join_condition(
        &self,
        inner_alias: &str,
        inner: &[String],
        outer_alias: Option<&str>,
        outer: &[String],
    ) -> String {
        inner
            .iter()
            .zip(outer)
            .map(|(i, o)| {
                format!(
                    "{} = {}",
                    self.column_ref(Some(inner_alias), i),
                    self.column_ref(outer_alias, o)
                )
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    fn embedded(
        &mut self,
        inner: &Table,
        relationship: &Relationship,
        fields: &[Field],
        filters: &[Filter],
        outer_alias: Option<&str>,
    ) -> String {
        let alias = self.next_alias();
        let object = self.object(fields, Some(&alias));
        let mut also = String::new();
        for filter in filters {
            also.push_str(" AND ");
            self.push_filter(&mut also, filter, Some(&alias));
        }
        let from = format!("{} AS {}", self.table_ref(inner), self.ident(&alias));
        match relationship {
            Relationship::ToOne {
                outer,
                inner: inner_columns,
            } => {
                let on = self.join_condition(&alias, inner_columns, outer_alias, outer) + &also;
                let select = format!("(SELECT {object} FROM {from} WHERE {on} LIMIT 1)");
                match self.engine {
                    // SQLite forgets that a value is JSON when it leaves a subquery.
                    Engine::Sqlite => format!("json({select})"),
                    _ => select,
                }
            }
            Relationship::ToMany {
                outer,
                inner: inner_columns,
            } => {
                let on = self.join_condition(&alias, inner_columns, outer_alias, outer) + &also;
                let order = inner
                    .primary_key
                    .iter()
                    .map(|c| self.column_ref(Some(&alias), c))
                    .collect::<Vec<_>>()
                    .join(", ");
                let order_by = if order.is_empty() {
                    String::new()
                } else {
                    format!(" ORDER BY {order}")
                };
                match self.engine {
                    Engine::Postgres => {
                        format!("(SELECT coalesce(json_agg({object}{order_by}), '[]'::json) FROM {from} WHERE {on})")
                    }
                    Engine::Mysql => format!(
                        "(SELECT COALESCE(JSON_ARRAYAGG({object}{order_by}), JSON_ARRAY()) FROM {from} WHERE {on})"
                    ),
                    Engine::Sqlite => format!(
                        "json((SELECT coalesce(json_group_array(json(embedded.j)), '[]') FROM (SELECT {object} AS j FROM {from} WHERE {on}{order_by}) AS embedded))"
                    ),
                }
            }
        }
    }

    fn filter(&mut self, filter: &Filter, qualifier: Option<&str>) -> String {
        let mut text = String::with_capacity(64);
        self.push_filter(&mut text, filter, qualifier);
        text
    }

    /// Appends `filter`. The statement text is built per request, so every part of a filter goes
    /// straight into one buffer rather than through a string per part.
    fn push_filter(&mut self, out: &mut String, filter: &Filter, qualifier: Option<&str>) {
        match filter {
            Filter::Is { column, negated, value } => {
                self.push_column_ref(out, qualifier, &column.name);
                out.push_str(if *negated { " IS NOT " } else { " IS " });
                out.push_str(match value {
                    IsValue::Null => "NULL",
                    IsValue::True => "TRUE",
                    IsValue::False => "FALSE",
                });
            }
            Filter::Group { any, negated, members } => {
                out.push_str(if *negated { "NOT (" } else { "(" });
                if members.is_empty() {
                    out.push_str(if *any { "1 = 0" } else { "1 = 1" });
                }
                for (index, member) in members.iter().enumerate() {
                    if index > 0 {
                        out.push_str(if *any { " OR " } else { " AND " });
                    }
                    self.push_filter(out, member, qualifier);
                }
                out.push(')');
            }
            Filter::Compare {
                column,
                negated,
                operator,
                values,
            } => {
                if *negated {
                    out.push_str("NOT (");
                }
                self.push_comparison(out, column, *operator, values, qualifier);
                if *negated {
                    out.push(')');
                }
            }
        }
    }

    fn push_comparison(
        &mut self,
        out: &mut String,
        column: &Column,
        operator: Comparison,
        values: &[BindValue],
        qualifier: Option<&str>,
    ) {
        let first = values.first().cloned().unwrap_or(BindValue::Null);
        let symbol = match operator {
            Comparison::Eq => " = ",
            Comparison::Neq => " <> ",
            Comparison::Gt => " > ",
            Comparison::Gte => " >= ",
            Comparison::Lt => " < ",
            Comparison::Lte => " <= ",
            Comparison::Like | Comparison::Ilike => {
                let reference = self.column_ref(qualifier, &column.name);
                let pattern = self.bind(first, None);
                let insensitive = operator == Comparison::Ilike;
                out.push_str(&match (self.engine, insensitive) {
                    (Engine::Postgres, false) => format!("CAST({reference} AS text) LIKE {pattern}"),
                    (Engine::Postgres, true) => format!("CAST({reference} AS text) ILIKE {pattern}"),
                    (Engine::Mysql, false) => format!("CAST({reference} AS BINARY) LIKE CAST({pattern} AS BINARY)"),
                    (_, true) => format!("LOWER({reference}) LIKE LOWER({pattern})"),
                    (Engine::Sqlite, false) => format!("{reference} LIKE {pattern}"),
                });
                return;
            }
            Comparison::In => {
                if values.is_empty() {
                    out.push_str("1 = 0");
                    return;
                }
                self.push_column_ref(out, qualifier, &column.name);
                out.push_str(" IN (");
                for (index, value) in values.iter().enumerate() {
                    if index > 0 {
                        out.push_str(", ");
                    }
                    self.push_bind(out, value.clone(), Some(column));
                }
                out.push(')');
                return;
            }
        };
        self.push_column_ref(out, qualifier, &column.name);
        out.push_str(symbol);
        self.push_bind(out, first, Some(column));
    }

    fn where_clause(&mut self, filters: &[Filter], qualifier: Option<&str>) -> String {
        let mut clause = String::with_capacity(64 * filters.len());
        for (index, filter) in filters.iter().enumerate() {
            clause.push_str(if index == 0 { " WHERE " } else { " AND " });
            self.push_filter(&mut clause, filter, qualifier);
        }
        clause
    }

    fn order_clause(&self, order: &[Order], qualifier: Option<&str>) -> String {
        if order.is_empty() {
            return String::new();
        }
        let terms: Vec<String> = order
            .iter()
            .map(|term| {
                let reference = self.column_ref(qualifier, &term.column);
                let direction = if term.descending { "DESC" } else { "ASC" };
                match self.engine {
                    // MySQL has no NULLS FIRST/LAST; sorting on IS NULL first gives the same order.
                    Engine::Mysql => {
                        let nulls = if term.nulls_first { "DESC" } else { "ASC" };
                        format!("{reference} IS NULL {nulls}, {reference} {direction}")
                    }
                    _ => {
                        let nulls = if term.nulls_first { "FIRST" } else { "LAST" };
                        format!("{reference} {direction} NULLS {nulls}")
                    }
                }
            })
            .collect();
        format!(" ORDER BY {}", terms.join(", "))
    }

    /// PostgreSQL: the output column that carries `field` and how the runtime renders it. Values
    /// whose binary form the runtime reads travel as they are; the others, and embedded rows, as
    /// the JSON text the database renders for them.
    fn member(&mut self, field: &Field, qualifier: Option<&str>) -> (String, Member) {
        let (Field::Column { key, .. } | Field::Embed { key, .. }) = field;
        let value = self.field_value(field, qualifier);
        let (expression, encoding) = match field {
            Field::Column { column, .. } if column.kind == ValueKind::Json => {
                (format!("{value}::text"), Encoding::Json)
            }
            Field::Column { column, .. } => match postgres_binary_encoding(column) {
                Some(encoding) => (value, encoding),
                None => (format!("to_json({value})::text"), Encoding::Json),
            },
            Field::Embed { .. } => (format!("{value}::text"), Encoding::Json),
        };
        (expression, Member::new(key, encoding))
    }

    fn as_text(&self, expression: String) -> String {
        match self.engine {
            Engine::Postgres => format!("{expression}::text"),
            Engine::Mysql => format!("CAST({expression} AS CHAR)"),
            Engine::Sqlite => format!("CAST({expression} AS TEXT)"),
        }
    }

    fn returning(&mut self, fields: Option<&[Field]>) -> String {
        match fields {
            Some(fields) => {
                let object = self.object(fields, None);
                format!(" RETURNING {}", self.as_text(object))
            }
            None => String::new(),
        }
    }
}

/// How the runtime renders a PostgreSQL column's values from their binary form; `None` when it
/// leaves them to the database's `to_json`.
fn postgres_binary_encoding(column: &Column) -> Option<Encoding> {
    match column.kind {
        ValueKind::Integer => Some(Encoding::Integer),
        ValueKind::Boolean => Some(Encoding::Boolean),
        ValueKind::Decimal => Some(Encoding::Decimal),
        ValueKind::Timestamp => Some(Encoding::Timestamp),
        ValueKind::TimestampTz => Some(Encoding::TimestampTz),
        ValueKind::Date => Some(Encoding::Date),
        ValueKind::Uuid => Some(Encoding::Uuid),
        // Rendered as base64 text by the statement.
        ValueKind::Binary => Some(Encoding::Text),
        ValueKind::Text if POSTGRES_TEXT_TYPES.contains(&column.cast_type.as_str()) => Some(Encoding::Text),
        ValueKind::Text | ValueKind::Float | ValueKind::Time | ValueKind::Array | ValueKind::Json => None,
    }
}

/// Rows of a read, one JSON object text each: on PostgreSQL, one output column per field, which
/// the runtime renders (see [`crate::render`]); elsewhere one JSON text built by the database.
pub fn select(engine: Engine, table: &Table, plan: &ReadPlan) -> Statement {
    let mut builder = Builder::new(engine);
    let alias = builder.next_alias();
    let mut members = None;
    let object = if engine == Engine::Postgres {
        let mut columns = Vec::with_capacity(plan.fields.len());
        let mut rendered = Vec::with_capacity(plan.fields.len());
        for field in &plan.fields {
            let (expression, member) = builder.member(field, Some(&alias));
            columns.push(expression);
            rendered.push(member);
        }
        members = Some(rendered);
        columns.join(", ")
    } else {
        let object = builder.object(&plan.fields, Some(&alias));
        builder.as_text(object)
    };
    let from = format!("{} AS {}", builder.table_ref(table), builder.ident(&alias));
    let filters = builder.where_clause(&plan.filters, Some(&alias));
    let order = builder.order_clause(&plan.order, Some(&alias));
    let text = format!(
        "SELECT {object} FROM {from}{filters}{order} LIMIT {} OFFSET {}",
        plan.limit, plan.offset
    );
    Statement {
        members,
        ..builder.finish(text)
    }
}

/// The number of rows matching `filters`, as text.
pub fn count(engine: Engine, table: &Table, filters: &[Filter]) -> Statement {
    let mut builder = Builder::new(engine);
    let alias = builder.next_alias();
    let from = format!("{} AS {}", builder.table_ref(table), builder.ident(&alias));
    let filters = builder.where_clause(filters, Some(&alias));
    let count = builder.as_text("COUNT(*)".to_owned());
    builder.finish(format!("SELECT {count} FROM {from}{filters}"))
}

/// Counts the rows matching `within` that do not meet `scope`. A row where `scope` is NULL (a
/// comparison with NULL) counts as outside: only rows the scope clearly admits are inside.
pub fn count_outside(engine: Engine, table: &Table, within: &Filter, scope: &Filter) -> Statement {
    let mut builder = Builder::new(engine);
    let within = builder.filter(within, None);
    let scope = builder.filter(scope, None);
    let count = builder.as_text("COUNT(*)".to_owned());
    let text = format!(
        "SELECT {count} FROM {} WHERE {within} AND (CASE WHEN {scope} THEN 0 ELSE 1 END) = 1",
        builder.table_ref(table)
    );
    builder.finish(text)
}

/// An insert (or upsert), optionally returning the written rows.
pub fn insert(engine: Engine, table: &Table, plan: &InsertPlan, returning: Option<&[Field]>) -> Statement {
    let mut builder = Builder::new(engine);
    let mut text = insert_rows(&mut builder, table, plan);
    text.push_str(&builder.returning(returning));
    builder.finish(text)
}

/// An insert (or upsert) that checks every row it writes against `scope` in the same statement.
/// It returns one text per written row: the row's JSON object of `returning` (`1` when the client
/// asked for no rows back) when the row, as written, meets `scope`, and NULL when it does not. As
/// in [`count_outside`], a row for which `scope` is NULL does not meet it.
pub fn insert_checked(
    engine: Engine,
    table: &Table,
    plan: &InsertPlan,
    returning: Option<&[Field]>,
    scope: &Filter,
) -> Statement {
    let mut builder = Builder::new(engine);
    let mut text = insert_rows(&mut builder, table, plan);
    let scope = builder.filter(scope, None);
    let inside = match returning {
        Some(fields) => {
            let object = builder.object(fields, None);
            builder.as_text(object)
        }
        None => builder.literal("1"),
    };
    text.push_str(&format!(" RETURNING CASE WHEN {scope} THEN {inside} END"));
    builder.finish(text)
}

/// `INSERT INTO … VALUES …` and the upsert clause, without `RETURNING`.
fn insert_rows(builder: &mut Builder, table: &Table, plan: &InsertPlan) -> String {
    let engine = builder.engine;
    let columns: Vec<String> = plan.columns.iter().map(|c| builder.ident(&c.name)).collect();
    let mut rows = Vec::with_capacity(plan.rows.len());
    for row in &plan.rows {
        let values: Vec<String> = row
            .iter()
            .zip(&plan.columns)
            .map(|(value, column)| builder.bind(value.clone(), Some(column)))
            .collect();
        rows.push(format!("({})", values.join(", ")));
    }
    let values = if plan.columns.is_empty() {
        match engine {
            Engine::Mysql => "() VALUES ()".to_owned(),
            _ => "DEFAULT VALUES".to_owned(),
        }
    } else {
        format!("({}) VALUES {}", columns.join(", "), rows.join(", "))
    };
    let mut text = format!("INSERT INTO {} {values}", builder.table_ref(table));
    if let Some(upsert) = &plan.upsert {
        let keys: Vec<String> = upsert.conflict_columns.iter().map(|c| builder.ident(c)).collect();
        let updated: Vec<&String> = plan
            .columns
            .iter()
            .map(|c| &c.name)
            .filter(|c| !upsert.conflict_columns.contains(c))
            .collect();
        // Re-assigning a key column changes nothing but still counts as an update, so
        // "ignore" and "nothing left to merge" still return the existing row.
        let assignments: Vec<String> = if upsert.merge && !updated.is_empty() {
            updated
                .iter()
                .map(|c| match engine {
                    Engine::Mysql => format!("{0} = VALUES({0})", builder.ident(c)),
                    _ => format!("{0} = excluded.{0}", builder.ident(c)),
                })
                .collect()
        } else {
            keys.iter()
                .map(|k| format!("{k} = {k}"))
                .map(|a| {
                    if engine == Engine::Mysql {
                        a
                    } else {
                        a.replacen(" = ", " = excluded.", 1)
                    }
                })
                .collect()
        };
        text.push_str(&match engine {
            Engine::Mysql => format!(" ON DUPLICATE KEY UPDATE {}", assignments.join(", ")),
            _ => format!(
                " ON CONFLICT ({}) DO UPDATE SET {}",
                keys.join(", "),
                assignments.join(", ")
            ),
        });
    }
    text
}

/// An update of the rows matching the plan's filters. `returning` is ignored on MySQL, which
/// has no `UPDATE … RETURNING`; the executor re-reads the rows instead.
pub fn update(engine: Engine, table: &Table, plan: &UpdatePlan, returning: Option<&[Field]>) -> Statement {
    let mut builder = Builder::new(engine);
    let assignments: Vec<String> = plan
        .assignments
        .iter()
        .map(|(column, value)| {
            let placeholder = builder.bind(value.clone(), Some(column));
            format!("{} = {placeholder}", builder.ident(&column.name))
        })
        .collect();
    let filters = builder.where_clause(&plan.filters, None);
    let returning = if engine == Engine::Mysql {
        String::new()
    } else {
        builder.returning(returning)
    };
    let text = format!(
        "UPDATE {} SET {}{filters}{returning}",
        builder.table_ref(table),
        assignments.join(", ")
    );
    builder.finish(text)
}

/// A delete of the rows matching `filters`, optionally returning them.
pub fn delete(engine: Engine, table: &Table, filters: &[Filter], returning: Option<&[Field]>) -> Statement {
    let mut builder = Builder::new(engine);
    let filters = builder.where_clause(filters, None);
    let returning = builder.returning(returning);
    let text = format!("DELETE FROM {}{filters}{returning}", builder.table_ref(table));
    builder.finish(text)
}

/// The primary-key columns as output fields rendered as text, so any key type reads back exactly.
pub fn key_fields(table: &Table) -> Vec<Field> {
    table
        .primary_key
        .iter()
        .filter_map(|name| table.column(name))
        .map(|column| Field::Column {
            key: column.name.clone(),
            column: Column {
                kind: ValueKind::Text,
                ..column.clone()
            },
        })
        .collect()
}

/// The primary key of each row matching `filters`, as a JSON object, locking the rows.
pub fn keys_for_update(engine: Engine, table: &Table, filters: &[Filter]) -> Statement {
    let mut builder = Builder::new(engine);
    let object = builder.object(&key_fields(table), None);
    let object = builder.as_text(object);
    let filters = builder.where_clause(filters, None);
    let lock = if engine == Engine::Sqlite { "" } else { " FOR UPDATE" };
    let text = format!("SELECT {object} FROM {}{filters}{lock}", builder.table_ref(table));
    builder.finish(text)
}

/// A PostgreSQL read that runs once per member of a batch, each with its own parameters.
///
/// `text` is a read [`select`] wrote, with parameters `$1` to `$params`. The batch binds one
/// text array per parameter, holding that parameter's value for every member, and the read runs
/// as a lateral subquery once per row of the arrays, its `$i` reading the row's `p<i>`. Every
/// parameter already travels as text and is cast by the SQL, so each member's read sees the same
/// values and types as on its own. A lateral subquery runs in a nested loop over the arrays, so
/// each member's rows come out together and in their own order (`ORDER BY`, `LIMIT` and
/// `OFFSET` apply per member); each result row starts with the member's 1-based number.
///
/// `None` when the text's placeholders are not exactly `$1` to `$params` outside quoted
/// identifiers and string literals, or when there are no parameters to vary.
pub fn batched_select(text: &str, params: usize) -> Option<String> {
    if params == 0 {
        return None;
    }
    let inner = placeholders_to_columns(text, params)?;
    let mut batched = String::with_capacity(inner.len() + 80 + params * 48);
    batched.push_str("SELECT \"b\".\"n\", \"q\".* FROM unnest(");
    for index in 1..=params {
        if index > 1 {
            batched.push_str(", ");
        }
        batched.push_str(&format!("CAST(${index} AS \"pg_catalog\".\"text\"[])"));
    }
    batched.push_str(") WITH ORDINALITY AS \"b\"(");
    for index in 1..=params {
        batched.push_str(&format!("\"p{index}\", "));
    }
    batched.push_str("\"n\") CROSS JOIN LATERAL (");
    batched.push_str(&inner);
    batched.push_str(") AS \"q\"");
    Some(batched)
}

/// `text` with each placeholder `$i` replaced by the column `"b"."p<i>"`, skipping quoted
/// identifiers, string literals and escape strings; `None` unless every one of `$1` to `$params`
/// appears and nothing else does.
fn placeholders_to_columns(text: &str, params: usize) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + params * 8);
    let mut used = vec![false; params];
    let mut copied = 0;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'"' => at = after_quoted(bytes, at, b'"', false)?,
            b'\'' => {
                let escape_string =
                    at > 0 && matches!(bytes[at - 1], b'E' | b'e') && (at < 2 || !is_identifier_byte(bytes[at - 2]));
                at = after_quoted(bytes, at, b'\'', escape_string)?;
            }
            b'$' => {
                if at > 0 && is_identifier_byte(bytes[at - 1]) {
                    return None;
                }
                let digits = bytes[at + 1..].iter().take_while(|byte| byte.is_ascii_digit()).count();
                let number: usize = text.get(at + 1..at + 1 + digits)?.parse().ok()?;
                let seen = used.get_mut(number.checked_sub(1)?)?;
                *seen = true;
                out.push_str(&text[copied..at]);
                out.push_str(&format!("\"b\".\"p{number}\""));
                at += 1 + digits;
                copied = at;
            }
            _ => at += 1,
        }
    }
    out.push_str(&text[copied..]);
    used.iter().all(|seen| *seen).then_some(out)
}

/// The index just past the quoted text opening at `start`, where a doubled quote stands for one
/// and, in an escape string, a backslash escapes the next byte; `None` when it never closes.
fn after_quoted(bytes: &[u8], start: usize, quote: u8, backslash_escapes: bool) -> Option<usize> {
    let mut at = start + 1;
    while at < bytes.len() {
        match bytes[at] {
            b'\\' if backslash_escapes => at += 2,
            byte if byte == quote => {
                if bytes.get(at + 1) == Some(&quote) {
                    at += 2;
                } else {
                    return Some(at + 1);
                }
            }
            _ => at += 1,
        }
    }
    None
}

fn is_identifier_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$' || !byte.is_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{self, Paging};
    use crate::query::parse_query;
    use crate::schema::{ForeignKey, RelationKind, Schema};

    fn column(name: &str, kind: ValueKind, cast: &str) -> Column {
        Column {
            name: name.into(),
            db_type: cast.into(),
            cast_type: cast.into(),
            kind,
            nullable: true,
            default: None,
            generated: false,
        }
    }

    fn schema() -> Schema {
        let customers = Table {
            name: "customers".into(),
            db_schema: "public".into(),
            kind: RelationKind::Table,
            updatable: true,
            columns: vec![
                column("id", ValueKind::Integer, "\"pg_catalog\".\"int4\""),
                column("name", ValueKind::Text, "\"pg_catalog\".\"text\""),
                column("vip", ValueKind::Boolean, "\"pg_catalog\".\"bool\""),
                column("mood", ValueKind::Text, "\"public\".\"mood\""),
            ],
            primary_key: vec!["id".into()],
            foreign_keys: vec![],
        };
        let orders = Table {
            name: "orders".into(),
            db_schema: "public".into(),
            kind: RelationKind::Table,
            updatable: true,
            columns: vec![
                column("id", ValueKind::Integer, "\"pg_catalog\".\"int4\""),
                column("customer_id", ValueKind::Integer, "\"pg_catalog\".\"int4\""),
                column("total", ValueKind::Decimal, "\"pg_catalog\".\"numeric\""),
            ],
            primary_key: vec!["id".into()],
            foreign_keys: vec![ForeignKey {
                name: "orders_customer_fk".into(),
                columns: vec!["customer_id".into()],
                referenced_table: "customers".into(),
                referenced_columns: vec!["id".into()],
            }],
        };
        let mut schema = Schema::default();
        schema.tables.insert("customers".into(), customers);
        schema.tables.insert("orders".into(), orders);
        schema
    }

    fn read(engine: Engine, table: &str, query: &[(&str, &str)]) -> Statement {
        let schema = schema();
        let pairs: Vec<(String, String)> = query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let parsed = parse_query(&pairs, &Default::default()).expect("valid query");
        let table = &schema.tables[table];
        let plan = plan::read(
            &schema,
            table,
            &parsed,
            Paging {
                default_page_size: 10,
                max_page_size: 100,
            },
        )
        .expect("valid plan");
        select(engine, table, &plan)
    }

    #[test]
    fn postgres_binds_every_value_and_casts_it_to_the_column_type() {
        let statement = read(
            Engine::Postgres,
            "customers",
            &[
                ("select", "id,label:name,mood"),
                ("id", "in.(1,2)"),
                ("name", "ilike.*a*"),
            ],
        );
        assert_eq!(
            statement.text,
            "SELECT \"t0\".\"id\", \"t0\".\"name\", to_json(\"t0\".\"mood\")::text FROM \"public\".\"customers\" AS \"t0\" \
             WHERE \"t0\".\"id\" IN (CAST($1 AS \"pg_catalog\".\"int4\"), CAST($2 AS \"pg_catalog\".\"int4\")) \
             AND CAST(\"t0\".\"name\" AS text) ILIKE $3 ORDER BY \"t0\".\"id\" ASC NULLS LAST LIMIT 10 OFFSET 0"
        );
        assert_eq!(
            statement.members.expect("rendered by the runtime"),
            [
                Member::new("id", Encoding::Integer),
                Member::new("label", Encoding::Text),
                Member::new("mood", Encoding::Json),
            ],
            "the runtime renders integers and text; an enum comes as the database's JSON"
        );
        assert_eq!(
            statement.binds,
            vec![
                BindValue::Integer(1),
                BindValue::Integer(2),
                BindValue::Text("%a%".into())
            ]
        );
    }

    #[test]
    fn mysql_emulates_null_ordering_and_renders_booleans() {
        let statement = read(
            Engine::Mysql,
            "customers",
            &[("select", "vip"), ("order", "name.desc"), ("limit", "5000")],
        );
        assert!(
            statement
                .text
                .contains("IF(`t0`.`vip` IS NULL, NULL, IF(`t0`.`vip`, JSON_EXTRACT('true', '$')"),
            "{}",
            statement.text
        );
        assert!(
            statement
                .text
                .ends_with("ORDER BY `t0`.`name` IS NULL DESC, `t0`.`name` DESC LIMIT 100 OFFSET 0"),
            "{}",
            statement.text
        );
    }

    #[test]
    fn embeds_both_directions() {
        let many = read(Engine::Sqlite, "customers", &[("select", "id,orders(id,total)")]);
        assert!(many.text.contains("json_group_array"), "{}", many.text);
        assert!(
            many.text.contains("\"t1\".\"customer_id\" = \"t0\".\"id\""),
            "{}",
            many.text
        );
        let one = read(Engine::Postgres, "orders", &[("select", "id,buyer:customers(name)")]);
        assert!(one.text.contains(", (SELECT json_build_object('name', \"t1\".\"name\") FROM \"public\".\"customers\" AS \"t1\" WHERE \"t1\".\"id\" = \"t0\".\"customer_id\" LIMIT 1)::text FROM"), "{}", one.text);
        assert_eq!(
            one.members.expect("rendered by the runtime")[1],
            Member::new("buyer", Encoding::Json)
        );
    }

    #[test]
    fn hostile_text_is_only_ever_a_bound_value() {
        let statement = read(
            Engine::Sqlite,
            "customers",
            &[("name", "eq.'; DROP TABLE customers; --")],
        );
        assert!(!statement.text.contains("DROP"));
        assert_eq!(
            statement.binds,
            vec![BindValue::Text("'; DROP TABLE customers; --".into())]
        );
    }

    #[test]
    fn upserts_per_dialect() {
        let schema = schema();
        let table = &schema.tables["customers"];
        let mut insert_plan = InsertPlan {
            columns: vec![table.columns[0].clone(), table.columns[1].clone()],
            rows: vec![vec![BindValue::Integer(1), BindValue::Text("a".into())]],
            upsert: Some(crate::plan::Upsert {
                conflict_columns: vec!["id".into()],
                merge: true,
            }),
        };
        let pg = insert(Engine::Postgres, table, &insert_plan, None);
        assert!(
            pg.text
                .ends_with("ON CONFLICT (\"id\") DO UPDATE SET \"name\" = excluded.\"name\""),
            "{}",
            pg.text
        );
        let mysql = insert(Engine::Mysql, table, &insert_plan, None);
        assert!(
            mysql.text.ends_with("ON DUPLICATE KEY UPDATE `name` = VALUES(`name`)"),
            "{}",
            mysql.text
        );
        insert_plan.upsert = Some(crate::plan::Upsert {
            conflict_columns: vec!["id".into()],
            merge: false,
        });
        let ignore = insert(Engine::Sqlite, table, &insert_plan, None);
        assert!(
            ignore.text.ends_with("DO UPDATE SET \"id\" = excluded.\"id\""),
            "{}",
            ignore.text
        );
    }

    #[test]
    fn a_checked_insert_answers_null_for_a_row_outside_the_scope() {
        let schema = schema();
        let table = &schema.tables["customers"];
        let plan = InsertPlan {
            columns: vec![table.columns[0].clone(), table.columns[2].clone()],
            rows: vec![
                vec![BindValue::Integer(1), BindValue::Boolean(false)],
                vec![BindValue::Integer(2), BindValue::Boolean(true)],
            ],
            upsert: None,
        };
        let scope = Filter::Compare {
            column: table.columns[2].clone(),
            negated: false,
            operator: Comparison::Eq,
            values: vec![BindValue::Boolean(false)],
        };
        let returning = [Field::Column {
            key: "id".into(),
            column: table.columns[0].clone(),
        }];
        let pg = insert_checked(Engine::Postgres, table, &plan, Some(&returning), &scope);
        assert_eq!(
            pg.text,
            "INSERT INTO \"public\".\"customers\" (\"id\", \"vip\") \
             VALUES (CAST($1 AS \"pg_catalog\".\"int4\"), CAST($2 AS \"pg_catalog\".\"bool\")), \
             (CAST($3 AS \"pg_catalog\".\"int4\"), CAST($4 AS \"pg_catalog\".\"bool\")) \
             RETURNING CASE WHEN \"vip\" = CAST($5 AS \"pg_catalog\".\"bool\") \
             THEN json_build_object('id', \"id\")::text END"
        );
        assert_eq!(pg.binds.last(), Some(&BindValue::Boolean(false)));
        let mysql = insert_checked(Engine::Mysql, table, &plan, None, &scope);
        assert!(
            mysql.text.ends_with(" RETURNING CASE WHEN `vip` = ? THEN '1' END"),
            "{}",
            mysql.text
        );
        assert_eq!(mysql.binds.len(), 5, "the scope's value is bound after the rows'");
    }

    #[test]
    fn a_batched_read_reads_each_parameter_from_its_member_row() {
        let statement = read(
            Engine::Postgres,
            "customers",
            &[("select", "id,name"), ("name", "eq.a"), ("id", "gt.1")],
        );
        let batched = batched_select(&statement.text, statement.binds.len()).expect("batchable");
        assert_eq!(
            batched,
            "SELECT \"b\".\"n\", \"q\".* FROM unnest(CAST($1 AS \"pg_catalog\".\"text\"[]), \
             CAST($2 AS \"pg_catalog\".\"text\"[])) WITH ORDINALITY AS \"b\"(\"p1\", \"p2\", \"n\") \
             CROSS JOIN LATERAL (SELECT \"t0\".\"id\", \"t0\".\"name\" FROM \"public\".\"customers\" AS \"t0\" \
             WHERE \"t0\".\"name\" = CAST(\"b\".\"p1\" AS \"pg_catalog\".\"text\") \
             AND \"t0\".\"id\" > CAST(\"b\".\"p2\" AS \"pg_catalog\".\"int4\") \
             ORDER BY \"t0\".\"id\" ASC NULLS LAST LIMIT 10 OFFSET 0) AS \"q\""
        );
    }

    #[test]
    fn dollar_signs_in_names_and_literals_are_not_placeholders() {
        let text = "SELECT \"a$1\", \"x\"\"$2\", '$1 it''s', E'\\'$2', ($1)::text FROM \"t\" WHERE \"c\" = $2";
        assert_eq!(
            placeholders_to_columns(text, 2).as_deref(),
            Some(
                "SELECT \"a$1\", \"x\"\"$2\", '$1 it''s', E'\\'$2', (\"b\".\"p1\")::text FROM \"t\" \
                 WHERE \"c\" = \"b\".\"p2\""
            )
        );
    }

    #[test]
    fn a_read_is_not_batched_unless_its_placeholders_are_exactly_its_parameters() {
        assert_eq!(batched_select("SELECT 1", 0), None, "nothing varies between members");
        assert_eq!(placeholders_to_columns("SELECT $1", 2), None, "$2 is missing");
        assert_eq!(
            placeholders_to_columns("SELECT $1, $3", 2),
            None,
            "$3 is not a parameter"
        );
        assert_eq!(placeholders_to_columns("SELECT $0", 1), None);
        assert_eq!(
            placeholders_to_columns("SELECT $tag$ x $tag$", 1),
            None,
            "a dollar-quoted string"
        );
        assert_eq!(placeholders_to_columns("SELECT a$1", 1), None, "part of a name");
        assert_eq!(placeholders_to_columns("SELECT '$1", 1), None, "an unclosed literal");
    }
}
