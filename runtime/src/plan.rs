//! A checked request: every name resolved against the schema, every value converted.
//!
//! A [`Plan`] says which table, which verb, which columns are read and written, and which
//! filters apply: the seam where authorisation (before execution) and audit (after) attach.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use crate::error::ApiError;
use sluice_crds::apirole::FilterOperator;

use crate::query::{Condition, IsValue, Operand, ReadQuery, SelectItem};
use crate::schema::{Column, Relationship, Schema, Table};
use crate::sql::BindValue;
use crate::value;

/// What a request does to its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// GET
    Read,
    /// POST
    Create,
    /// PATCH, and the update half of PUT and upserts
    Update,
    /// DELETE
    Delete,
}

/// One output field.
#[derive(Clone, Debug)]
pub enum Field {
    /// A column under a key.
    Column {
        /// Output key.
        key: String,
        /// The column.
        column: Column,
    },
    /// Related rows under a key.
    Embed {
        /// Output key.
        key: String,
        /// The related table.
        table: Box<Table>,
        /// How it relates.
        relationship: Relationship,
        /// Its fields.
        fields: Vec<Field>,
        /// Conditions every embedded row must meet besides the relationship: the caller's row
        /// filter on the related table, set by [`crate::authz`].
        filters: Vec<Filter>,
    },
}

/// A comparison that binds values (`is` is [`Filter::Is`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    /// `=`
    Eq,
    /// `<>`
    Neq,
    /// `>`
    Gt,
    /// `>=`
    Gte,
    /// `<`
    Lt,
    /// `<=`
    Lte,
    /// `LIKE`, case-sensitive
    Like,
    /// `LIKE`, case-insensitive
    Ilike,
    /// `IN (…)`
    In,
}

impl Comparison {
    fn from_operator(operator: FilterOperator) -> Option<Self> {
        Some(match operator {
            FilterOperator::Eq => Self::Eq,
            FilterOperator::Neq => Self::Neq,
            FilterOperator::Gt => Self::Gt,
            FilterOperator::Gte => Self::Gte,
            FilterOperator::Lt => Self::Lt,
            FilterOperator::Lte => Self::Lte,
            FilterOperator::Like => Self::Like,
            FilterOperator::Ilike => Self::Ilike,
            FilterOperator::In => Self::In,
            FilterOperator::Is => return None,
        })
    }
}

/// A checked filter.
#[derive(Clone, Debug)]
pub enum Filter {
    /// A comparison with bound values.
    Compare {
        /// The column.
        column: Column,
        /// `not.`
        negated: bool,
        /// The comparison.
        operator: Comparison,
        /// One value, or the `in` list.
        values: Vec<BindValue>,
    },
    /// `is.null|true|false`.
    Is {
        /// The column.
        column: Column,
        /// `not.`
        negated: bool,
        /// The value.
        value: IsValue,
    },
    /// `and`/`or`.
    Group {
        /// `or`.
        any: bool,
        /// `not.`
        negated: bool,
        /// Members.
        members: Vec<Filter>,
    },
}

impl Filter {
    fn collect_columns<'a>(&'a self, into: &mut Vec<&'a str>) {
        match self {
            Filter::Compare { column, .. } | Filter::Is { column, .. } => into.push(&column.name),
            Filter::Group { members, .. } => members.iter().for_each(|member| member.collect_columns(into)),
        }
    }
}

/// A checked ordering term.
#[derive(Clone, Debug)]
pub struct Order {
    /// The column.
    pub column: String,
    /// Descending.
    pub descending: bool,
    /// NULLs first.
    pub nulls_first: bool,
}

/// A read.
#[derive(Clone, Debug)]
pub struct ReadPlan {
    /// Output fields.
    pub fields: Vec<Field>,
    /// Filters, all of which hold.
    pub filters: Vec<Filter>,
    /// Ordering.
    pub order: Vec<Order>,
    /// Rows to return, already clamped to the maximum page size.
    pub limit: u64,
    /// Rows to skip.
    pub offset: u64,
}

/// How an insert treats rows whose key exists.
#[derive(Clone, Debug)]
pub struct Upsert {
    /// Columns of the unique key that conflicts.
    pub conflict_columns: Vec<String>,
    /// Update the existing row (`merge-duplicates`) rather than keep it (`ignore-duplicates`).
    pub merge: bool,
}

/// An insert of one or more rows with the same columns.
#[derive(Clone, Debug)]
pub struct InsertPlan {
    /// Written columns.
    pub columns: Vec<Column>,
    /// One list of values per row, in `columns` order.
    pub rows: Vec<Vec<BindValue>>,
    /// Upsert behaviour.
    pub upsert: Option<Upsert>,
}

/// An update of the rows matching filters.
#[derive(Clone, Debug)]
pub struct UpdatePlan {
    /// Column and new value.
    pub assignments: Vec<(Column, BindValue)>,
    /// Which rows; never empty.
    pub filters: Vec<Filter>,
}

/// What the plan does.
#[derive(Clone, Debug)]
pub enum Action {
    /// Read rows.
    Read(ReadPlan),
    /// Insert rows.
    Insert(InsertPlan),
    /// Update rows.
    Update(UpdatePlan),
    /// Delete the rows matching filters (never empty).
    Delete(Vec<Filter>),
}

/// A checked request against one table.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Exposed table name.
    pub table: String,
    /// What to do.
    pub action: Action,
    /// For writes, the fields to return (`Prefer: return=representation`).
    pub returning: Option<Vec<Field>>,
}

impl Plan {
    /// The verb, for authorisation and audit.
    pub fn verb(&self) -> Verb {
        match &self.action {
            Action::Read(_) => Verb::Read,
            Action::Insert(_) => Verb::Create,
            Action::Update(_) => Verb::Update,
            Action::Delete(_) => Verb::Delete,
        }
    }

    /// Columns whose values leave the database, including those only filtered or ordered on.
    pub fn columns_read(&self) -> Vec<&str> {
        let mut columns = Vec::new();
        let fields = match &self.action {
            Action::Read(read) => Some(&read.fields),
            _ => self.returning.as_ref(),
        };
        for field in fields.into_iter().flatten() {
            if let Field::Column { column, .. } = field {
                columns.push(column.name.as_str());
            }
        }
        columns.extend(self.columns_compared());
        columns.sort_unstable();
        columns.dedup();
        columns
    }

    /// Columns the caller filters or orders on: comparing a column reveals its values even when
    /// the column is never returned.
    pub fn columns_compared(&self) -> Vec<&str> {
        let mut columns = Vec::new();
        for filter in self.filters() {
            filter.collect_columns(&mut columns);
        }
        if let Action::Read(read) = &self.action {
            columns.extend(read.order.iter().map(|order| order.column.as_str()));
        }
        columns.sort_unstable();
        columns.dedup();
        columns
    }

    /// Columns the request writes.
    pub fn columns_written(&self) -> Vec<&str> {
        match &self.action {
            Action::Insert(insert) => insert.columns.iter().map(|c| c.name.as_str()).collect(),
            Action::Update(update) => update.assignments.iter().map(|(c, _)| c.name.as_str()).collect(),
            _ => Vec::new(),
        }
    }

    /// The row filters.
    pub fn filters(&self) -> &[Filter] {
        match &self.action {
            Action::Read(read) => &read.filters,
            Action::Update(update) => &update.filters,
            Action::Delete(filters) => filters,
            Action::Insert(_) => &[],
        }
    }
}

/// Page-size rules from the DataApi.
#[derive(Clone, Copy, Debug)]
pub struct Paging {
    /// Rows when no limit is given.
    pub default_page_size: u64,
    /// Largest limit; larger ones are clamped.
    pub max_page_size: u64,
}

/// Looks up an exposed table.
pub fn table<'s>(schema: &'s Schema, name: &str) -> Result<&'s Table, ApiError> {
    schema
        .tables
        .get(name)
        .ok_or_else(|| ApiError::UnknownTable { table: name.to_owned() })
}

fn column(table: &Table, name: &str) -> Result<Column, ApiError> {
    table.column(name).cloned().ok_or_else(|| ApiError::UnknownColumn {
        table: table.name.clone(),
        column: name.to_owned(),
    })
}

/// Resolves `select=` items to fields.
pub fn fields(schema: &Schema, table: &Table, items: &[SelectItem]) -> Result<Vec<Field>, ApiError> {
    if items.is_empty() {
        return fields(schema, table, &[SelectItem::Star]);
    }
    let mut fields = Vec::new();
    for item in items {
        match item {
            SelectItem::Star => fields.extend(table.columns.iter().map(|column| Field::Column {
                key: column.name.clone(),
                column: column.clone(),
            })),
            SelectItem::Column { alias, name } => fields.push(Field::Column {
                key: alias.clone().unwrap_or_else(|| name.clone()),
                column: column(table, name)?,
            }),
            SelectItem::Embed {
                alias,
                table: inner_name,
                hint,
                items,
            } => {
                let inner = self::table(schema, inner_name)?;
                let relationship = schema.relationship(table, inner, hint.as_deref()).map_err(|problem| {
                    ApiError::bad_query(
                        format!("cannot embed \"{inner_name}\" in \"{}\": {problem}", table.name),
                        "embed tables related by a foreign key",
                    )
                })?;
                fields.push(Field::Embed {
                    key: alias.clone().unwrap_or_else(|| inner_name.clone()),
                    table: Box::new(inner.clone()),
                    relationship,
                    fields: self::fields(schema, inner, items)?,
                    filters: Vec::new(),
                });
            }
        }
    }
    Ok(fields)
}

/// Resolves filters.
pub fn filters(table: &Table, conditions: &[Condition]) -> Result<Vec<Filter>, ApiError> {
    conditions.iter().map(|condition| filter(table, condition)).collect()
}

fn filter(table: &Table, condition: &Condition) -> Result<Filter, ApiError> {
    Ok(match condition {
        Condition::Group {
            any,
            negated,
            conditions,
        } => Filter::Group {
            any: *any,
            negated: *negated,
            members: filters(table, conditions)?,
        },
        Condition::Predicate {
            column: name,
            negated,
            operator,
            operand,
        } => {
            let column = column(table, name)?;
            let comparison = Comparison::from_operator(*operator);
            match (operand, comparison) {
                (Operand::Is(value @ (IsValue::True | IsValue::False)), _)
                    if column.kind != crate::schema::ValueKind::Boolean =>
                {
                    return Err(ApiError::bad_query(
                        format!(
                            "\"{name}\" is not a boolean column, so is.{} cannot apply to it",
                            if *value == IsValue::True { "true" } else { "false" }
                        ),
                        "use is.null on this column, or eq with a value of its type",
                    ));
                }
                (Operand::Is(value), _) => Filter::Is {
                    column,
                    negated: *negated,
                    value: *value,
                },
                (Operand::Scalar(text), Some(operator)) => {
                    let bound = match operator {
                        Comparison::Like | Comparison::Ilike => BindValue::Text(text.clone()),
                        _ => value::from_text(&column, text)?,
                    };
                    Filter::Compare {
                        column,
                        negated: *negated,
                        operator,
                        values: vec![bound],
                    }
                }
                (Operand::List(items), Some(operator)) => {
                    let values = items
                        .iter()
                        .map(|text| value::from_text(&column, text))
                        .collect::<Result<_, _>>()?;
                    Filter::Compare {
                        column,
                        negated: *negated,
                        operator,
                        values,
                    }
                }
                (_, None) => {
                    return Err(ApiError::bad_query(
                        format!("\"{name}\": is takes null, true or false"),
                        "write is.null",
                    ));
                }
            }
        }
    })
}

/// Resolves a read.
pub fn read(schema: &Schema, table: &Table, query: &ReadQuery, paging: Paging) -> Result<ReadPlan, ApiError> {
    let mut order = Vec::new();
    for term in &query.order {
        column(table, &term.column)?;
        // PostgreSQL's default: NULLs sort as larger than every value. Made explicit so every engine agrees.
        let nulls_first = match term.nulls {
            Some(nulls) => nulls == crate::query::Nulls::First,
            None => term.descending,
        };
        order.push(Order {
            column: term.column.clone(),
            descending: term.descending,
            nulls_first,
        });
    }
    if order.is_empty() {
        // A stable order makes offset paging consistent between pages.
        order = table
            .primary_key
            .iter()
            .map(|c| Order {
                column: c.clone(),
                descending: false,
                nulls_first: false,
            })
            .collect();
    }
    Ok(ReadPlan {
        fields: fields(schema, table, &query.select)?,
        filters: filters(table, &query.filters)?,
        order,
        limit: query
            .limit
            .unwrap_or(paging.default_page_size)
            .min(paging.max_page_size),
        offset: query.offset.unwrap_or(0),
    })
}

/// Filters selecting one row by primary key written `a` or `a,b` in the path.
pub fn primary_key_filters(table: &Table, key: &str) -> Result<Vec<Filter>, ApiError> {
    if table.primary_key.is_empty() {
        return Err(ApiError::bad_query(
            format!(
                "\"{}\" has no primary key, so rows cannot be addressed by path",
                table.name
            ),
            format!("filter instead: /{}?column=eq.value", table.name),
        ));
    }
    let parts: Vec<&str> = if table.primary_key.len() == 1 {
        vec![key]
    } else {
        key.split(',').collect()
    };
    if parts.len() != table.primary_key.len() {
        return Err(ApiError::bad_query(
            format!(
                "\"{}\" has a primary key of {} columns ({}), the path gives {}",
                table.name,
                table.primary_key.len(),
                table.primary_key.join(", "),
                parts.len()
            ),
            format!(
                "write /{}/{}",
                table.name,
                table
                    .primary_key
                    .iter()
                    .map(|c| format!("<{c}>"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ));
    }
    table
        .primary_key
        .iter()
        .zip(parts)
        .map(|(name, text)| {
            let column = column(table, name)?;
            let value = value::from_text(&column, text)?;
            Ok(Filter::Compare {
                column,
                negated: false,
                operator: Comparison::Eq,
                values: vec![value],
            })
        })
        .collect()
}

/// A JSON body: one object or an array of objects.
pub type BodyRows = Vec<BTreeMap<String, Box<RawValue>>>;

/// Parses a write body.
pub fn body_rows(bytes: &[u8]) -> Result<BodyRows, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ApiError::InvalidBody("it is not UTF-8".into()))?;
    let invalid = |error: serde_json::Error| ApiError::InvalidBody(error.to_string());
    match text.trim_start().as_bytes().first() {
        Some(b'[') => serde_json::from_str(text).map_err(invalid),
        Some(b'{') => Ok(vec![serde_json::from_str(text).map_err(invalid)?]),
        _ => Err(ApiError::InvalidBody(
            "expected a JSON object or an array of objects".into(),
        )),
    }
}

fn writable_column(table: &Table, name: &str) -> Result<Column, ApiError> {
    let column = column(table, name)?;
    if column.generated {
        return Err(ApiError::bad_query(
            format!("column \"{name}\" of \"{}\" is generated by the database", table.name),
            "leave it out of the body",
        ));
    }
    Ok(column)
}

/// Resolves an insert; every object must have the same keys.
pub fn insert(table: &Table, rows: &BodyRows, only: &[String]) -> Result<InsertPlan, ApiError> {
    let first = rows
        .first()
        .ok_or_else(|| ApiError::InvalidBody("the array is empty; send at least one row".into()))?;
    let names: Vec<String> = if only.is_empty() {
        first.keys().cloned().collect()
    } else {
        only.to_vec()
    };
    let columns = names
        .iter()
        .map(|name| writable_column(table, name))
        .collect::<Result<Vec<_>, _>>()?;
    let mut values = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        if only.is_empty() && (row.len() != first.len() || !row.keys().all(|key| first.contains_key(key))) {
            return Err(ApiError::InvalidBody(format!(
                "row {index} has different keys from row 0; every row must have the same keys"
            )));
        }
        let row_values = columns
            .iter()
            .map(|column| match row.get(&column.name) {
                Some(raw) => value::from_json(column, raw),
                None => Ok(BindValue::Null),
            })
            .collect::<Result<Vec<_>, _>>()?;
        values.push(row_values);
    }
    Ok(InsertPlan {
        columns,
        rows: values,
        upsert: None,
    })
}

/// Resolves the assignments of an update from one body object.
pub fn assignments(table: &Table, rows: &BodyRows) -> Result<Vec<(Column, BindValue)>, ApiError> {
    let [row] = rows.as_slice() else {
        return Err(ApiError::InvalidBody("an update takes one JSON object".into()));
    };
    if row.is_empty() {
        return Err(ApiError::InvalidBody(
            "the object is empty; name at least one column to change".into(),
        ));
    }
    row.iter()
        .map(|(name, raw)| {
            let column = writable_column(table, name)?;
            let value = value::from_json(&column, raw)?;
            Ok((column, value))
        })
        .collect()
}

/// Refuses writes the table or configuration cannot take.
pub fn check_writable(table: &Table, read_only_api: bool) -> Result<(), ApiError> {
    if read_only_api {
        return Err(ApiError::ReadOnly {
            table: table.name.clone(),
            reason: "this API is read-only (spec.database.readOnly)",
        });
    }
    if !table.updatable {
        return Err(ApiError::ReadOnly {
            table: table.name.clone(),
            reason: "the database reports this view as not updatable",
        });
    }
    Ok(())
}
