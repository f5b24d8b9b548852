//! The one governed step every planned request passes through, whatever its transport (REST
//! handlers now, MCP tools too): authorise the plan, shape it by the decision, execute it.

use crate::app::AppState;
use crate::authz::Access;
use crate::error::ApiError;
use crate::execute::{Outcome, execute};
use crate::plan::{Action, Plan};
use crate::schema::Schema;

/// The single step every request passes through once planned: the policy re-checks the plan
/// and binds it to the role's row filters, the row cap applies, the plan runs (writes checked
/// against the row filter before they commit), and masks disguise what comes back. `schema` is
/// the full schema: execution may use columns the role cannot see, such as a hidden primary
/// key or a row filter's column, internally.
pub async fn run(
    state: &AppState,
    schema: &Schema,
    access: &Access<'_>,
    mut plan: Plan,
    count: bool,
) -> Result<Outcome, ApiError> {
    tracing::debug!(table = %plan.table, verb = ?plan.verb(), role = access.role(), read = ?plan.columns_read(), written = ?plan.columns_written(), "planned");
    let governance = access.govern(schema, &mut plan)?;
    if let (Some(cap), Action::Read(read)) = (governance.max_rows, &mut plan.action) {
        read.limit = read.limit.min(cap);
    }
    let mut outcome = execute(&state.database, schema, &plan, count, governance.write_guard.as_ref()).await?;
    // Rows returned from writes obey the cap too, so a write cannot read more than a read.
    if let Some(cap) = governance.max_rows {
        outcome.rows.truncate(usize::try_from(cap).unwrap_or(usize::MAX));
    }
    if let Some(masks) = &governance.masks {
        masks.apply(&mut outcome.rows)?;
    }
    Ok(outcome)
}
