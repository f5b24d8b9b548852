//! The one governed step every planned request passes through, whatever its transport (REST
//! handlers now, MCP tools too): authorise the plan, shape it by the decision, execute it.

use crate::app::AppState;
use crate::authz::Access;
use crate::error::ApiError;
use crate::execute::{Outcome, execute};
use crate::plan::{Action, Plan};
use crate::schema::Schema;

/// The single step every request passes through once planned: the policy re-checks the plan
/// and caps its rows before it runs (audit will attach after it). `schema` is the full schema:
/// execution may use columns the role cannot see, such as a hidden primary key, internally.
pub async fn run(
    state: &AppState,
    schema: &Schema,
    access: &Access<'_>,
    mut plan: Plan,
    count: bool,
) -> Result<Outcome, ApiError> {
    tracing::debug!(table = %plan.table, verb = ?plan.verb(), role = access.role(), read = ?plan.columns_read(), written = ?plan.columns_written(), "planned");
    let decision = access.decide(&plan)?;
    if let (Some(cap), Action::Read(read)) = (decision.max_rows, &mut plan.action) {
        read.limit = read.limit.min(cap);
    }
    let mut outcome = execute(&state.database, schema, &plan, count).await?;
    // Rows returned from writes obey the cap too, so a write cannot read more than a read.
    if let Some(cap) = decision.max_rows {
        outcome.rows.truncate(usize::try_from(cap).unwrap_or(usize::MAX));
    }
    Ok(outcome)
}
