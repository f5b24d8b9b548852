//! How much one planned request may ask of the database: `spec.limits` checked against a
//! [`Plan`], whatever transport built it.
//!
//! The parser already refused nesting past the depth limits before recursing
//! ([`crate::query`]); this counts what a request asks for in all (filter terms, selected
//! columns, embeds, bound values), so a flat request cannot ask for too much either.

use sluice_crds::limits::LimitsSpec;

use crate::error::ApiError;
use crate::plan::{Action, Field, Filter, Plan};

/// What one plan asks for, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Size {
    filter_terms: u32,
    logic_depth: u32,
    selected_columns: u32,
    embeds: u32,
    embed_depth: u32,
    bind_parameters: u64,
}

impl Size {
    fn of_filters(&mut self, filters: &[Filter], depth: u32) {
        for filter in filters {
            match filter {
                Filter::Compare { values, .. } => {
                    self.filter_terms += 1;
                    self.bind_parameters += values.len() as u64;
                }
                Filter::Is { .. } => self.filter_terms += 1,
                Filter::Group { members, .. } => {
                    self.logic_depth = self.logic_depth.max(depth + 1);
                    self.of_filters(members, depth + 1);
                }
            }
        }
    }

    fn of_fields(&mut self, fields: &[Field], depth: u32) {
        for field in fields {
            match field {
                Field::Column { .. } => self.selected_columns += 1,
                Field::Embed { fields, filters, .. } => {
                    self.embeds += 1;
                    self.embed_depth = self.embed_depth.max(depth + 1);
                    self.of_filters(filters, 0);
                    self.of_fields(fields, depth + 1);
                }
            }
        }
    }

    fn of_plan(plan: &Plan) -> Self {
        let mut size = Self::default();
        size.of_filters(plan.filters(), 0);
        match &plan.action {
            Action::Read(read) => size.of_fields(&read.fields, 0),
            Action::Insert(insert) => {
                size.bind_parameters += (insert.rows.len() * insert.columns.len()) as u64;
            }
            Action::Update(update) => size.bind_parameters += update.assignments.len() as u64,
            Action::Delete(_) => {}
        }
        if let Some(returning) = &plan.returning {
            size.of_fields(returning, 0);
        }
        size
    }
}

/// One limit against what a plan asks for: the limit's field, its value, the plan's count, and
/// what the request asked for, said with that count.
type SizeCheck = (&'static str, u32, u32, fn(u32) -> String);

/// Refuses a plan, as the caller asked for it, that is larger than `limits` allow.
pub fn check_request(plan: &Plan, limits: &LimitsSpec) -> Result<(), ApiError> {
    let size = Size::of_plan(plan);
    let checks: [SizeCheck; 5] = [
        ("maxLogicDepth", limits.max_logic_depth, size.logic_depth, |asked| {
            format!("the filter nests logic groups {asked} deep")
        }),
        ("maxFilterTerms", limits.max_filter_terms, size.filter_terms, |asked| {
            format!("the request has {asked} filter conditions")
        }),
        ("maxEmbedDepth", limits.max_embed_depth, size.embed_depth, |asked| {
            format!("select nests embedded resources {asked} deep")
        }),
        ("maxEmbeds", limits.max_embeds, size.embeds, |asked| {
            format!("select embeds {asked} resources")
        }),
        (
            "maxSelectedColumns",
            limits.max_selected_columns,
            size.selected_columns,
            |asked| format!("select names {asked} columns"),
        ),
    ];
    if let Some((limit, value, asked, what)) = checks.into_iter().find(|(_, value, asked, _)| asked > value) {
        return Err(ApiError::LimitExceeded {
            limit,
            value,
            what: what(asked),
        });
    }
    check_bound(size.bind_parameters, limits)
}

/// Refuses a plan that binds more values than `limits` allow; called again once the role's row
/// filters are part of the plan, since they bind values too.
pub fn check_bind_parameters(plan: &Plan, limits: &LimitsSpec) -> Result<(), ApiError> {
    check_bound(Size::of_plan(plan).bind_parameters, limits)
}

fn check_bound(bound: u64, limits: &LimitsSpec) -> Result<(), ApiError> {
    if bound > u64::from(limits.max_bind_parameters) {
        return Err(ApiError::LimitExceeded {
            limit: "maxBindParameters",
            value: limits.max_bind_parameters,
            what: format!("the request binds {bound} values (filter and in values, written cells)"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Comparison, ReadPlan};
    use crate::schema::{Column, ValueKind};
    use crate::sql::BindValue;

    fn column() -> Column {
        Column {
            name: "id".into(),
            db_type: "integer".into(),
            cast_type: String::new(),
            kind: ValueKind::Integer,
            nullable: false,
            default: None,
            generated: false,
        }
    }

    fn compare(values: usize) -> Filter {
        Filter::Compare {
            column: column(),
            negated: false,
            operator: Comparison::In,
            values: vec![BindValue::Integer(1); values],
        }
    }

    fn read(filters: Vec<Filter>, fields: Vec<Field>) -> Plan {
        Plan {
            table: "t".into(),
            action: Action::Read(ReadPlan {
                fields,
                filters,
                order: Vec::new(),
                limit: 10,
                offset: 0,
            }),
            returning: None,
        }
    }

    fn limit_of(result: Result<(), ApiError>) -> &'static str {
        match result {
            Err(ApiError::LimitExceeded { limit, .. }) => limit,
            other => panic!("expected limit_exceeded, got {other:?}"),
        }
    }

    #[test]
    fn flat_requests_are_counted_too() {
        let limits = LimitsSpec::default();
        let many_terms = (0..=limits.max_filter_terms).map(|_| compare(1)).collect();
        assert_eq!(
            limit_of(check_request(&read(many_terms, Vec::new()), &limits)),
            "maxFilterTerms"
        );
        let huge_in = vec![compare(limits.max_bind_parameters as usize + 1)];
        assert_eq!(
            limit_of(check_request(&read(huge_in, Vec::new()), &limits)),
            "maxBindParameters"
        );
        let columns = (0..=limits.max_selected_columns)
            .map(|_| Field::Column {
                key: "id".into(),
                column: column(),
            })
            .collect();
        assert_eq!(
            limit_of(check_request(&read(Vec::new(), columns), &limits)),
            "maxSelectedColumns"
        );
        let mut deep = compare(1);
        for _ in 0..=limits.max_logic_depth {
            deep = Filter::Group {
                any: true,
                negated: false,
                members: vec![deep],
            };
        }
        assert_eq!(
            limit_of(check_request(&read(vec![deep], Vec::new()), &limits)),
            "maxLogicDepth"
        );
        assert!(check_request(&read(vec![compare(3)], Vec::new()), &limits).is_ok());
    }
}
