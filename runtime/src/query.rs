//! The PostgREST query grammar: query-string parameters become a [`ReadQuery`] AST.
//!
//! Pure: it knows nothing of the schema. [`crate::plan`] checks every name against it.
//!
//! Nesting is bounded while parsing, before each recursion (`spec.limits.maxLogicDepth` and
//! `maxEmbedDepth`), so no query string can exhaust the stack however deep it nests.

use sluice_crds::apirole::FilterOperator;
use sluice_crds::limits::LimitsSpec;

use crate::error::ApiError;

/// The REST grammar's operators are the same closed set as ApiRole row filters, so both compile
/// through one type.
fn parse_operator(name: &str) -> Option<FilterOperator> {
    Some(match name {
        "eq" => FilterOperator::Eq,
        "neq" => FilterOperator::Neq,
        "gt" => FilterOperator::Gt,
        "gte" => FilterOperator::Gte,
        "lt" => FilterOperator::Lt,
        "lte" => FilterOperator::Lte,
        "like" => FilterOperator::Like,
        "ilike" => FilterOperator::Ilike,
        "in" => FilterOperator::In,
        "is" => FilterOperator::Is,
        _ => return None,
    })
}

/// What `is.` compares with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IsValue {
    /// `is.null`
    Null,
    /// `is.true`
    True,
    /// `is.false`
    False,
}

/// The right-hand side of a predicate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operand {
    /// One value, as text.
    Scalar(String),
    /// The values of `in.(…)`.
    List(Vec<String>),
    /// The value of `is.`.
    Is(IsValue),
}

/// A filter tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// `column=[not.]op.value`
    Predicate {
        /// The column.
        column: String,
        /// Preceded by `not.`.
        negated: bool,
        /// The operator.
        operator: FilterOperator,
        /// The value(s).
        operand: Operand,
    },
    /// `and=(…)`/`or=(…)`, possibly negated.
    Group {
        /// `or` rather than `and`.
        any: bool,
        /// Preceded by `not.`.
        negated: bool,
        /// The members.
        conditions: Vec<Condition>,
    },
}

/// One item of `select=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SelectItem {
    /// `*`
    Star,
    /// `[alias:]column`
    Column {
        /// The name in the output.
        alias: Option<String>,
        /// The column.
        name: String,
    },
    /// `[alias:]table[!hint](items)`
    Embed {
        /// The key in the output.
        alias: Option<String>,
        /// The related table.
        table: String,
        /// Constraint or column disambiguating the relationship.
        hint: Option<String>,
        /// What to select from it.
        items: Vec<SelectItem>,
    },
}

/// Placement of NULLs in an ordering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nulls {
    /// `nullsfirst`
    First,
    /// `nullslast`
    Last,
}

/// One term of `order=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderTerm {
    /// The column.
    pub column: String,
    /// `desc`.
    pub descending: bool,
    /// Explicit NULL placement; otherwise NULLs sort as if larger than every value.
    pub nulls: Option<Nulls>,
}

/// Everything a read's query string says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadQuery {
    /// `select=`; empty means `*`.
    pub select: Vec<SelectItem>,
    /// Filters, all of which must hold.
    pub filters: Vec<Condition>,
    /// `order=`.
    pub order: Vec<OrderTerm>,
    /// `limit=`.
    pub limit: Option<u64>,
    /// `offset=`.
    pub offset: Option<u64>,
    /// `on_conflict=` (upserts).
    pub on_conflict: Vec<String>,
    /// `columns=` (inserts): which body keys to write.
    pub columns: Vec<String>,
}

/// Parses decoded query-string pairs, refusing nesting deeper than `limits` allow.
pub fn parse_query(pairs: &[(String, String)], limits: &LimitsSpec) -> Result<ReadQuery, ApiError> {
    let mut query = ReadQuery::default();
    for (key, value) in pairs {
        match key.as_str() {
            "select" => query.select = parse_select(value, limits)?,
            "order" => query.order = parse_order(value)?,
            "limit" => query.limit = Some(parse_count("limit", value)?),
            "offset" => query.offset = Some(parse_count("offset", value)?),
            "on_conflict" => query.on_conflict = split_names(value),
            "columns" => query.columns = split_names(value),
            "or" | "and" | "not.or" | "not.and" => {
                let negated = key.starts_with("not.");
                let any = key.ends_with("or");
                let inner = strip_parens(value).ok_or_else(|| {
                    ApiError::bad_query(
                        format!("{key}={value}: the conditions must be in parentheses"),
                        format!("write {key}=(a.eq.1,b.gt.2)"),
                    )
                })?;
                query.filters.push(Condition::Group {
                    any,
                    negated,
                    conditions: parse_condition_list(inner, 1, limits)?,
                });
            }
            column => query.filters.push(parse_predicate(column, value)?),
        }
    }
    Ok(query)
}

fn split_names(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|name| name.trim().trim_matches('"').to_owned())
        .filter(|name| !name.is_empty())
        .collect()
}

fn parse_count(name: &str, value: &str) -> Result<u64, ApiError> {
    value.parse().map_err(|_| {
        ApiError::bad_query(
            format!("{name}={value} is not a non-negative integer"),
            format!("write {name}=10"),
        )
    })
}

fn strip_parens(value: &str) -> Option<&str> {
    value.strip_prefix('(')?.strip_suffix(')')
}

/// Splits on commas outside parentheses and double quotes.
fn split_top_level(text: &str) -> Result<Vec<&str>, ApiError> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut quoted = false;
    let mut start = 0;
    for (index, character) in text.char_indices() {
        match character {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => {
                depth = depth.checked_sub(1).ok_or_else(|| unbalanced(text))?;
            }
            ',' if !quoted && depth == 0 => {
                parts.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    if depth != 0 || quoted {
        return Err(unbalanced(text));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn unbalanced(text: &str) -> ApiError {
    ApiError::bad_query(
        format!("\"{text}\" has unbalanced parentheses or quotes"),
        "close every ( and \"",
    )
}

/// Refuses a logic group nested `depth` deep (the outermost is 1) beyond the limit.
fn check_logic_depth(depth: u32, limits: &LimitsSpec) -> Result<(), ApiError> {
    if depth > limits.max_logic_depth {
        return Err(ApiError::LimitExceeded {
            limit: "maxLogicDepth",
            value: limits.max_logic_depth,
            what: format!("the filter nests logic groups (and, or, not) at least {depth} deep"),
        });
    }
    Ok(())
}

/// Parses `a.eq.1,or(b.gt.2,c.is.null),not.and(…)` inside a logic group `depth` deep.
fn parse_condition_list(text: &str, depth: u32, limits: &LimitsSpec) -> Result<Vec<Condition>, ApiError> {
    check_logic_depth(depth, limits)?;
    let mut conditions = Vec::new();
    for part in split_top_level(text)? {
        let (negated, rest) = match part.strip_prefix("not.") {
            Some(rest) if rest.starts_with("and(") || rest.starts_with("or(") => (true, rest),
            _ => (false, part),
        };
        if let Some(inner) = rest.strip_prefix("and").and_then(strip_parens) {
            conditions.push(Condition::Group {
                any: false,
                negated,
                conditions: parse_condition_list(inner, depth + 1, limits)?,
            });
        } else if let Some(inner) = rest.strip_prefix("or").and_then(strip_parens) {
            conditions.push(Condition::Group {
                any: true,
                negated,
                conditions: parse_condition_list(inner, depth + 1, limits)?,
            });
        } else {
            let (column, expression) = rest.split_once('.').ok_or_else(|| {
                ApiError::bad_query(
                    format!("\"{part}\" is not a condition"),
                    "write column.operator.value, e.g. age.gt.18",
                )
            })?;
            conditions.push(parse_predicate(column, expression)?);
        }
    }
    Ok(conditions)
}

/// Parses `[not.]op.value` for `column`.
fn parse_predicate(column: &str, expression: &str) -> Result<Condition, ApiError> {
    let (negated, expression) = match expression.strip_prefix("not.") {
        Some(rest) => (true, rest),
        None => (false, expression),
    };
    let malformed = || {
        ApiError::bad_query(
            format!("\"{column}={expression}\" is not a filter"),
            "write column=operator.value with operator one of eq, neq, gt, gte, lt, lte, like, ilike, in, is (optionally preceded by not.)",
        )
    };
    let (name, value) = expression.split_once('.').ok_or_else(malformed)?;
    let operator = parse_operator(name).ok_or_else(malformed)?;
    let operand = match operator {
        FilterOperator::In => Operand::List(parse_list(value)?),
        FilterOperator::Is => Operand::Is(match value.to_ascii_lowercase().as_str() {
            "null" => IsValue::Null,
            "true" => IsValue::True,
            "false" => IsValue::False,
            _ => {
                return Err(ApiError::bad_query(
                    format!("is.{value} is not valid"),
                    "write is.null, is.true or is.false",
                ));
            }
        }),
        FilterOperator::Like | FilterOperator::Ilike => Operand::Scalar(value.replace('*', "%")),
        _ => Operand::Scalar(unquote(value)),
    };
    Ok(Condition::Predicate {
        column: column.to_owned(),
        negated,
        operator,
        operand,
    })
}

fn unquote(value: &str) -> String {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => value.to_owned(),
    }
}

fn parse_list(value: &str) -> Result<Vec<String>, ApiError> {
    let inner = strip_parens(value).ok_or_else(|| {
        ApiError::bad_query(
            format!("in.{value}: the values must be in parentheses"),
            "write in.(1,2,3)",
        )
    })?;
    if inner.is_empty() {
        return Ok(Vec::new());
    }
    Ok(split_top_level(inner)?.into_iter().map(unquote).collect())
}

/// Parses `select=`, refusing embeds nested deeper than `limits` allow.
pub fn parse_select(text: &str, limits: &LimitsSpec) -> Result<Vec<SelectItem>, ApiError> {
    parse_select_items(text, 0, limits)
}

/// Parses the items of `select=` inside embeds nested `depth` deep (0 at the top).
fn parse_select_items(text: &str, depth: u32, limits: &LimitsSpec) -> Result<Vec<SelectItem>, ApiError> {
    let mut items = Vec::new();
    for part in split_top_level(text)? {
        let part = part.trim();
        if part.is_empty() {
            return Err(ApiError::bad_query(
                format!("select={text} has an empty item"),
                "separate columns with single commas",
            ));
        }
        if part == "*" {
            items.push(SelectItem::Star);
            continue;
        }
        let (alias, rest) = match part.split_once(':') {
            Some((alias, rest)) if !alias.contains('(') => (Some(alias.to_owned()), rest),
            _ => (None, part),
        };
        if let Some(open) = rest.find('(') {
            let inner = rest[open..]
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| unbalanced(part))?;
            let (table, hint) = match rest[..open].split_once('!') {
                Some((table, hint)) => (table.to_owned(), Some(hint.to_owned())),
                None => (rest[..open].to_owned(), None),
            };
            if depth + 1 > limits.max_embed_depth {
                return Err(ApiError::LimitExceeded {
                    limit: "maxEmbedDepth",
                    value: limits.max_embed_depth,
                    what: format!("select nests embedded resources at least {} deep", depth + 1),
                });
            }
            let items_inner = if inner.is_empty() {
                vec![SelectItem::Star]
            } else {
                parse_select_items(inner, depth + 1, limits)?
            };
            items.push(SelectItem::Embed {
                alias,
                table,
                hint,
                items: items_inner,
            });
        } else {
            // `::type` casts are not supported; the column name check rejects them.
            items.push(SelectItem::Column {
                alias,
                name: rest.to_owned(),
            });
        }
    }
    Ok(items)
}

/// Parses `order=`.
pub fn parse_order(text: &str) -> Result<Vec<OrderTerm>, ApiError> {
    let mut terms = Vec::new();
    for part in text.split(',') {
        let mut pieces = part.split('.');
        let column = pieces.next().unwrap_or_default().to_owned();
        let mut term = OrderTerm {
            column,
            descending: false,
            nulls: None,
        };
        for modifier in pieces {
            match modifier {
                "asc" => term.descending = false,
                "desc" => term.descending = true,
                "nullsfirst" => term.nulls = Some(Nulls::First),
                "nullslast" => term.nulls = Some(Nulls::Last),
                _ => {
                    return Err(ApiError::bad_query(
                        format!("order={text}: \"{modifier}\" is not an ordering"),
                        "write order=column.asc|desc[.nullsfirst|.nullslast], separated by commas",
                    ));
                }
            }
        }
        if term.column.is_empty() {
            return Err(ApiError::bad_query(
                format!("order={text} has an empty column"),
                "write order=column.desc",
            ));
        }
        terms.push(term);
    }
    Ok(terms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn parse_query(pairs: &[(String, String)]) -> Result<ReadQuery, ApiError> {
        super::parse_query(pairs, &LimitsSpec::default())
    }

    fn parse_select(text: &str) -> Result<Vec<SelectItem>, ApiError> {
        super::parse_select(text, &LimitsSpec::default())
    }

    fn limit_of(error: ApiError) -> &'static str {
        match error {
            ApiError::LimitExceeded { limit, .. } => limit,
            other => panic!("expected limit_exceeded, got {other:?}"),
        }
    }

    #[test]
    fn nesting_beyond_the_limits_is_refused_before_it_recurses() {
        let deep_logic = format!("({}id.eq.1{})", "and(".repeat(100_000), ")".repeat(100_000));
        let error = parse_query(&pairs(&[("or", &deep_logic)])).expect_err("too deep");
        assert_eq!(limit_of(error), "maxLogicDepth");
        let deep_select = format!("id,{}id{}", "orders(".repeat(100_000), ")".repeat(100_000));
        let error = parse_query(&pairs(&[("select", &deep_select)])).expect_err("too deep");
        assert_eq!(limit_of(error), "maxEmbedDepth");

        let limits = LimitsSpec::default();
        let at_limit = |depth: u32| {
            let depth = depth as usize;
            format!("({}id.eq.1{})", "and(".repeat(depth - 1), ")".repeat(depth - 1))
        };
        assert!(super::parse_query(&pairs(&[("or", &at_limit(limits.max_logic_depth))]), &limits).is_ok());
        assert!(super::parse_query(&pairs(&[("or", &at_limit(limits.max_logic_depth + 1))]), &limits).is_err());
        let embeds = |depth: u32| {
            let depth = depth as usize;
            format!("id,{}id{}", "orders(".repeat(depth), ")".repeat(depth))
        };
        assert!(super::parse_select(&embeds(limits.max_embed_depth), &limits).is_ok());
        assert!(super::parse_select(&embeds(limits.max_embed_depth + 1), &limits).is_err());
    }

    fn predicate(column: &str, negated: bool, operator: FilterOperator, operand: Operand) -> Condition {
        Condition::Predicate {
            column: column.into(),
            negated,
            operator,
            operand,
        }
    }

    #[test]
    fn parses_every_operator() {
        let query = parse_query(&pairs(&[
            ("a", "eq.1"),
            ("b", "neq.x"),
            ("c", "gt.1"),
            ("d", "gte.1"),
            ("e", "lt.1"),
            ("f", "lte.1"),
            ("g", "like.*ab*"),
            ("h", "ilike.ab*"),
            ("i", "in.(1,\"x,y\",3)"),
            ("j", "is.null"),
            ("k", "not.eq.5"),
        ]))
        .expect("valid");
        assert_eq!(
            query.filters[0],
            predicate("a", false, FilterOperator::Eq, Operand::Scalar("1".into()))
        );
        assert_eq!(
            query.filters[6],
            predicate("g", false, FilterOperator::Like, Operand::Scalar("%ab%".into()))
        );
        assert_eq!(
            query.filters[8],
            predicate(
                "i",
                false,
                FilterOperator::In,
                Operand::List(vec!["1".into(), "x,y".into(), "3".into()])
            )
        );
        assert_eq!(
            query.filters[9],
            predicate("j", false, FilterOperator::Is, Operand::Is(IsValue::Null))
        );
        assert_eq!(
            query.filters[10],
            predicate("k", true, FilterOperator::Eq, Operand::Scalar("5".into()))
        );
    }

    #[test]
    fn values_may_contain_dots() {
        let query = parse_query(&pairs(&[("price", "gt.10.5")])).expect("valid");
        assert_eq!(
            query.filters[0],
            predicate("price", false, FilterOperator::Gt, Operand::Scalar("10.5".into()))
        );
    }

    #[test]
    fn parses_nested_logic() {
        let query = parse_query(&pairs(&[(
            "or",
            "(a.eq.1,and(b.gt.2,c.is.null),not.or(d.lt.0,e.not.eq.3))",
        )]))
        .expect("valid");
        let Condition::Group {
            any: true,
            negated: false,
            conditions,
        } = &query.filters[0]
        else {
            panic!("group")
        };
        assert_eq!(conditions.len(), 3);
        assert!(
            matches!(&conditions[1], Condition::Group { any: false, negated: false, conditions } if conditions.len() == 2)
        );
        let Condition::Group {
            any: true,
            negated: true,
            conditions,
        } = &conditions[2]
        else {
            panic!("negated or")
        };
        assert_eq!(
            conditions[1],
            predicate("e", true, FilterOperator::Eq, Operand::Scalar("3".into()))
        );
    }

    #[test]
    fn parses_select_with_renames_and_embeds() {
        let items = parse_select("id,full_name:name,orders(id,total),buyer:customers!orders_customer_id_fkey(*)")
            .expect("valid");
        assert_eq!(
            items[0],
            SelectItem::Column {
                alias: None,
                name: "id".into()
            }
        );
        assert_eq!(
            items[1],
            SelectItem::Column {
                alias: Some("full_name".into()),
                name: "name".into()
            }
        );
        assert!(matches!(&items[2], SelectItem::Embed { table, items, .. } if table == "orders" && items.len() == 2));
        assert!(
            matches!(&items[3], SelectItem::Embed { alias: Some(a), hint: Some(h), items, .. } if a == "buyer" && h == "orders_customer_id_fkey" && items == &vec![SelectItem::Star])
        );
    }

    #[test]
    fn parses_order_modifiers() {
        let terms = parse_order("a.desc.nullslast,b,c.asc.nullsfirst").expect("valid");
        assert_eq!(
            terms[0],
            OrderTerm {
                column: "a".into(),
                descending: true,
                nulls: Some(Nulls::Last)
            }
        );
        assert_eq!(
            terms[1],
            OrderTerm {
                column: "b".into(),
                descending: false,
                nulls: None
            }
        );
        assert_eq!(terms[2].nulls, Some(Nulls::First));
    }

    #[test]
    fn rejects_malformed_input() {
        for (key, value) in [
            ("a", "equals.1"),
            ("a", "eq"),
            ("a", "is.maybe"),
            ("a", "in.1,2"),
            ("or", "a.eq.1"),
            ("or", "(a.eq.1"),
            ("order", "a.sideways"),
            ("limit", "-1"),
            ("select", "a,,b"),
            ("select", "orders(id"),
        ] {
            assert!(
                parse_query(&pairs(&[(key, value)])).is_err(),
                "{key}={value} should be rejected"
            );
        }
    }
}
